"""`bench/llama_levers.py`: variant specs, token agreement and the summary, without a model."""

import pytest

from bench.llama_levers import KV_TYPES, agreement, parse_variant, summary


def test_a_variant_names_weights_and_llama_cpp_options():
    assert parse_variant("bf16") == ("bf16", {})
    weights, options = parse_variant("q8_0+fa+kv=f32+tb=1+ub=256")
    assert weights == "q8_0"
    assert options == {"flash_attn": True, "type_k": KV_TYPES["f32"], "type_v": KV_TYPES["f32"],
                       "n_threads_batch": 1, "n_ubatch": 256}
    with pytest.raises(SystemExit, match="unknown weights 'q2'"):
        parse_variant("q2")
    with pytest.raises(SystemExit, match="unknown option 'kv=f8'"):
        parse_variant("bf16+kv=f8")


def test_agreement_counts_the_tokens_before_the_first_difference():
    reference = [{"tokens": [1, 2, 3, 4]}, {"tokens": [5, 6]}]
    assert agreement(reference, reference) == 1.0
    # 2 of 4 equal before they part (the equal last token does not count), then 0 of 2
    assert agreement([{"tokens": [1, 2, 9, 4]}, {"tokens": [7, 6]}], reference) == 0.25
    assert agreement([{"tokens": [1, 2]}, {"tokens": [5, 6]}], reference) == 0.75  # stopped early


def test_the_summary_weighs_seconds_by_new_prompt_tokens():
    rows = [{"first_token_s": 0.5, "new_tokens": 100, "decode_tokens_per_s": 40.0},
            {"first_token_s": 1.0, "new_tokens": 200, "decode_tokens_per_s": None}]
    s = summary(rows)
    assert s["first_token_mean_s"] == 0.75 and s["first_token_max_s"] == 1.0
    assert s["ms_per_new_token"] == 5.0  # 1.5 s over 300 tokens
    assert s["decode_tokens_per_s_mean"] == 40.0  # a run without a decode rate is left out
