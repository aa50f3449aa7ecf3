"""python bench/ingest_cli.py [--tree NAME=DIR ...] [--repeats 3] [--json]

Wall time of `python -m ingest smart_tv_manual.pdf --home FRESH --quiet` as a user runs it: a
fresh process and a fresh index home for every cold run, then the same command again on that
home (the unchanged re-ingest). Each `--tree` is a checkout of casewise (default: this one);
several trees are measured interleaved in one run (tree A, tree B, tree A, ...) after one
warm-up run each, so the page cache is warm and the machine's state is shared. The one-minute
load average is recorded before every run. Writes `bench/results/ingest_cli.json`.

Example (main's code against this branch, under the team's CPU lock):

    flock /tmp/casewise-cpu.lock python bench/ingest_cli.py --tree main=/work/main --tree branch=.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MANUAL = REPO.parent / "shared" / "data" / "emanual" / "smart_tv_manual.pdf"
RESULTS = REPO / "bench" / "results" / "ingest_cli.json"


def _timed(tree: Path, home: Path) -> tuple[float, float]:
    """Seconds of one CLI run from `tree` (and the load average before it)."""
    load = os.getloadavg()[0]
    command = [sys.executable, "-m", "ingest", str(MANUAL), "--home", str(home), "--quiet"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=tree, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{tree}: ingest failed ({done.returncode}): {done.stderr[-500:]}")
    return round(seconds, 3), round(load, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Cold and unchanged CLI ingest of the shared manual, per code tree.",
        epilog="example: python bench/ingest_cli.py --tree main=/work/main --tree branch=.",
    )
    parser.add_argument("--tree", action="append", metavar="NAME=DIR",
                        help="a casewise checkout to measure (repeatable; default this one)")
    parser.add_argument("--repeats", type=int, default=3, help="cold runs per tree (default 3)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="put the index homes under DIR and keep them (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print only the result object")
    args = parser.parse_args(argv)
    trees = {}
    for spec in args.tree or [f"this={REPO}"]:
        name, _, directory = spec.partition("=")
        if not directory or not (Path(directory) / "ingest" / "__main__.py").is_file():
            print(f"error: --tree {spec!r}: give NAME=DIR, DIR a casewise checkout",
                  file=sys.stderr)
            return 2
        trees[name] = Path(directory).resolve()
    if not MANUAL.is_file():
        print(f"error: {MANUAL} not found: the benchmark needs ../shared/data/emanual/",
              file=sys.stderr)
        return 2
    root = args.keep or Path(tempfile.mkdtemp(prefix="casewise-ingest-bench-"))
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    try:
        for name, tree in trees.items():  # warm-up: page cache, ONNX export, .pyc files
            _timed(tree, root / f"warmup-{name}")
        for repeat in range(1, args.repeats + 1):
            for name, tree in trees.items():
                home = root / f"{name}-{repeat}"
                cold, cold_load = _timed(tree, home)
                again, again_load = _timed(tree, home)
                runs[name].append({"cold_s": cold, "load_before_cold": cold_load,
                                   "unchanged_s": again, "load_before_unchanged": again_load,
                                   "home": str(home)})
                if not args.json:
                    print(f"{name} run {repeat}: cold {cold:.2f} s (load {cold_load}), "
                          f"unchanged {again:.2f} s (load {again_load})", file=sys.stderr)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    result = {
        "manual": str(MANUAL), "trees": {n: str(t) for n, t in trees.items()},
        "runs": runs,
        "median": {n: {"cold_s": statistics.median(r["cold_s"] for r in rows),
                       "unchanged_s": statistics.median(r["unchanged_s"] for r in rows)}
                   for n, rows in runs.items()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result if args.json else result["median"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
