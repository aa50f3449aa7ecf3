"""Data-size and training-steps experiments: train on fractions of the FAQ data, evaluate each
epoch's adapter with `python -m eval`, plot every metric against data size and against steps.

    python -m finetune sweep --train-config configs/smollm2-gpu.yaml --data runs/data/emanual \
        --questions ../shared/data/emanual/qa_dev.jsonl --home runs/emanual-home --out runs/sweep

For each data fraction (and, with `--synthetic-data`, each fraction plus that data's synthetic
examples) one `python -m finetune train` run lasts the largest epoch count, with a checkpoint at
every epoch and no early stopping; each epoch's checkpoint is then evaluated with
`python -m eval run --systems finetuned` on the same fixed dev subset (`--eval-limit N`, evenly
spaced, judge off: project metrics only). So "epochs" are points along one schedule (the
learning rate decays over the longest run), the way a training curve is read.

A fraction keeps that share of the answer groups of `train.jsonl` (paraphrases stay together),
chosen with `--seed`; the eval file is the same for every run. Results: `<out>/sweep.json`,
`<out>/sweep.md` (the table), one PNG per metric (`<out>/<metric>.png`: against training
examples, one line per epoch count; against optimizer steps, one line per data size).

Unattended and resumable: every finished step leaves a marker (`run.json` of a training,
`result.json` of an evaluation) and is skipped when the command runs again; an interrupted
training resumes from its last checkpoint. Each training and evaluation is a subprocess, so a
crash loses only that step, and its log is kept (`train.log`, `eval.log`).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from retrieval.errors import CasewiseError, UsageError

# Names as `python -m eval` reports them (eval/metrics.py, eval/ragas_metrics.py). Refusal is
# left out by default: the guard refuses before the model is asked, so it hardly moves with the
# adapter; add it with --metrics when the sweep runs with --harmful.
DEFAULT_METRICS = ("citation_accuracy", "answered_unanswerable_rate", "false_abstention_rate",
                   "rouge_l", "unsupported_claim_rate")


class SweepError(CasewiseError):
    """A training or evaluation step of the sweep failed (its log says why)."""


@dataclass
class SweepConfig:
    """Settings of one sweep (saved to `sweep.json`).

    Attributes:
        train_config: The `python -m finetune train` YAML every run starts from.
        data: Directory with `train.jsonl` and `eval.jsonl` (`python -m finetune data`).
        out: Output directory.
        fractions: Shares of the training answer groups.
        epochs: Epoch counts to evaluate (checkpoints of one run per fraction).
        synthetic_data: Optional data directory built with `--synthetic N`: its synthetic
            examples are added to every fraction in a second series.
        questions: Question files for `python -m eval run`.
        harmful: Harmful-request CSV for the refusal metric (optional).
        home: Index home for the evaluations.
        eval_limit: Questions per file (evenly spaced; the same subset for every adapter).
        metrics: Metrics to tabulate and plot.
        seed: Seed of the fraction subsets.
        train_args: Extra `python -m finetune train` flags for every run.
        eval_args: Extra `python -m eval run` flags for every evaluation.
    """

    train_config: str
    data: str
    out: str
    fractions: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0])
    epochs: list[int] = field(default_factory=lambda: [1, 2, 3])
    synthetic_data: str | None = None
    questions: list[str] = field(default_factory=list)
    harmful: str | None = None
    home: str | None = None
    eval_limit: int = 30
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    seed: int = 0
    train_args: list[str] = field(default_factory=list)
    eval_args: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.fractions or any(not 0.0 < f <= 1.0 for f in self.fractions):
            raise UsageError(f"fractions ({self.fractions}) must be shares in (0, 1]")
        if not self.epochs or any(e < 1 for e in self.epochs):
            raise UsageError(f"epochs ({self.epochs}) must be whole numbers of at least 1")
        if not self.questions:
            raise UsageError("questions: pass at least one question file (--questions)")
        for name in [self.train_config, *self.questions, *([self.harmful] if self.harmful
                                                           else [])]:
            if not Path(name).is_file():
                raise UsageError(f"{name} does not exist")
        for d in [self.data, *([self.synthetic_data] if self.synthetic_data else [])]:
            if not (Path(d) / "train.jsonl").is_file():
                raise UsageError(f"data directory {d} has no train.jsonl: build it with "
                                 f"`python -m finetune data --out {d}`")
        if not (Path(self.data) / "eval.jsonl").is_file():
            raise UsageError(f"data directory {self.data} has no eval.jsonl")


# --------------------------------------------------------------------------- data subsets


def _read_jsonl(path: Path) -> list[dict]:
    from ingest.loaders import read_jsonl

    values, problems = read_jsonl(path)
    if problems:
        raise UsageError(f"{problems[0]}: rebuild the data with `python -m finetune data`")
    return [value for _, value in values]


def subset_examples(examples: Sequence[dict], fraction: float, seed: int) -> list[dict]:
    """The examples of a `fraction` of the answer groups (`meta.group`), order kept.

    Groups are shuffled with `seed` and the first `round(fraction * groups)` (at least one) are
    kept, so a smaller fraction is a subset of a larger one with the same seed.
    """
    groups = sorted({e.get("meta", {}).get("group", str(i)) for i, e in enumerate(examples)})
    random.Random(seed).shuffle(groups)
    keep = set(groups[: max(1, round(fraction * len(groups)))])
    return [e for i, e in enumerate(examples) if e.get("meta", {}).get("group", str(i)) in keep]


@dataclass(frozen=True)
class Series:
    """One training run of the sweep: a data fraction, with or without synthetic examples."""

    fraction: float
    synthetic: bool

    @property
    def name(self) -> str:  # noqa: D102
        return f"frac{round(self.fraction * 100):03d}" + ("-syn" if self.synthetic else "")


def write_series_data(cfg: SweepConfig, series: Series, target: Path) -> int:
    """Write the series' `train.jsonl` (and a copy of `eval.jsonl`); returns the train size."""
    data = Path(cfg.data)
    examples = [e for e in _read_jsonl(data / "train.jsonl")
                if not e.get("meta", {}).get("synthetic")]
    chosen = subset_examples(examples, series.fraction, cfg.seed)
    if series.synthetic:
        chosen += [e for e in _read_jsonl(Path(cfg.synthetic_data) / "train.jsonl")
                   if e.get("meta", {}).get("synthetic")]
    target.mkdir(parents=True, exist_ok=True)
    with (target / "train.jsonl").open("w", encoding="utf-8") as f:
        for e in chosen:
            f.write(json.dumps(e, ensure_ascii=False) + "\n")
    shutil.copyfile(data / "eval.jsonl", target / "eval.jsonl")
    return len(chosen)


