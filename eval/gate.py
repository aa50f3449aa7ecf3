"""The release gate: only a model that meets the thresholds goes to production.

`python -m eval gate DIR --min faithfulness=0.8 --max hallucination_rate=0.1` reads
`DIR/results.json` and checks each threshold against each selected system (`--system`, default
every system in the run). Exit 0 when all pass, 1 naming every failing threshold, 2 for usage
errors (bad threshold syntax, unknown metric, missing results). A metric with no scored row
fails: a gate must not pass on numbers it does not have.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from eval.metrics import PROJECT_METRICS
from eval.ragas_metrics import RAGAS_METRICS
from retrieval.errors import UsageError

KNOWN_METRICS = PROJECT_METRICS + RAGAS_METRICS


class GateUsageError(UsageError):
    """A gate invocation that cannot be evaluated (exit code 2)."""


@dataclass(frozen=True)
class Threshold:
    """`metric` must be >= `value` (kind `min`) or <= `value` (kind `max`)."""

    kind: str
    metric: str
    value: float

    def __str__(self) -> str:
        return f"{self.metric} {'>=' if self.kind == 'min' else '<='} {self.value:g}"


def parse_threshold(kind: str, text: str) -> Threshold:
    """Parse `metric=value`.

    Raises:
        GateUsageError: Bad syntax, a non-numeric value or an unknown metric.
    """
    metric, sep, value = text.partition("=")
    metric = metric.strip()
    if not sep or not metric:
        raise GateUsageError(f"--{kind} {text!r}: expected METRIC=VALUE, e.g. faithfulness=0.8")
    try:
        number = float(value)
    except ValueError as e:
        raise GateUsageError(f"--{kind} {text!r}: {value!r} is not a number") from e
    if metric not in KNOWN_METRICS:
        raise GateUsageError(
            f"--{kind} {text!r}: unknown metric {metric!r}; known: {', '.join(KNOWN_METRICS)}"
        )
    return Threshold(kind, metric, number)


def check(results: dict, thresholds: list[Threshold], systems: list[str] | None = None
          ) -> list[str]:
    """Return one message per failing (system, threshold); empty when everything passes.

    Raises:
        GateUsageError: A requested system is not in the results.
    """
    systems = systems or results["systems"]
    failures = []
    for s in systems:
        if s not in results["metrics"]:
            raise GateUsageError(
                f"--system {s!r} is not in the results (systems: {', '.join(results['systems'])})"
            )
        for t in thresholds:
            agg = results["metrics"][s].get(t.metric)
            mean = agg["mean"] if agg else None
            if mean is None:
                failures.append(f"FAIL {s}: {t}: no scored rows for {t.metric}")
            elif (t.kind == "min" and mean < t.value) or (t.kind == "max" and mean > t.value):
                failures.append(f"FAIL {s}: {t}: got {mean:.3f} "
                                f"({agg['n_scored']} scored, {agg['n_not_scored']} not scored)")
    return failures


def load_results(run_dir: str | Path) -> dict:
    """`DIR/results.json`.

    Raises:
        GateUsageError: Missing or unreadable results.
    """
    path = Path(run_dir) / "results.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise GateUsageError(
            f"{path}: cannot read evaluation results ({e}): run `python -m eval run ... --out "
            f"{run_dir}` or `python -m eval report {run_dir}` first"
        ) from e
