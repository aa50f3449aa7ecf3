"""Offline tracking: `report_to: tensorboard` and `mlflow` (local file store) write the run's
scalars where `docs/finetune.md` says, and an unsupported or missing tracker is a clear error."""

from __future__ import annotations

import pytest

from finetune.train import TrainConfigError, main
from tests.finetune.test_train import data_dir, train_argv  # noqa: F401  (fixture)


def test_a_run_writes_its_scalars_to_tensorboard_and_mlflow(tiny_model_dir, data_dir, tmp_path,
                                                            monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "TENSORBOARD_LOGGING_DIR"):
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / "run"
    assert main(train_argv(tiny_model_dir, data_dir, out, "--report_to",
                           "tensorboard,mlflow")) == 0

    event_files = list((out / "runs").rglob("events.out.tfevents.*"))
    assert event_files, "no TensorBoard event file under <output_dir>/runs"
    acc = EventAccumulator(str(event_files[0].parent))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/loss" in tags and "eval/loss" in tags
    assert [e.step for e in acc.Scalars("eval/loss")] == [3, 6]

    client = MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("casewise")
    run = client.search_runs([experiment.experiment_id])[0]
    losses = client.get_metric_history(run.info.run_id, "eval_loss")
    assert [m.step for m in losses] == [3, 6]
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 6
    assert run.data.params["learning_rate"] == "0.005"


def test_unsupported_tracker_is_a_usage_error(tiny_model_dir, data_dir, tmp_path):
    with pytest.raises(TrainConfigError, match="report_to \\['wandb'\\] is not supported offline"):
        main(train_argv(tiny_model_dir, data_dir, tmp_path / "o", "--report_to", "wandb"))
