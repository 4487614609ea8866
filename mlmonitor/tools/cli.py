"""The ``mlmonitor`` command: every subcommand's argparse code, offline only.

Runs when a person or a build calls ``mlmonitor ...`` (or ``python -m mlmonitor.tools.cli``),
never in a request. The work itself lives in the module that owns it: ``reference build|show``
calls :mod:`mlmonitor.tools.profiling` and :mod:`mlmonitor.reference`, ``alerts render`` calls
:mod:`mlmonitor.tools.rules`, ``dashboards render`` calls :mod:`mlmonitor.tools.dashboards`;
:mod:`mlmonitor.tools.check` registers ``check`` itself.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from typing import Any
from collections.abc import Sequence

from mlmonitor import __version__
from mlmonitor.reference import ReferenceProfile, too_few_rows
from mlmonitor.reference_format import MAX_FILE_BYTES, read_profile
from . import check, dashboards, kubernetes, mixin, outputs, rules
from .profiling import profile_csv, summarize


# -- mlmonitor reference build|show --------------------------------------------------------------

def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _cli_build(args: argparse.Namespace) -> int:
    profile = profile_csv(
        args.csv,
        label_column=args.label_column,
        prediction_column=args.prediction_column,
        score_column=args.score_column,
        feature_columns=args.features,
        categorical=args.categorical,
        bins=args.bins,
        top_n=args.top_n,
        task=args.task,
    )
    _warn_if_small(profile.to_dict())
    profile.save(args.out)
    print(f"wrote {args.out}: {len(profile.features)} features, task {profile.task}")
    return 0


def _cli_show(args: argparse.Namespace) -> int:
    # ReferenceProfile.load without its start-up log line: the warning goes below the summary
    profile = read_profile(args.path, ReferenceProfile, MAX_FILE_BYTES)
    print(summarize(profile), flush=True)
    _warn_if_small(profile.to_dict())
    return 0


def _warn_if_small(data: dict[str, Any]) -> None:
    """One line on stderr when the reference has too few rows for its bins (see reference.min_rows)."""
    warning = too_few_rows(data)
    if warning:
        print(f"warning: only {data['rows']} reference rows: {warning}", file=sys.stderr)


def _add_reference(subparsers: Any) -> None:
    """Register ``mlmonitor reference build|show`` (the work: :mod:`mlmonitor.tools.profiling`)."""
    parser = subparsers.add_parser("reference", help="build or show a reference profile")
    commands = parser.add_subparsers(dest="reference_command", required=True)
    build = commands.add_parser("build", help="profile a CSV file into reference.json")
    build.add_argument("--csv", required=True, help="CSV file with a header row")
    build.add_argument("--label-column", help="true labels (class shares; accuracy with --prediction-column)")
    build.add_argument("--prediction-column", help="model predictions (class shares, accuracy)")
    build.add_argument("--score-column", help="model confidence scores in [0, 1]")
    build.add_argument("--features", type=_names, default=None, help="feature columns (default: all others)")
    build.add_argument("--categorical", type=_names, default=[], help="columns to treat as categorical")
    build.add_argument("--bins", type=int, default=10, help="quantile bins per numeric feature (2..100)")
    build.add_argument("--top-n", type=int, default=10, help="top values kept per categorical feature")
    build.add_argument("--task", choices=("classification", "regression"), default=None,
                       help="default: detected from the predictions (else the labels): fractional "
                            "numbers or more than 50 distinct numbers are a regression")
    build.add_argument("--out", required=True, help="where to write the JSON profile")
    build.set_defaults(func=_cli_build)
    show = commands.add_parser("show", help="print a summary of a reference profile")
    show.add_argument("path")
    show.set_defaults(func=_cli_show)


# -- mlmonitor alerts render ---------------------------------------------------------------------

_THRESHOLD_HELP = {
    "error_ratio": "server error ratio per model version that fires MLModelServerErrorRatioHigh",
    "invalid_input_ratio": "invalid-input (4xx) ratio that fires MLModelInvalidInputRatioHigh",
    "latency_p99": "p99 prediction latency SLA in seconds; a bucket bound (see --buckets)",
    "availability_slo": "availability SLO target (share of predictions without server error)",
    "latency_slo": "latency SLO target (share of predictions faster than --latency-slo-threshold)",
    "latency_slo_threshold": "latency SLO bound in seconds; a bucket bound (default: the value of --latency-p99)",
    "ttfc_p95": "time-to-first-chunk p95 of streamed predictions in seconds that fires"
                " MLModelTimeToFirstChunkHigh; a bucket bound (see --buckets)",
    "psi_threshold": "population stability index above which a feature or the classes drifted",
    "drift_min_count": "live values needed in the drift window before PSI is judged (small samples are noisy)",
    "accuracy_drop": "accuracy drop below the reference (0.05 = 5 points) that fires MLModelAccuracyDrop",
    "accuracy_min_feedback": "feedback events needed in the window before accuracy is judged",
    "mae_factor": "regression: live mean absolute error above this many times the reference's fires"
                  " MLModelAbsoluteErrorHigh",
    "mae_min_feedback": "regression: feedback events needed in the window before the live MAE is judged",
    "canary_error_delta": "error-ratio points by which a version must exceed the best other version",
    "canary_latency_factor": "p99 factor by which a version must exceed the best other version",
    "memory_bytes": "resident memory per worker that fires MLModelProcessMemoryHigh",
    "gpu_memory_ratio": "GPU memory share that fires MLModelGPUMemoryHigh",
    "selector": "label matchers on target labels (job, namespace ...) added to every read of a series or"
                " recording rule, up included, e.g. '{job=\"my-model\"}'; render once per app with disjoint"
                " selectors to load several renders in one Prometheus; '{}' selects every target",
    "runbook_base_url": "where your team's runbooks live (copy docs/runbooks.md there): each alert's"
                        " runbook_url is URL#<alertname lower-case>, or {alert} in the URL replaced by it;"
                        " the default is a path in this project's repository",
    "buckets": "the app's latency histogram buckets (MLMONITOR_BUCKETS), comma-separated seconds;"
               " every latency threshold must be one of them",
    "time_scale": "divide every window, for: and Alertmanager time by this (tests only; names keep"
                  " nominal windows)",
}


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in _names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated numbers: {text!r}") from None


def _render_alerts(args: argparse.Namespace) -> int:
    t = rules.Thresholds(**{f.name: getattr(args, f.name) for f in fields(rules.Thresholds)})
    if args.out_dir is None:
        sys.stdout.write(rules.render_text(t, args.prometheus_operator))
        return 0
    for path in rules.render_files(t, args.out_dir, args.prometheus_operator):
        print(path)
    return 0


def _add_alerts(subparsers: Any) -> None:
    """Register ``mlmonitor alerts render``: one option per field of :class:`rules.Thresholds`."""
    alerts = subparsers.add_parser("alerts", help="render Prometheus alerting and recording rules")
    sub = alerts.add_subparsers(dest="alerts_command", required=True)
    render = sub.add_parser(
        "render", help="write the rule files with the given thresholds",
        description="Render mlmonitor's Prometheus rules. With --out-dir: the recording and alerting rule"
                    " files and alertmanager.yml (and the PrometheusRule manifest); without it: one rule"
                    " file with every group (or the manifest) on standard output.")
    _add_thresholds(render)
    render.add_argument("--out-dir", help="write the files into this folder (default: the rules to standard"
                                          " output)")
    render.add_argument("--prometheus-operator", action="store_true",
                        help="also write prometheus-operator/mlmonitor-prometheusrule.yaml (without"
                             " --out-dir: print that manifest instead of the rule file)")
    render.set_defaults(func=_render_alerts)


def _add_thresholds(render: argparse.ArgumentParser) -> None:
    """One option per field of :class:`rules.Thresholds` (``alerts render``, ``kubernetes render``)."""
    for f in fields(rules.Thresholds):
        default = f.default
        shown = "" if f.name == "latency_slo_threshold" else f" (default: {_shown(default)})"
        kind = _floats if f.name == "buckets" else type(default)
        render.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=default,
                            metavar="BOUNDS" if f.name == "buckets" else None,
                            help=_THRESHOLD_HELP[f.name] + shown)


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(rules.num(v) for v in value)
    if isinstance(value, float):
        return rules.num(value)
    if value == rules.Thresholds.selector:
        return repr("{" + value + "}")
    return repr(value) if isinstance(value, str) else str(value)


# -- mlmonitor dashboards render -----------------------------------------------------------------

def _render_dashboards(args: argparse.Namespace) -> int:
    return outputs.write_or_check(lambda: dashboards.render(args.selector), args, "dashboards render")


def _add_dashboards(subparsers: Any) -> None:
    """Register ``mlmonitor dashboards render``."""
    parser = subparsers.add_parser("dashboards", help="render the Grafana dashboards")
    sub = parser.add_subparsers(dest="dashboards_command", required=True)
    render = sub.add_parser("render", help="write the three dashboard JSON files, or check them")
    where = render.add_mutually_exclusive_group(required=True)
    where.add_argument("--out-dir", help="write the three files into this folder")
    where.add_argument("--check", metavar="DIR",
                       help="write nothing; exit 1 naming each file in DIR that differs from the output")
    render.add_argument("--selector", default="",
                        help="label matchers (as alerts render's --selector) first in every read of a series,"
                             " the job variable included: the dashboards of one app; default: every job")
    render.set_defaults(func=_render_dashboards)


# -- the command ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The ``mlmonitor`` command's parser: ``check``, ``reference``, ``alerts``, ``dashboards``, ``kubernetes``."""
    parser = argparse.ArgumentParser(prog="mlmonitor", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mlmonitor {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    check.add_cli(subparsers)
    _add_reference(subparsers)
    _add_alerts(subparsers)
    _add_dashboards(subparsers)
    _add_thresholds(kubernetes.add_cli(subparsers))
    mixin.add_cli(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``mlmonitor`` command; its exit status (2: a bad input or file, one line on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as exc:
        print(f"mlmonitor: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