# --------------------------------------------------------------------------- steps


Runner = Callable[[list[str], Path], int]


def run_logged(cmd: list[str], log: Path) -> int:
    """Run `cmd` with its output in `log`; returns the exit status."""
    with log.open("a", encoding="utf-8") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False).returncode


def train_series(cfg: SweepConfig, series: Series, run: Runner) -> dict:
    """Train one series (or resume it), checkpointing every epoch; returns its `run.json`."""
    root = Path(cfg.out) / series.name
    marker = root / "run.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    n_train = write_series_data(cfg, series, root / "data")
    adapter = root / "adapter"
    cmd = [sys.executable, "-m", "finetune", "train", "--config", cfg.train_config,
           "--train_file", str(root / "data" / "train.jsonl"),
           "--eval_file", str(root / "data" / "eval.jsonl"),
           "--output_dir", str(adapter), "--num_train_epochs", str(max(cfg.epochs)),
           "--max_steps", "-1", "--early_stopping_patience", "0",
           "--load_best_model_at_end", "false", "--save_strategy", "epoch",
           "--eval_strategy", "epoch", "--save_total_limit", str(max(cfg.epochs) + 1),
           "--max_train_minutes", "0", "--disable_tqdm", "true", *cfg.train_args]
    if list(adapter.glob("checkpoint-*")):
        cmd += ["--resume_from_checkpoint", "auto"]
    if run(cmd, root / "train.log"):
        raise SweepError(f"training {series.name} failed: see {root / 'train.log'}")
    report = json.loads((adapter / "training_report.json").read_text())
    checkpoints = _epoch_checkpoints(adapter, report, cfg.epochs)
    info = {"series": series.name, "fraction": series.fraction, "synthetic": series.synthetic,
            "train_examples": n_train, "checkpoints": checkpoints,
            "eval_loss": report.get("eval_loss", [])}
    marker.write_text(json.dumps(info, indent=2) + "\n")
    return info


