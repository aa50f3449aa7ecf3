"""`python -m finetune sweep`: data subsets, resume after an interruption, the table and the
plots, and the CLI's help and bad-input exit codes. Training and evaluation are subprocesses of
the real CLIs; the resume test replaces them with a recording runner that writes what they
write (a training report with epoch checkpoints, an eval `results.json`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from finetune.sweep import Series, SweepConfig, SweepError, subset_examples, sweep
from tests.conftest import REPO


def examples(n_groups: int = 10, per_group: int = 2) -> list[dict]:
    return [{"messages": [], "meta": {"group": f"g{g}", "i": i}}
            for g in range(n_groups) for i in range(per_group)]


def test_subsets_keep_groups_whole_and_nest():
    ex = examples()
    quarter, half, full = (subset_examples(ex, f, seed=3) for f in (0.25, 0.5, 1.0))
    assert len(full) == 20 and len(half) == 10 and len(quarter) == 4  # round(2.5) = 2 groups
    groups = lambda xs: {e["meta"]["group"] for e in xs}  # noqa: E731
    assert groups(quarter) < groups(half) < groups(full)
    for subset in (quarter, half):
        for g in groups(subset):  # both paraphrases of a group, or neither
            assert sum(e["meta"]["group"] == g for e in subset) == 2
    assert subset_examples(ex, 0.5, seed=4) != half  # the seed chooses the groups


class RecordingRunner:
    """Stands in for the training and eval subprocesses: writes their outputs, records calls,
    and fails the `fail_at`-th call once (an interrupted sweep)."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail_at = fail_at

    def __call__(self, cmd, log):
        self.calls.append(cmd)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("ran\n")
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            self.fail_at = None
            return 1
        if cmd[2:4] == ["finetune", "train"]:
            out = cmd[cmd.index("--output_dir") + 1]
            self._train(out, cmd)
        else:
            out = cmd[cmd.index("--out") + 1]
            adapter = cmd[cmd.index("--adapter") + 1]
            step = int(adapter.rsplit("-", 1)[-1])
            from pathlib import Path

            (Path(out) / "results.json").write_text(json.dumps({"metrics": {"finetuned": {
                "citation_accuracy": {"mean": min(1.0, step / 100)},
                "answered_unanswerable_rate": {"mean": 0.5}}}}))
        return 0

    @staticmethod
    def _train(out, cmd):
        from pathlib import Path

        train_file = Path(cmd[cmd.index("--train_file") + 1])
        n = sum(1 for _ in train_file.open())
        epochs = int(cmd[cmd.index("--num_train_epochs") + 1])
        per_epoch = -(-n // 4)
        out = Path(out)
        for e in range(1, epochs + 1):
            (out / f"checkpoint-{e * per_epoch}").mkdir(parents=True, exist_ok=True)
        (out / "casewise.json").write_text('{"base_model": "default"}')
        (out / "training_report.json").write_text(json.dumps({
            "global_step": epochs * per_epoch,
            "eval_loss": [{"step": e * per_epoch, "loss": 1.0 / e} for e in range(1, epochs + 1)],
        }))


@pytest.fixture
def sweep_config(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with (data / "train.jsonl").open("w") as f:
        for e in examples():
            f.write(json.dumps(e) + "\n")
    (data / "eval.jsonl").write_text(json.dumps(examples(1, 1)[0]) + "\n")
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"id": "q1", "question": "How?"}\n')
    return SweepConfig(train_config=str(REPO / "configs" / "smollm2-cpu.yaml"), data=str(data),
                       out=str(tmp_path / "sweep"), fractions=[0.5, 1.0], epochs=[1, 2],
                       questions=[str(questions)], metrics=["citation_accuracy",
                                                             "answered_unanswerable_rate", "rouge_l"])


def test_default_metrics_are_names_eval_reports():
    # A stale name (the sweep once asked for `hallucination_rate`) silently emptied its column.
    from eval.metrics import PROJECT_METRICS
    from eval.ragas_metrics import RAGAS_METRICS
    from finetune.sweep import DEFAULT_METRICS

    assert set(DEFAULT_METRICS) <= set(PROJECT_METRICS) | set(RAGAS_METRICS)


def test_sweep_resumes_where_it_stopped(sweep_config, tmp_path, capsys):
    first = RecordingRunner(fail_at=3)  # train 50 %, eval epoch 1, then eval epoch 2 fails
    with pytest.raises(SweepError, match="evaluating frac050 epoch 2 failed"):
        sweep(sweep_config, first)
    assert len(first.calls) == 3
    second = RecordingRunner()
    summary = sweep(sweep_config, second)
    kinds = [c[3] if c[2] == "finetune" else "eval" for c in second.calls]
    # Done steps are not repeated: the 50 % run's epoch-2 eval, then the 100 % run and its evals.
    assert kinds == ["eval", "train", "eval", "eval"]
    rows = summary["rows"]
    assert [(r["series"], r["epochs"]) for r in rows] == [
        ("frac050", 1), ("frac050", 2), ("frac100", 1), ("frac100", 2)]
    assert [r["train_examples"] for r in rows] == [10, 10, 20, 20]
    assert [r["steps"] for r in rows] == [3, 6, 5, 10]
    assert rows[1]["eval_loss"] == 0.5 and rows[3]["citation_accuracy"] == 0.1
    out = tmp_path / "sweep"
    for name in ("citation_accuracy.png", "answered_unanswerable_rate.png", "eval_loss.png", "sweep.md",
                 "sweep.json"):
        assert (out / name).is_file(), name
    assert "| frac100 | 20 | 2 | 10 |" in (out / "sweep.md").read_text()
    # Each epoch's checkpoint was evaluated, and carries the run's metadata.
    evaluated = [c[c.index("--adapter") + 1] for c in first.calls[1:2] + second.calls
                 if "--adapter" in c]
    assert [e.rsplit("/", 1)[-1] for e in evaluated] == [
        "checkpoint-3", "checkpoint-6", "checkpoint-5", "checkpoint-10"]
    assert (out / "frac100" / "adapter" / "checkpoint-5" / "casewise.json").is_file()
    # A metric the evaluation did not report is named, not dropped without a word.
    assert "has no rouge_l" in capsys.readouterr().err
    # A third run finds everything done.
    third = RecordingRunner()
    sweep(sweep_config, third)
    assert third.calls == []


def test_training_command_checkpoints_every_epoch(sweep_config):
    runner = RecordingRunner()
    sweep(sweep_config, runner)
    train = runner.calls[0]
    for flag, value in (("--num_train_epochs", "2"), ("--save_strategy", "epoch"),
                        ("--early_stopping_patience", "0"), ("--load_best_model_at_end", "false")):
        assert train[train.index(flag) + 1] == value
    assert Series(0.5, True).name == "frac050-syn"


def test_sweep_help_and_bad_input(tmp_path, capsys):
    result = subprocess.run([sys.executable, "-m", "finetune", "sweep", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "examples:" in result.stdout
    from finetune.cli import main

    code = main(["sweep", "--train-config", "configs/smollm2-cpu.yaml", "--data",
                 str(tmp_path), "--questions", str(tmp_path / "q.jsonl"), "--out",
                 str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "q.jsonl does not exist" in err and "Traceback" not in err
    code = main(["sweep", "--train-config", "configs/smollm2-cpu.yaml", "--data",
                 str(tmp_path), "--questions", "configs/smollm2-cpu.yaml", "--out",
                 str(tmp_path / "o"), "--fractions", "0"])
    assert code == 2 and "fractions ([0.0])" in capsys.readouterr().err
