"""python bench/retrieval.py [--json] [--synthetic 100000] [--keep DIR]

Retrieval quality and speed on the shared Smart TV manual (`../shared/data/emanual/`):

1. index `smart_tv_manual.pdf` into a scratch index with the real embedder (bundled
   all-MiniLM-L6-v2) through `ingest.pipeline.run`, the code behind `python -m ingest`, with
   the default chunking: `ingest_s` (model load + ingest), then again unchanged: `reingest_s`;
2. ask every question of `qa_dev.jsonl` through `retrieval.search.open_searcher` (dense + BM25
   fusion); a hit is a retrieved chunk whose page is within 1 of the question's gold page:
   `recall_at_5`, `recall_at_10`, `mrr` (over the top 10), query latency p50/p95 (query
   embedding included; one warm-up query first builds the BM25 index);
3. copy the manual's chunks into a second scratch index, add `--synthetic` (100,000) synthetic
   chunks (random unit vectors, text drawn from the manual's vocabulary) and time the same
   queries again: `query_p50_ms_100k`, `query_p95_ms_100k`.

Prints a table (progress on stderr) and writes `bench/results/retrieval.json` (only for the
full 100,000-chunk run); `--json` prints only the result object. Tuning happened on these dev questions in general ways only (chunk
granularity, heading prefixes, fusion constants over a grid; see docs/ingest.md): a held-out
split of the same data exists.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ingest.pipeline import run  # noqa: E402
from retrieval.embeddings import load_embedder  # noqa: E402
from retrieval.search import HybridSearcher, open_searcher  # noqa: E402
from retrieval.settings import DEFAULT_EMBEDDER, Settings  # noqa: E402
from retrieval.store import ChunkStore  # noqa: E402
from retrieval.types import Chunk  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "emanual"
RESULTS = REPO / "bench" / "results" / "retrieval.json"
KEYS = ("recall_at_5", "recall_at_10", "mrr", "ingest_s", "reingest_s", "query_p50_ms",
        "query_p95_ms", "query_p50_ms_100k", "query_p95_ms_100k")
# Fusion constants chosen on a grid (k_rrf 5-60, keyword weight 0.7-3): a smaller RRF constant
# lets a list's top ranks count, and BM25 is the stronger list on manuals full of menu names.
FUSION = {"k_rrf": 10.0, "keyword_weight": 1.5}
PAGE_TOLERANCE = 1


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def evaluate(searcher: HybridSearcher, questions: list[dict]) -> dict:
    """Recall@5/10, MRR@10 and per-query latency of `searcher` over the questions."""
    latencies, ranks = [], []
    # Every question pays its embedding: a cached vector from an earlier pass would not count it.
    searcher.embedder._queries.clear()
    for q in questions:
        start = time.perf_counter()
        hits = searcher.search(q["question"], k=10)
        latencies.append((time.perf_counter() - start) * 1000)
        rank = next((r for r, h in enumerate(hits, start=1) if h.chunk.page is not None
                     and abs(h.chunk.page - q["page"]) <= PAGE_TOLERANCE), None)
        ranks.append(rank)
    # The parts of the latency, each timed on its own: query embedding (cache cleared: the
    # questions were just asked), the dense search, the keyword search.
    embed_ms, dense_ms, keyword_ms = [], [], []
    corpus = searcher.keyword_index()
    for q in questions:
        searcher.embedder._queries.clear()  # the real embedder: time the model, not the cache
        start = time.perf_counter()
        vector = searcher.embedder.embed_query(q["question"])
        embed_ms.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        searcher.store.nearest_ids(vector, searcher.dense_n)
        dense_ms.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        corpus.search(q["question"], searcher.keyword_n)
        keyword_ms.append((time.perf_counter() - start) * 1000)
    n = len(questions)
    return {
        "embed_p50": percentile(embed_ms, 50),
        "dense_p50": percentile(dense_ms, 50),
        "keyword_p50": percentile(keyword_ms, 50),
        "recall_at_5": sum(r is not None and r <= 5 for r in ranks) / n,
        "recall_at_10": sum(r is not None for r in ranks) / n,
        "mrr": sum(1 / r for r in ranks if r) / n,
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
    }


def synthetic_chunks(n: int, dim: int, vocabulary: list[str], seed: int = 0):
    """Yield `(chunks, vectors)` batches of synthetic chunks: unit vectors, manual-like words."""
    rng = np.random.default_rng(seed)
    batch = 5000
    words = np.asarray(vocabulary)
    for start in range(0, n, batch):
        size = min(batch, n - start)
        vectors = rng.standard_normal((size, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        lengths = rng.integers(80, 300, size)
        chunks = [
            Chunk(id=f"synthetic-{start + i}",
                  text=" ".join(rng.choice(words, int(lengths[i]))),
                  source=f"synthetic/doc-{(start + i) // 200:04d}.pdf",
                  page=(start + i) % 200 + 1, section=None, chunk_index=(start + i) % 200,
                  doc_hash="synthetic", type="doc")
            for i in range(size)
        ]
        yield chunks, vectors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Retrieval benchmark on the shared manual.")
    parser.add_argument("--json", action="store_true", help="print only the result object")
    parser.add_argument("--synthetic", type=int, default=100_000, metavar="N",
                        help="synthetic chunks added for the large-index latency (default 100000)")
    parser.add_argument("--embedder", default=DEFAULT_EMBEDDER,
                        help=f"embedder that builds and searches the index (default "
                        f"{DEFAULT_EMBEDDER!r}; 'default-int8': the int8 MiniLM)")
    parser.add_argument("--runtime", choices=["auto", "onnx", "torch"], default="auto",
                        help="embedder runtime of the bundled model (default auto: onnx where "
                        "onnxruntime is installed)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="build the scratch indexes under DIR and keep them")
    args = parser.parse_args(argv)
    manual, qa = DATA / "smart_tv_manual.pdf", DATA / "qa_dev.jsonl"
    for path in (manual, qa):
        if not path.is_file():
            log(f"error: {path} not found: the benchmark needs ../shared/data/emanual/")
            return 2
    questions = [json.loads(line) for line in qa.read_text().splitlines() if line.strip()]
    questions = [q for q in questions if q.get("answerable", True) and q.get("page")]

    with tempfile.TemporaryDirectory(prefix="casewise-bench-") as tmp:
        root = args.keep or Path(tmp)
        settings = Settings(home=root / "manual", embedder=args.embedder)
        log("ingest: loading the embedder and indexing the manual ...")
        start = time.perf_counter()
        embedder = load_embedder(args.embedder, runtime=args.runtime)
        load_s = time.perf_counter() - start
        first = run([manual], settings, embedder=embedder, progress=not args.json, rebuild=True)
        ingest_s = time.perf_counter() - start
        start = time.perf_counter()
        again = run([manual], settings, progress=False)  # unchanged: must not even load a model
        reingest_s = time.perf_counter() - start
        chunking = json.loads(settings.manifest_path.read_text())["chunking"]
        if again.embedded:
            log(f"error: re-ingest embedded {again.embedded} chunks; expected none")
            return 1

        searcher = open_searcher(settings, embedder=embedder, **FUSION)
        searcher.search("warm up")
        log(f"queries: {len(questions)} dev questions ...")
        small = evaluate(searcher, questions)

        # One large index per embedder: a Chroma collection holds one embedder's vectors.
        big_settings = Settings(home=root / ("large" if embedder.name == DEFAULT_EMBEDDER
                                             else f"large-{embedder.name}"))
        store = ChunkStore(big_settings, embedder.name)
        manual_chunks = searcher.store.all_chunks()
        vectors = searcher.store.embeddings([c.id for c in manual_chunks])
        # With --keep, a large index left by an earlier (possibly interrupted) run is resumed:
        # the synthetic batches are deterministic, so the ones already stored are skipped.
        done = store.count() - len(manual_chunks) if args.keep else -1
        if done < 0 or done > args.synthetic:
            store.reset()
            done = 0
        store.upsert(manual_chunks, [vectors[c.id] for c in manual_chunks])
        vocabulary = sorted({w for c in manual_chunks for w in c.text.split() if w.isalpha()})
        dim = len(next(iter(vectors.values())))
        log(f"large index: inserting {args.synthetic - done} synthetic chunks "
            f"({done} already there) ...")
        start = time.perf_counter()
        for chunks, vecs in synthetic_chunks(args.synthetic, dim, vocabulary):
            if int(chunks[-1].id.rsplit("-", 1)[1]) < done:
                continue
            store.upsert(chunks, vecs.tolist())
            log(f"  {chunks[-1].id} ({time.perf_counter() - start:.0f} s)")
        insert_s = time.perf_counter() - start
        big = HybridSearcher(store, embedder, **FUSION)
        start = time.perf_counter()
        big.search("warm up")
        bm25_build_s = time.perf_counter() - start
        large = evaluate(big, questions)
        total_large = store.count()

    result = {
        "recall_at_5": round(small["recall_at_5"], 4),
        "recall_at_10": round(small["recall_at_10"], 4),
        "mrr": round(small["mrr"], 4),
        "ingest_s": round(ingest_s, 2),
        "reingest_s": round(reingest_s, 2),
        "query_p50_ms": round(small["p50"], 1),
        "query_p95_ms": round(small["p95"], 1),
        "query_p50_ms_100k": round(large["p50"], 1),
        "query_p95_ms_100k": round(large["p95"], 1),
    }
    assert tuple(result) == KEYS
    if args.synthetic == 100_000:  # a smaller trial run must not pass for the real figures
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result))
        return 0
    rows = [
        ("machine", f"{platform.machine()} {platform.processor() or ''} "
                    f"python {platform.python_version()}".strip()),
        ("questions", f"{len(questions)} (qa_dev.jsonl; hit = page within {PAGE_TOLERANCE})"),
        ("chunks", f"{first.total_chunks} from {manual.name}"),
        ("chunking", ", ".join(f"{k}={v}" for k, v in chunking.items())),
        ("fusion", ", ".join(f"{k}={v}" for k, v in FUSION.items())),
        ("recall@5", f"{result['recall_at_5']:.3f}  (required >= 0.90)"),
        ("recall@10", f"{result['recall_at_10']:.3f}  (required >= 0.95)"),
        ("MRR@10", f"{result['mrr']:.3f}"),
        ("ingest", f"{result['ingest_s']:.1f} s (model load {load_s:.1f} s)"),
        ("load average", " / ".join(f"{x:.2f}" for x in os.getloadavg())),
        ("re-ingest (unchanged)", f"{result['reingest_s']:.2f} s, 0 chunks embedded"),
        ("query p50 / p95", f"{result['query_p50_ms']:.1f} / {result['query_p95_ms']:.1f} ms "
                            f"(p50 of the parts: query embedding {small['embed_p50']:.1f} ms, "
                            f"dense {small['dense_p50']:.1f} ms, "
                            f"BM25 {small['keyword_p50']:.1f} ms)"),
        (f"query p50 / p95 at {total_large:,} chunks",
         f"{result['query_p50_ms_100k']:.1f} / {result['query_p95_ms_100k']:.1f} ms "
         f"(parts: embedding {large['embed_p50']:.1f}, dense {large['dense_p50']:.1f}, BM25 "
         f"{large['keyword_p50']:.1f} ms; insert {insert_s:.0f} s, BM25 build "
         f"{bm25_build_s:.1f} s, recall@5 {large['recall_at_5']:.3f})"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    if args.synthetic == 100_000:
        print(f"wrote {RESULTS.relative_to(REPO)}")
    else:
        print(f"not written to {RESULTS.relative_to(REPO)}: --synthetic is not 100000")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
