"""finetune.model.load_causal_lm: clear errors for bad adapter paths."""

from __future__ import annotations

import pytest

from finetune.model import load_causal_lm
from retrieval.errors import ModelNotFoundError


def test_missing_adapter_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_causal_lm("default", adapter=str(tmp_path / "nope"))


def test_dir_without_adapter_config_is_a_clear_error(tmp_path):
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(ModelNotFoundError, match="adapter_config.json"):
        load_causal_lm("default", adapter=str(tmp_path))


def test_missing_base_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_causal_lm(str(tmp_path / "no-model"))