def _epoch_checkpoints(adapter: Path, report: dict, epochs: Sequence[int]) -> dict:
    """`{epochs: {"path", "step"}}` of the checkpoint saved at the end of each wanted epoch.

    The run's `casewise.json` (base model, format version) is copied into each checkpoint so
    that it loads like the final adapter.
    """
    steps = sorted(int(p.name.split("-")[-1]) for p in adapter.glob("checkpoint-*"))
    total = report["global_step"]
    out = {}
    for e in epochs:
        # Epoch e ends at step ceil(e * total / max_epoch); take the checkpoint nearest to it.
        want = total * e / max(epochs)
        step = min(steps, key=lambda s: abs(s - want))
        path = adapter / f"checkpoint-{step}"
        shutil.copyfile(adapter / "casewise.json", path / "casewise.json")
        out[str(e)] = {"path": str(path), "step": step}
    return out


def evaluate(cfg: SweepConfig, series: Series, epochs: int, checkpoint: dict, run: Runner) -> dict:
    """Evaluate one checkpoint (or read its earlier result); returns the metric means."""
    root = Path(cfg.out) / series.name / f"eval-epoch{epochs}"
    marker = root / "result.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    root.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "eval", "run", "--systems", "finetuned", "--adapter",
           checkpoint["path"], "--limit", str(cfg.eval_limit), "--spread", "--judge", "none",
           "--out", str(root)]
    for q in cfg.questions:
        cmd += ["--questions", q]
    if cfg.harmful:
        cmd += ["--harmful", cfg.harmful]
    if cfg.home:
        cmd += ["--home", cfg.home]
    cmd += cfg.eval_args
    if run(cmd, root / "eval.log"):
        raise SweepError(f"evaluating {series.name} epoch {epochs} failed: see "
                         f"{root / 'eval.log'}")
    results = json.loads((root / "results.json").read_text())
    metrics = results["metrics"].get("finetuned", {})
    result = {m: metrics[m]["mean"] for m in cfg.metrics if m in metrics}
    missing = [m for m in cfg.metrics if m not in metrics]
    if missing:
        # A misspelt or renamed metric would otherwise vanish from the table without a word.
        print(f"warning: {root / 'results.json'} has no {', '.join(missing)} (metrics there: "
              f"{', '.join(sorted(metrics))})", file=sys.stderr)
    marker.write_text(json.dumps(result, indent=2) + "\n")
    return result


# --------------------------------------------------------------------------- table and plots


def collect_rows(cfg: SweepConfig, runs: Sequence[dict], results: dict) -> list[dict]:
    """One row per (series, epochs): data size, steps, eval loss and the metrics."""
    rows = []
    for info in runs:
        losses = {h["step"]: h["loss"] for h in info["eval_loss"]}
        for e in cfg.epochs:
            ckpt = info["checkpoints"][str(e)]
            rows.append({"series": info["series"], "fraction": info["fraction"],
                         "synthetic": info["synthetic"], "train_examples": info["train_examples"],
                         "epochs": e, "steps": ckpt["step"], "eval_loss": losses.get(ckpt["step"]),
                         **results[(info["series"], e)]})
    return rows


