"""The release gate: only a model that meets the thresholds goes to production.

`python -m eval gate DIR --min citation_accuracy=0.5 --max answered_unanswerable_rate=0.1`
reads `DIR/results.json` and checks each threshold against each selected system (`--system`,
default every system in the run). Any metric the results hold can be gated: project, RAGAS and
conversation metrics, over all rows (`METRIC`) or within one question set
(`METRIC@SET`, e.g. `answered_unanswerable_rate@in-domain-unanswerable:report`). It prints a
table of every threshold against the measured value, then one `FAIL` line per miss.

Exit 0 when all pass, 1 when any fails, 2 for usage errors (bad threshold syntax, a metric or
set the results do not have, an unknown system, missing results). A metric with no scored row
fails: a gate must not pass on numbers it does not have. The old name `hallucination_rate` is
accepted with a deprecation note and checks `answered_unanswerable_rate`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from eval.metrics import CONVERSATION_METRICS, PROJECT_METRICS, RENAMED_METRICS
from eval.ragas_metrics import RAGAS_METRICS
from retrieval.errors import UsageError

KNOWN_METRICS = PROJECT_METRICS + CONVERSATION_METRICS + RAGAS_METRICS


class GateUsageError(UsageError):
    """A gate invocation that cannot be evaluated (exit code 2)."""


@dataclass(frozen=True)
class Threshold:
    """`metric` (within question set `set`, or over every row) must be >= or <= `value`.

    Attributes:
        kind: `min` (at least `value`) or `max` (at most `value`).
        metric: Metric name.
        value: The threshold.
        set: A question set of `results["metrics_by_set"]`, or `None` for every row.
    """

    kind: str
    metric: str
    value: float
    set: str | None = None

    @property
    def name(self) -> str:
        """`metric` or `metric@set`."""
        return f"{self.metric}@{self.set}" if self.set else self.metric

    def __str__(self) -> str:
        return f"{self.name} {'>=' if self.kind == 'min' else '<='} {self.value:g}"


def parse_threshold(kind: str, text: str) -> Threshold:
    """Parse `METRIC=VALUE` or `METRIC@SET=VALUE`.

    A renamed metric's old name is accepted (a deprecation note goes to stderr). Whether the
    metric exists is checked against the results by `check`.

    Raises:
        GateUsageError: Bad syntax or a non-numeric value.
    """
    name, sep, value = text.partition("=")
    metric, _, qset = name.strip().partition("@")
    metric, qset = metric.strip(), qset.strip() or None
    if not sep or not metric:
        raise GateUsageError(f"--{kind} {text!r}: expected METRIC=VALUE or METRIC@SET=VALUE, "
                             f"e.g. citation_accuracy=0.5")
    try:
        number = float(value)
    except ValueError as e:
        raise GateUsageError(f"--{kind} {text!r}: {value!r} is not a number") from e
    if metric in RENAMED_METRICS:
        new = RENAMED_METRICS[metric]
        print(f"warning: --{kind} {metric}: deprecated name, now {new} (it counts answers to "
              f"questions the documents do not cover); checking {new}", file=sys.stderr)
        metric = new
    return Threshold(kind, metric, number, qset)


@dataclass(frozen=True)
class Check:
    """One threshold checked for one system."""

    system: str
    threshold: Threshold
    mean: float | None
    n_scored: int
    n_not_scored: int

    @property
    def passed(self) -> bool:
        """Met; a metric with no scored row never passes."""
        if self.mean is None:
            return False
        t = self.threshold
        return self.mean >= t.value if t.kind == "min" else self.mean <= t.value

    def failure(self) -> str:
        """The `FAIL ...` line for a failed check."""
        if self.mean is None:
            return f"FAIL {self.system}: {self.threshold}: no scored rows for {self.threshold.name}"
        return (f"FAIL {self.system}: {self.threshold}: got {self.mean:.3f} "
                f"({self.n_scored} scored, {self.n_not_scored} not scored)")


def _metrics_of(results: dict, t: Threshold) -> dict:
    if t.set is None:
        return results["metrics"]
    by_set = results.get("metrics_by_set") or {}
    if t.set not in by_set:
        raise GateUsageError(
            f"threshold {t}: no question set {t.set!r} in the results (sets: "
            f"{', '.join(by_set) or 'none; re-run `python -m eval report DIR`'})"
        )
    return by_set[t.set]


def _known_metrics(results: dict) -> set[str]:
    found = {m for per in results["metrics"].values() for m in per}
    for per_set in (results.get("metrics_by_set") or {}).values():
        found |= {m for per in per_set.values() for m in per}
    return found | set(KNOWN_METRICS)


def check(results: dict, thresholds: list[Threshold], systems: list[str] | None = None
          ) -> list[Check]:
    """Every (system, threshold) check, passed or not, in the order given.

    Raises:
        GateUsageError: A requested system is not in the results, or a metric or set is
            unknown to them.
    """
    systems = systems or results["systems"]
    known = _known_metrics(results)
    for t in thresholds:
        if t.metric not in known:
            raise GateUsageError(
                f"threshold {t}: unknown metric {t.metric!r}; these results have: "
                f"{', '.join(sorted(known))}"
            )
    out = []
    for s in systems:
        if s not in results["metrics"]:
            raise GateUsageError(
                f"--system {s!r} is not in the results (systems: {', '.join(results['systems'])})"
            )
        for t in thresholds:
            agg = _metrics_of(results, t).get(s, {}).get(t.metric) or {}
            out.append(Check(s, t, agg.get("mean"), agg.get("n_scored", 0),
                             agg.get("n_not_scored", 0)))
    return out


def table(checks: list[Check]) -> str:
    """Markdown table: each threshold against the measured value, and whether it passed."""
    lines = ["| system | metric | threshold | measured | scored / applicable | result |",
             "|---|---|---|---|---|---|"]
    for c in checks:
        t = c.threshold
        measured = "n/a" if c.mean is None else f"{c.mean:.3f}"
        n = f"{c.n_scored} / {c.n_scored + c.n_not_scored}"
        op = ">=" if t.kind == "min" else "<="
        lines.append(f"| {c.system} | {t.name} | {op} {t.value:g} | {measured} | {n} | "
                     f"{'pass' if c.passed else 'FAIL'} |")
    return "\n".join(lines)


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
