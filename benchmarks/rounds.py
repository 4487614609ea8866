"""Driving in-process benchmark children: one fresh process per configuration, rounds rotated.

Shared by ``bench_overhead.py`` (WSGI) and ``bench_asgi.py`` (ASGI). Each child is the
benchmark script itself run with ``--child CONFIG --warmup N``: it prints one JSON line when
ready, then for each number read from stdin runs that many requests and prints
``{"status", "cpu", "wall"}``; on ``quit`` it prints its checks and exits.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple


def serve_rounds(config: str, run: Callable[[int], Tuple[float, float, int]], warmup: int,
                 checks: Callable[[], Dict[str, Any]]) -> None:
    """The child's side: warm up, say ready, then for each number read from stdin run that
    many requests (``run(count) -> (wall s, cpu s, last status)``) and print the time per
    request; on ``quit`` print ``checks()``."""
    _, _, status = run(max(warmup, 1))
    if status != 200:
        raise SystemExit(f"{config}: POST /predict answered {status}")
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        count = int(command)
        wall, cpu, status = run(count)
        out.write(json.dumps({"wall": wall / count * 1e6, "cpu": cpu / count * 1e6,
                              "status": status}) + "\n")
        out.flush()
    out.write(json.dumps(checks()) + "\n")
    out.flush()


class Worker:
    """One configuration's child process, talked to line by line."""

    def __init__(self, script: str, config: str, warmup: int) -> None:
        self.config = config
        self.proc = subprocess.Popen(
            [sys.executable, script, "--child", config, "--warmup", str(warmup)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"})

    def read(self) -> Dict[str, Any]:
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"{self.config}: child exited ({self.proc.wait()})")
        return json.loads(line)

    def send(self, text: str) -> None:
        self.proc.stdin.write(text + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def stop(self) -> Dict[str, Any]:
        self.send("quit")
        checks = self.read()
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.wait(30)
        return checks


def run_rounds(script: str, configs: List[str], rounds: int, requests: int,
               warmup: int) -> Tuple[Dict[str, List[Dict[str, float]]], Dict[str, Any]]:
    """Per clock (``cpu``, ``wall``), one ``{config: us per request}`` per round, and each
    child's checks. The order of the configurations rotates round by round."""
    workers = {name: Worker(script, name, warmup) for name in configs}
    try:
        for worker in workers.values():
            worker.read()  # ready
        per_round: Dict[str, List[Dict[str, float]]] = {"cpu": [], "wall": []}
        for index in range(rounds):
            order = configs[index % len(configs):] + configs[:index % len(configs)]
            times: Dict[str, Dict[str, float]] = {"cpu": {}, "wall": {}}
            for name in order:
                workers[name].send(str(requests))
                reply = workers[name].read()
                if reply["status"] != 200:
                    raise RuntimeError(f"{name}: status {reply['status']}")
                for kind in ("cpu", "wall"):
                    times[kind][name] = reply[kind]
            for kind in ("cpu", "wall"):
                per_round[kind].append(times[kind])
        checks = {name: worker.stop() for name, worker in workers.items()}
    finally:
        for worker in workers.values():
            if worker.proc.poll() is None:
                worker.proc.kill()
                worker.proc.wait()
    return per_round, checks


def median(values: List[float]) -> float:
    return statistics.median(values) if values else float("nan")


def child_checks(config: str, handles: Dict[str, Any],
                 counters: Sequence[Tuple[str, Dict[str, str]]]) -> Dict[str, Any]:
    """What a child's configuration really did (so a broken set-up cannot pass as a fast one):
    spans exported, requests counted by whichever of ``counters`` its registry has, and
    mlmonitor's internal errors."""
    checks: Dict[str, Any] = {"config": config}
    provider = handles.get("provider")
    if provider is not None:
        provider.force_flush(10_000)
        checks["spans_exported"] = handles["exporter"].exported
    registry = handles.get("registry")
    if registry is not None:
        for name, labels in counters:
            value = registry.get_sample_value(name, labels)
            if value is not None:
                checks["requests_counted"] = value
    from mlmonitor import guard
    checks["mlmonitor_internal_errors"] = guard.total_faults()
    return checks


def per_config(per_round: List[Dict[str, float]], checks: Dict[str, Any],
               describe: Callable[[str], str]) -> Dict[str, Any]:
    """Each configuration's medians over rounds: time per request, added time and ratio to
    bare Flask within each round."""
    results: Dict[str, Any] = {}
    for name in per_round[0]:
        us = [r[name] for r in per_round]
        results[name] = {"description": describe(name), "us_per_request": median(us),
                         "added_us": median([r[name] - r["bare"] for r in per_round]),
                         "ratio_to_bare": median([r[name] / r["bare"] for r in per_round]),
                         "rounds_us": us, "checks": checks.get(name, {})}
    return results


def ratio_of_added(per_round: List[Dict[str, float]], a: str, b: str) -> Optional[float]:
    """Median over rounds of what ``a`` adds to bare over what ``b`` adds."""
    if a not in per_round[0] or b not in per_round[0]:
        return None
    values = [(r[a] - r["bare"]) / (r[b] - r["bare"]) for r in per_round if r[b] - r["bare"] > 0]
    return median(values) if values else None
