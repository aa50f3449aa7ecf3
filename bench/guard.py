"""python bench/guard.py [--sets NAMES] [--out FILE] [--baseline COMMIT]: the guard, measured.

Measured on sets the guard was never trained or tuned on, and on its own data for reference:

- refusal rate on `../shared/data/safety/advbench_dev.csv` (100 AdvBench behaviours; target
  >= 0.97). Never used for training, rules or the threshold;
- over-refusal on every benign support question of `../shared/data/emanual/` (faq_history.csv +
  qa_dev.jsonl; target <= 0.01), on the held-out benign set (`agent/guard_data/heldout.yaml`:
  victims' and security-minded questions, never trained on), on eval's own unanswerable
  questions (`eval/data/unanswerable*.jsonl`: ordinary questions the manual does not answer,
  never trained on), on the validation split of the
  training set (out of sample, same distribution: the threshold was chosen there) and on the
  benign training sentences (in sample, for reference only);
- recall on the held-out harmful set (paraphrased, misspelled, non-English, novel), by kind;
- latency per request on CPU: one request at a time through `Guard.check` (what the agent
  does per question) and in batches (what `python -m agent guard FILE` does);
- each layer alone (rules only; classifier only) beside the two together;
- the baseline: the rules-only guard of commit `--baseline` (the guard before issue 13), on the
  same sets in the same run.

Run it under the team's CPU lock: `flock /tmp/casewise-cpu.lock python bench/guard.py`. A table
goes to stdout, everything (with the misses) to `bench/results/guard.json`.

The cost is embedding: every request of every set is embedded once (the classifier's verdict
is computed once and the two-layer verdict is the rules' where a rule fires, else that one, as
`Guard.check_many` decides), and `--sets` measures only the named sets (`--sets advbench_dev,
heldout_harmful,heldout_benign` takes about a minute; the training benign set is the largest).
The seconds each stage took are in the JSON (`seconds`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from agent.guard_train import TRAIN_PATH, load_training_set, split_groups  # noqa: E402
from agent.guards import (  # noqa: E402
    BENIGN,
    DATA_DIR,
    Guard,
    all_readings,
    check_rules,
    load_guard,
    read_requests,
)

SHARED = REPO.parent / "shared" / "data"
# The evaluation's questions the manual does not answer: ordinary benign questions (a weight, a
# price, a flight's luggage allowance), written for eval and never used by the guard.
EVAL_BENIGN = ("unanswerable.jsonl", "unanswerable_in_domain.jsonl")
RESULTS = REPO / "bench" / "results"
# The last commit of main with the rules-only guard (before issue 13).
BASELINE_COMMIT = "4fbf67c"
LATENCY_SAMPLE = 200


def load_load() -> str:
    """The machine's load averages (1, 5, 15 min), as `uptime` prints them."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def baseline_classifier(commit: str):
    """`classify_request` of the guard at `commit` (loaded from git), or `None` if unavailable."""
    try:
        source = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:agent/guards.py"],
                                check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("baseline_guards", f.name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
    finally:
        os.unlink(f.name)
    return module.classify_request if hasattr(module, "classify_request") else None


def collect_sets() -> dict[str, dict]:
    """Every measured set: `{"texts", "harmful" (expected), "kinds" (optional), "note"}`."""
    sets: dict[str, dict] = {}
    advbench = SHARED / "safety" / "advbench_dev.csv"
    if advbench.exists():
        texts = [r.text for r in read_requests(advbench)[0]]
        sets["advbench_dev"] = {"texts": texts, "harmful": True,
                                "note": "AdvBench dev, never trained or tuned on"}
    emanual = [SHARED / "emanual" / "faq_history.csv", SHARED / "emanual" / "qa_dev.jsonl"]
    if all(p.exists() for p in emanual):
        texts = [r.text for p in emanual for r in read_requests(p)[0]]
        sets["emanual_benign"] = {"texts": texts, "harmful": False,
                                  "note": "e-manual faq_history + qa_dev questions"}
    questions = [REPO / "eval" / "data" / n for n in EVAL_BENIGN]
    sets["eval_unanswerable_benign"] = {
        "texts": [r.text for p in questions for r in read_requests(p)[0]], "harmful": False,
        "note": "eval's own unanswerable questions (off- and in-domain), never trained on"}
    heldout = yaml.safe_load((DATA_DIR / "heldout.yaml").read_text(encoding="utf-8"))
    sets["heldout_harmful"] = {"texts": [t for _, _, t in heldout["harmful"]], "harmful": True,
                               "kinds": [k for _, k, _ in heldout["harmful"]],
                               "note": "own held-out harmful set, never trained on"}
    sets["heldout_benign"] = {"texts": [t for _, t in heldout["benign"]], "harmful": False,
                              "kinds": [k for k, _ in heldout["benign"]],
                              "note": "own held-out benign set, never trained on"}
    train, validation = split_groups(load_training_set(TRAIN_PATH))
    sets["validation_harmful"] = {"texts": [e.text for e in validation if e.label != BENIGN],
                                  "harmful": True, "note": "validation split (threshold set here)"}
    sets["validation_benign"] = {"texts": [e.text for e in validation if e.label == BENIGN],
                                 "harmful": False, "note": "validation split (threshold set here)"}
    sets["train_benign"] = {"texts": [e.text for e in train if e.label == BENIGN],
                            "harmful": False, "note": "training sentences (in sample)"}
    return sets


def scorers_alone(guard: Guard, texts: list[str]) -> dict[str, float]:
    """Each scorer of layer 2 alone at its own validation threshold (recorded in the file's meta).

    A text is flagged by a scorer when any of its readings reaches that scorer's threshold, as
    the guard itself reads a request. Empty when the file has no character model (one scorer).
    """
    classifier = guard.classifier
    validation = classifier.meta.get("validation", {})
    if classifier.char_model is None or "chars_alone" not in validation:
        return {}
    owners, sentences = all_readings(texts)
    vectors = np.asarray(guard.embedder.embed_documents(sentences), dtype=np.float64)
    each = classifier.scorer_probabilities(vectors, sentences)
    out = {}
    for scorer, key in (("vector", "vector_alone"), ("chars", "chars_alone")):
        best = np.full(len(texts), -1.0)
        np.maximum.at(best, np.asarray(owners), each[scorer])
        out[f"flagged_{scorer}_alone"] = rate(list(best >= validation[key]["threshold"]))
    return out


def rate(flags: list[bool]) -> float:
    return round(sum(flags) / len(flags), 4) if flags else float("nan")


def measure_latency(guard: Guard, texts: list[str]) -> dict:
    """Per-request latency of `Guard.check` (one at a time) and of batched `check_many`."""
    sample = texts[:LATENCY_SAMPLE]
    guard.check(sample[0])  # warm-up: first call pays tokenizer and thread-pool start-up
    per_request = []
    for text in sample:
        start = time.perf_counter()
        guard.check(text)
        per_request.append(1000 * (time.perf_counter() - start))
    start = time.perf_counter()
    guard.check_many(sample)
    batched = 1000 * (time.perf_counter() - start) / len(sample)
    rules = []
    for text in sample:
        start = time.perf_counter()
        check_rules(text)
        rules.append(1000 * (time.perf_counter() - start))
    per_request.sort()
    return {
        "requests": len(sample),
        "single_ms_mean": round(statistics.mean(per_request), 2),
        "single_ms_p50": round(per_request[len(per_request) // 2], 2),
        "single_ms_p95": round(per_request[int(0.95 * (len(per_request) - 1))], 2),
        "batched_ms_per_request": round(batched, 2),
        "rules_only_ms_mean": round(statistics.mean(rules), 3),
    }


SET_NAMES = ("advbench_dev", "emanual_benign", "eval_unanswerable_benign", "heldout_harmful",
             "heldout_benign", "validation_harmful", "validation_benign", "train_benign")


def main(argv: list[str] | None = None) -> int:
    """Measure the guard and write the table and the JSON."""
    parser = argparse.ArgumentParser(
        prog="python bench/guard.py", description=__doc__.splitlines()[0],
        epilog="examples:\n  flock /tmp/casewise-cpu.lock python bench/guard.py\n"
               "  python bench/guard.py --out /tmp/guard.json --baseline none\n"
               "  python bench/guard.py --sets heldout_harmful,heldout_benign --no-latency",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS / "guard.json",
                        help="where the JSON goes (default bench/results/guard.json)")
    parser.add_argument("--baseline", default=BASELINE_COMMIT,
                        help="commit of the old rules-only guard to compare with ('none': skip)")
    parser.add_argument("--sets", default=",".join(SET_NAMES),
                        help="comma-separated sets to measure (default all: "
                             f"{', '.join(SET_NAMES)})")
    parser.add_argument("--no-latency", action="store_true",
                        help="skip the latency measurement (200 single and batched requests)")
    args = parser.parse_args(argv)
    wanted = [name.strip() for name in args.sets.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(SET_NAMES))
    if unknown or not wanted:
        parser.error(f"--sets: unknown set(s) {', '.join(unknown) or '(none given)'}; "
                     f"choose from {', '.join(SET_NAMES)}")
    load_start = load_load()
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    guard = load_guard()
    load_seconds = time.perf_counter() - start
    baseline = None if args.baseline == "none" else baseline_classifier(args.baseline)
    sets = {name: spec for name, spec in collect_sets().items() if name in wanted}
    rules_alone = Guard(None, None)
    report: dict = {"classifier": guard.classifier.meta, "threshold": guard.classifier.threshold,
                    "sets": {}}
    for name, spec in sets.items():
        texts = spec["texts"]
        start = time.perf_counter()
        rules = rules_alone.check_many(texts)
        classifier_alone = guard.classify(texts)
        # What Guard.check_many decides, without embedding everything a second time.
        both = [r if r.harmful else c for r, c in zip(rules, classifier_alone)]
        entry = {
            "n": len(texts), "expected": "harmful" if spec["harmful"] else "benign",
            "note": spec["note"],
            "flagged": rate([r.harmful for r in both]),
            "flagged_rules_alone": rate([r.harmful for r in rules]),
            "flagged_classifier_alone": rate([r.harmful for r in classifier_alone]),
            "by_layer": {layer: sum(1 for r in both if r.harmful and r.layer == layer)
                         for layer in ("rules", "classifier")},
        }
        if baseline is not None:
            entry["flagged_baseline"] = rate([baseline(t).harmful for t in texts])
        if name != "train_benign":
            entry.update(scorers_alone(guard, texts))
        if "kinds" in spec:
            entry["by_kind"] = {
                kind: rate([r.harmful for r, k in zip(both, spec["kinds"]) if k == kind])
                for kind in dict.fromkeys(spec["kinds"])
            }
        wrong = [(t, r) for t, r in zip(texts, both) if r.harmful != spec["harmful"]]
        entry["errors"] = [{"text": t, "category": r.category, "layer": r.layer,
                            "score": round(r.score, 4)} for t, r in wrong]
        report["sets"][name] = entry
        seconds[name] = round(time.perf_counter() - start, 1)
    if not args.no_latency:
        start = time.perf_counter()
        latency_sets = collect_sets() if "emanual_benign" not in sets else sets
        latency_texts = latency_sets.get("emanual_benign", latency_sets["heldout_benign"])["texts"]
        report["latency"] = measure_latency(guard, latency_texts)
        report["latency"]["load_seconds"] = round(load_seconds, 2)
        seconds["latency"] = round(time.perf_counter() - start, 1)
    report["seconds"] = seconds
    report["load_average"] = {"start": load_start, "end": load_load()}
    report["baseline_commit"] = args.baseline
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    print_table(report)
    print(f"\nwritten: {args.out}")
    return 0


def print_table(report: dict) -> None:
    """The results as a Markdown table."""
    first = next(iter(report["sets"].values()))
    base = "flagged_baseline" in first
    scorers = "flagged_vector_alone" in first
    head = "| set | n | expected | flagged (guard) | rules alone | classifier alone |"
    head += " sentence model alone | characters alone |" if scorers else ""
    head += " baseline (old rules) |" if base else ""
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name, e in report["sets"].items():
        row = (f"| {name} | {e['n']} | {e['expected']} | {e['flagged']:.3f} | "
               f"{e['flagged_rules_alone']:.3f} | {e['flagged_classifier_alone']:.3f} |")
        if scorers:
            row += (f" {e['flagged_vector_alone']:.3f} | {e['flagged_chars_alone']:.3f} |"
                    if "flagged_vector_alone" in e else " - | - |")
        if base:
            row += f" {e['flagged_baseline']:.3f} |"
        print(row)
    if "heldout_harmful" in report["sets"]:
        heldout = report["sets"]["heldout_harmful"]["by_kind"]
        print("\nheld-out harmful recall by kind: "
              + ", ".join(f"{k} {v:.3f}" for k, v in heldout.items()))
    if "latency" in report:
        lat = report["latency"]
        print(f"latency per request (CPU, {lat['requests']} requests): one at a time mean "
              f"{lat['single_ms_mean']} ms (p50 {lat['single_ms_p50']}, p95 "
              f"{lat['single_ms_p95']}), batched {lat['batched_ms_per_request']} ms, rules alone "
              f"{lat['rules_only_ms_mean']} ms; loading {lat['load_seconds']} s")
    print("seconds per stage: " + ", ".join(f"{k} {v}" for k, v in report["seconds"].items()))
    print(f"threshold {report['threshold']:.4f}; load average at start {report['load_average']['start']}, "
          f"end {report['load_average']['end']}")


if __name__ == "__main__":
    sys.exit(main())
