"""Batched greedy decoding of the llama.cpp backend (`LlamaCppChatModel.complete_many`).

The bookkeeping (which sequence gets which logits row, the repetition penalty per sequence,
stopping at EOS or the limit, groups that fit the batch context) is tested here without a model:
a toy language model stands in for llama.cpp, and its batched replies must equal the replies of
a plain one-sequence greedy loop written out in the test. The real model's batched replies are
compared with its one-by-one replies in `test_llm_local.py` (integration).
"""

from __future__ import annotations

import numpy as np
import pytest

from agent.llm import (
    REPETITION_PENALTY,
    cells_per_seq,
    common_prefix_len,
    greedy_decode_many,
    plan_groups,
)

VOCAB = 40
EOS = 0


def toy_logits(history: list[int]) -> np.ndarray:
    """A deterministic stand-in for a language model: next-token logits from the last two tokens.

    Logits are positive and negative (the penalty divides or multiplies them); EOS gets more
    likely as the reply grows, so some replies end before the limit and some do not.
    """
    rng = np.random.default_rng(history[-1] * 1000 + (history[-2] if len(history) > 1 else 0))
    logits = rng.normal(0.0, 2.0, VOCAB)
    logits[EOS] = -5.0 + 0.3 * len(history)
    return logits


def one_by_one(prompt: list[int], limit: int) -> list[int]:
    """The plain greedy loop of `_generate`: argmax after the transformers repetition penalty."""
    reply: list[int] = []
    for _ in range(limit):
        logits = toy_logits(prompt + reply)
        for t in set(prompt + reply):
            logits[t] = logits[t] * REPETITION_PENALTY if logits[t] < 0 \
                else logits[t] / REPETITION_PENALTY
        token = int(np.argmax(logits))
        if token == EOS:
            break
        reply.append(token)
    return reply


def batched(prompts: list[list[int]], limit: int) -> tuple[list[list[int]], list[list[int]]]:
    """Replies through `greedy_decode_many`, and the sequence indices fed at each step."""
    histories = [list(p) for p in prompts]
    steps: list[list[int]] = []

    def step(fed):
        steps.append([seq for seq, _ in fed])
        for seq, token in fed:
            histories[seq].append(token)
        return np.stack([toy_logits(histories[seq]) for seq, _ in fed])

    first = np.stack([toy_logits(p) for p in prompts])
    return greedy_decode_many(prompts, first, step, limit=limit, eos=EOS, n_vocab=VOCAB), steps


PROMPTS = [[5, 9, 13, 2], [5, 9, 13, 7, 7, 21], [5, 9, 30], [5, 9, 13, 2, 11, 3, 8], [17]]


@pytest.mark.parametrize("limit", [1, 3, 25])
def test_batched_replies_equal_the_one_by_one_greedy_loop(limit):
    replies, steps = batched(PROMPTS, limit)
    expected = [one_by_one(p, limit) for p in PROMPTS]
    assert replies == expected
    assert all(len(r) <= limit for r in replies)
    # One call a step for all sequences still decoding: after its (k+1)-th token a sequence is
    # fed unless that token was its last allowed one; one that chose EOS is never fed again.
    lengths = [len(r) for r in replies]
    assert steps == [[i for i, n in enumerate(lengths) if n >= k + 1]
                     for k in range(min(max(lengths), limit - 1))]

def test_replies_differ_in_length_and_some_stop_at_eos():
    """The toy is not degenerate: the equality above covers early EOS and the limit both."""
    limit = 25
    replies, steps = batched(PROMPTS, limit)
    lengths = [len(r) for r in replies]
    assert min(lengths) < limit and max(lengths) == limit
    assert len(set(lengths)) > 2
    assert [len(fed) for fed in steps] == sorted((len(fed) for fed in steps), reverse=True)
    assert EOS not in sum(replies, [])


def test_the_penalty_is_per_sequence():
    """A sequence's penalty counts its own prompt and reply only, not its neighbours'."""
    alone = [batched([p], 25)[0][0] for p in PROMPTS]
    assert batched(PROMPTS, 25)[0] == alone
    assert batched(PROMPTS[::-1], 25)[0] == alone[::-1]


def test_common_prefix_len():
    assert common_prefix_len(PROMPTS[:2]) == 3
    assert common_prefix_len(PROMPTS[:4]) == 2
    assert common_prefix_len(PROMPTS) == 0
    assert common_prefix_len([[1, 2], [1, 2, 3]]) == 2
    assert common_prefix_len([[4, 4, 4]]) == 3


def test_cells_per_seq_rounds_prompt_and_reply_up_to_256():
    assert cells_per_seq(1, 1) == 256
    assert cells_per_seq(200, 56) == 256
    assert cells_per_seq(200, 57) == 512
    assert cells_per_seq(1300, 256) == 1792


def test_plan_groups_keeps_order_and_fits_the_context():
    lengths = [1300, 200, 900, 1500, 100, 1200, 300]
    limit = 256
    groups = plan_groups(lengths, limit, max_seqs=3, max_cells=4096)
    assert sum(groups, []) == list(range(len(lengths)))
    for g in groups:
        assert len(g) <= 3
        assert len(g) * cells_per_seq(max(lengths[i] for i in g), limit) <= 4096 or len(g) == 1
    # Greedy packing: the next prompt would not have fitted the group before it.
    for g, nxt in zip(groups, groups[1:], strict=False):
        widest = cells_per_seq(max(lengths[i] for i in g + nxt[:1]), limit)
        assert len(g) == 3 or (len(g) + 1) * widest > 4096
    assert plan_groups([100] * 5, 50, max_seqs=16, max_cells=10**6) == [[0, 1, 2, 3, 4]]
    assert plan_groups([100] * 5, 50, max_seqs=2, max_cells=10**6) == [[0, 1], [2, 3], [4]]
    assert plan_groups([3000], 256, max_seqs=16, max_cells=1024) == [[0]]
