"""bench/guard_folds.py: its command line, and the out-of-fold judging of threshold rules on a tiny set."""

import numpy as np
import pytest
import yaml

from agent.guard_train import Example, group_folds, load_training_set
from bench import guard_folds
from tests.agent.test_guard_train import TINY
from tests.conftest import HashEmbedder


def test_help_names_the_rules_and_has_examples(capsys):
    with pytest.raises(SystemExit) as done:
        guard_folds.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--train" in out and "--model" in out and "Examples:" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["--model", "tree:3"], "--model 'tree:3'"),
    (["--model", "mlp:wide:0.1"], "--model 'mlp:wide:0.1'"),
    (["--train", "/nonexistent/train.yaml"], "/nonexistent/train.yaml"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert guard_folds.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_every_sentence_is_scored_by_models_that_never_saw_its_item(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(TINY), encoding="utf-8")
    examples = load_training_set(path)
    vectors = np.asarray(HashEmbedder().embed_documents([e.text for e in examples]))
    scores = guard_folds.out_of_fold_scores(examples, vectors, ("logistic", 4.0), 4.0,
                                            say=lambda m: None)
    assert all(np.isfinite(s).all() and ((0 <= s) & (s <= 1)).all() for s in scores.values())
    assert len(set(group_folds(examples))) == 5
    rows = guard_folds.judge_rules(examples, scores)
    assert [r["rule"] for r in rows] == ["fold0 per-sentence", "fold0 per-item",
                                         "pooled per-sentence", "pooled per-item"]
    for r in rows:
        assert 0 < r["threshold"] < 1
        assert len(r["recall_per_fold"]) == len(r["benign_items_flagged_per_fold"]) == 5
    # The pooled per-item rule keeps its 1 % budget on all folds together (20 benign items,
    # four in each fold, so the mean over folds is the pooled share).
    assert np.mean(rows[3]["benign_items_flagged_per_fold"]) <= 0.01 + 1e-4


def test_fold_scores_do_not_depend_on_the_held_fold_labels():
    # Flipping the labels of fold-k sentences changes no fold-k score: its models never saw them.
    words = ["bomb", "remote", "scam", "subtitles", "virus", "router", "poison", "screen"]
    examples = [Example(f"how do I {w} {i}", "weapons" if j % 2 else "benign", f"g{w}{i}")
                for j, w in enumerate(words) for i in range(6)]
    vectors = np.asarray(HashEmbedder().embed_documents([e.text for e in examples]))
    folds = group_folds(examples)
    base = guard_folds.out_of_fold_scores(examples, vectors, ("logistic", 4.0), 4.0,
                                          say=lambda m: None)
    k = 0
    flipped = [Example(e.text, "benign" if e.label != "benign" else "weapons", e.group)
               if f == k else e for e, f in zip(examples, folds)]
    again = guard_folds.out_of_fold_scores(flipped, vectors, ("logistic", 4.0), 4.0,
                                           say=lambda m: None, folds=folds)
    held = folds == k
    assert np.allclose(base["vector"][held], again["vector"][held])
    assert np.allclose(base["chars"][held], again["chars"][held])
