"""Cost of the request-time lookup: ReferenceProfile.bin_of for 20 numeric features.

Run: python benchmarks/bench_observe.py  (prints microseconds per feature; target ~1 us).
"""

from __future__ import annotations

import random
import time

from mlmonitor.tools.profiling import build_profile

FEATURES = 20
ROWS = 2000
REPEAT = 25


def main() -> None:
    rng = random.Random(0)
    names = [f"f{i:02d}" for i in range(FEATURES)]
    reference = [{n: rng.gauss(0, 1) for n in names} for _ in range(5000)]
    profile = build_profile(reference)
    rows = [{n: rng.gauss(0.2, 1.1) for n in names} for _ in range(ROWS)]
    rows_int = [{n: int(v * 10) for n, v in row.items()} for row in rows]
    bin_of = profile.bin_of
    for label, data in (("float values", rows), ("int values", rows_int)):
        best = float("inf")
        for _ in range(REPEAT):
            start = time.perf_counter()
            for row in data:
                for name, value in row.items():
                    bin_of(name, value)
            best = min(best, time.perf_counter() - start)
        per_feature_us = best / (ROWS * FEATURES) * 1e6
        print(
            f"bin_of, {FEATURES} numeric features, {label}: {per_feature_us:.3f} us/feature "
            f"({per_feature_us * FEATURES:.2f} us/observation, best of {REPEAT})"
        )


if __name__ == "__main__":
    main()
