"""python bench/chunk_window.py

Chunks versus the embedder's input window on the shared Smart TV manual: all-MiniLM-L6-v2
truncates its input at 256 word pieces, the default chunk is up to 350 words. For four ways of
chunking and embedding, index `../shared/data/emanual/smart_tv_manual.pdf` through
`ingest.pipeline.run` and ask the dev questions of `qa_dev.jsonl` (same hit rule and fusion as
`bench/retrieval.py`), with the fused searcher and with dense search alone:

1. the default chunks, truncated by the model (what ingest does);
2. the default chunks, each vector the normalised mean of its 256-piece windows (stride 32);
3. chunks of up to 200 words (overlap 30, short sections joined below 150);
4. chunks of up to 180 words (overlap 30, joined below 100).

Writes `bench/results/chunk_window.json` and prints one JSON object per variant.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.retrieval import DATA, FUSION, evaluate  # noqa: E402
from ingest.chunking import ChunkingConfig  # noqa: E402
from ingest.pipeline import run  # noqa: E402
from retrieval.embeddings import load_embedder  # noqa: E402
from retrieval.search import open_searcher  # noqa: E402
from retrieval.settings import Settings  # noqa: E402
from retrieval.store import ChunkStore  # noqa: E402

RESULTS = REPO / "bench" / "results" / "chunk_window.json"


class WindowMeanEmbedder:
    """Embeds a long passage as the normalised mean of its windows that fit the model."""

    def __init__(self, inner, stride: int = 32) -> None:
        self.inner, self.name, self.stride = inner, inner.name, stride
        # Offsets come from the model's own tokenizer (a benchmark may reach inside).
        self.tokenizer = inner._model.tokenizer
        self.size = inner.max_seq_length - 2  # room for [CLS] and [SEP]

    def embed_query(self, text: str) -> list[float]:
        return self.inner.embed_query(text)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        pieces, owner = [], []
        for i, text in enumerate(texts):
            offsets = self.tokenizer(text, add_special_tokens=False,
                                     return_offsets_mapping=True, verbose=False)["offset_mapping"]
            start = 0
            while True:
                end = min(start + self.size, len(offsets))
                pieces.append(text[offsets[start][0]:offsets[end - 1][1]] if offsets else text)
                owner.append(i)
                if end >= len(offsets):
                    break
                start = end - self.stride
        vectors = np.asarray(self.inner.embed_documents(pieces))
        out = np.zeros((len(texts), vectors.shape[1]))
        for vector, i in zip(vectors, owner, strict=True):
            out[i] += vector
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out.tolist()


def measure(label: str, chunking: ChunkingConfig, embedder, base, questions) -> dict:
    with tempfile.TemporaryDirectory(prefix="casewise-window-") as tmp:
        settings = Settings(home=Path(tmp) / "index")
        start = time.perf_counter()
        run([DATA / "smart_tv_manual.pdf"], settings, embedder=embedder, progress=False,
            rebuild=True, chunking=chunking)
        ingest_s = time.perf_counter() - start
        chunks = ChunkStore(settings, base.name).all_chunks()
        pieces = base.token_counts([c.text for c in chunks])
        fused = open_searcher(settings, embedder=base, **FUSION)
        fused.search("warm up")
        both = evaluate(fused, questions)
        dense = evaluate(open_searcher(settings, embedder=base, k_rrf=FUSION["k_rrf"],
                                       keyword_weight=0.0), questions)
    return {
        "label": label, "chunks": len(chunks),
        "over_window": sum(n > base.max_seq_length for n in pieces),
        "pieces_p50": int(np.median(pieces)), "pieces_max": max(pieces),
        "ingest_s": round(ingest_s, 1),
        "recall_at_5": round(both["recall_at_5"], 4),
        "recall_at_10": round(both["recall_at_10"], 4),
        "mrr": round(both["mrr"], 4),
        "dense_recall_at_5": round(dense["recall_at_5"], 4), "dense_mrr": round(dense["mrr"], 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Chunk size versus the embedder's window.")
    parser.parse_args(argv)
    qa = DATA / "qa_dev.jsonl"
    if not qa.is_file():
        print(f"error: {qa} not found: the benchmark needs ../shared/data/emanual/",
              file=sys.stderr)
        return 2
    questions = [json.loads(line) for line in qa.read_text().splitlines() if line.strip()]
    questions = [q for q in questions if q.get("answerable", True) and q.get("page")]
    base = load_embedder("default")
    default = ChunkingConfig()
    variants = [
        ("default (up to 350 words), truncated by the model", default, base),
        ("default, vector = mean of 256-piece windows", default, WindowMeanEmbedder(base)),
        ("up to 200 words, truncated", ChunkingConfig(200, 30, 150), base),
        ("up to 180 words, truncated", ChunkingConfig(180, 30, 100), base),
    ]
    results = []
    for label, chunking, embedder in variants:
        results.append(measure(label, chunking, embedder, base, questions))
        print(json.dumps(results[-1]), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