def write_table(cfg: SweepConfig, rows: Sequence[dict], path: Path) -> None:
    """The Markdown table of every row."""
    cols = ["series", "train_examples", "epochs", "steps", "eval_loss", *cfg.metrics]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def plot_metrics(cfg: SweepConfig, rows: Sequence[dict], out: Path) -> list[Path]:
    """One PNG per metric (and eval loss): against training examples and against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for metric in ["eval_loss", *cfg.metrics]:
        have = [r for r in rows if r.get(metric) is not None]
        if not have:
            continue
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for synthetic in sorted({r["synthetic"] for r in have}):
            for e in cfg.epochs:
                pts = sorted((r["train_examples"], r[metric]) for r in have
                             if r["epochs"] == e and r["synthetic"] == synthetic)
                if pts:
                    left.plot(*zip(*pts, strict=True), marker="o",
                              label=f"{e} epoch(s)" + (" + synthetic" if synthetic else ""))
        for series in sorted({r["series"] for r in have}):
            pts = sorted((r["steps"], r[metric]) for r in have if r["series"] == series)
            right.plot(*zip(*pts, strict=True), marker="o", label=series)
        left.set_xlabel("training examples")
        right.set_xlabel("optimizer steps")
        left.set_ylabel(metric)
        for ax in (left, right):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"{metric}: data size and training steps")
        fig.tight_layout()
        path = out / f"{metric}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def sweep(cfg: SweepConfig, run: Runner = run_logged) -> dict:
    """Run (or resume) every training and evaluation, then write the table and the plots.

    Returns:
        `{"config": ..., "rows": [...], "plots": [...]}`, also written to `sweep.json`.

    Raises:
        SweepError: A step failed (the finished steps stay done).
    """
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    series = [Series(f, False) for f in cfg.fractions]
    if cfg.synthetic_data:
        series += [Series(f, True) for f in cfg.fractions]
    runs, results = [], {}
    for s in series:
        info = train_series(cfg, s, run)
        runs.append(info)
        for e in cfg.epochs:
            results[(s.name, e)] = evaluate(cfg, s, e, info["checkpoints"][str(e)], run)
            print(f"{s.name} epoch {e}: {results[(s.name, e)]}", file=sys.stderr)
    rows = collect_rows(cfg, runs, results)
    write_table(cfg, rows, out / "sweep.md")
    plots = plot_metrics(cfg, rows, out)
    summary = {"config": asdict(cfg), "rows": rows, "plots": [str(p) for p in plots]}
    (out / "sweep.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def build_parser() -> argparse.ArgumentParser:
    """The `python -m finetune sweep` options (also used by `finetune.cli`)."""
    p = argparse.ArgumentParser(
        prog="python -m finetune sweep", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  python -m finetune sweep --train-config configs/smollm2-gpu.yaml --data runs/data/emanual \\
      --questions ../shared/data/emanual/qa_dev.jsonl --questions eval/data/unanswerable.jsonl \\
      --harmful ../shared/data/safety/advbench_dev.csv --home runs/emanual-home --out runs/sweep
  python -m finetune sweep ... --fractions 0.5 1 --epochs 1 2 --eval-limit 20   (smaller)
  (run the same command again to resume after an interruption)""")
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the sweep's options to `p`."""
    d = SweepConfig.__dataclass_fields__
    p.add_argument("--train-config", required=True, help="python -m finetune train YAML")
    p.add_argument("--data", required=True, help="data directory (train.jsonl, eval.jsonl)")
    p.add_argument("--out", required=True, help="output directory (resumable)")
    p.add_argument("--fractions", type=float, nargs="+", default=d["fractions"].default_factory(),
                   help="shares of the training answer groups (default %(default)s)")
    p.add_argument("--epochs", type=int, nargs="+", default=d["epochs"].default_factory(),
                   help="epoch counts to evaluate (default %(default)s)")
    p.add_argument("--synthetic-data", help="data directory built with --synthetic N: adds a "
                   "series with its synthetic examples")
    p.add_argument("--questions", action="append", required=True, help="eval question file "
                   "(repeatable)")
    p.add_argument("--harmful", help="harmful requests CSV (refusal metric)")
    p.add_argument("--home", help="index home for the evaluations")
    p.add_argument("--eval-limit", type=int, default=30, help="questions per file, evenly "
                   "spaced (default %(default)s)")
    p.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-arg", action="append", default=[], dest="train_args",
                   help="extra flag for every training, e.g. --train-arg=--learning_rate=3e-4")
    p.add_argument("--eval-arg", action="append", default=[], dest="eval_args",
                   help="extra flag for every evaluation, e.g. --eval-arg=--threads=1")


def config_from_args(args: argparse.Namespace) -> SweepConfig:
    """The `SweepConfig` of parsed arguments (validated)."""
    return SweepConfig(
        train_config=args.train_config, data=args.data, out=args.out, fractions=args.fractions,
        epochs=sorted(set(args.epochs)), synthetic_data=args.synthetic_data,
        questions=args.questions, harmful=args.harmful, home=args.home,
        eval_limit=args.eval_limit, metrics=args.metrics, seed=args.seed,
        train_args=args.train_args, eval_args=args.eval_args)
