"""python bench/tables.py

Ruled-table detection on retrieval: the shared Smart TV manual plus a one-page specification
sheet with a ruled table drawn column by column (`build_spec_sheet` in
`samples/build_samples.py`: the layout that turns pypdf's text of a table into a soup), indexed
with the bundled embedder through `ingest.pipeline.run`, with table detection off (pypdf's
text, as before) and on.

Questions written for this benchmark (none from the dev set; no shared question is about a
table page): three about rows of the sheet, three about the manual's resolution tables
(pages 131-133, flattened text without rules in this PDF). For each: the rank of the first hit
on the right page (fused search, `bench/retrieval.py`'s fusion) and, for the sheet, whether the
retrieved chunk pairs the asked model with its value: the value appears after the model name
before the next model name or the next bare column header (in pypdf's soup a column header
follows the model names; a kept row labels its cells `Header: value`). Writes
`bench/results/tables.json`.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import ingest.loaders  # noqa: E402
from bench.retrieval import DATA, FUSION  # noqa: E402
from ingest.pipeline import run  # noqa: E402
from retrieval.embeddings import load_embedder  # noqa: E402
from retrieval.search import open_searcher  # noqa: E402
from retrieval.settings import Settings  # noqa: E402
sys.path.insert(0, str(REPO / "samples"))
from build_samples import build_spec_sheet  # noqa: E402

RESULTS = REPO / "bench" / "results" / "tables.json"
SHEET = [  # (question, model, value on its row)
    ("How much does the QN65Q80 weigh?", "QN65Q80", "25.1 kg"),
    ("What is the power consumption of the QN75Q80?", "QN75Q80", "182 W"),
    ("What screen size is the QN55Q80?", "QN55Q80", "55 in"),
]
HEADERS = ("Screen size", "Power consumption", "Weight")
MANUAL = [  # (question, gold page)
    ("Which resolutions are supported for an IBM PC connected to the TV?", 131),
    ("What is the horizontal frequency of 1024 x 768 at 60 Hz for a computer?", 132),
    ("Which CTA-861 resolutions does the TV support?", 133),
]


def _row_of(text: str, model: str) -> str:
    """What follows `model` up to the next model name or bare column header."""
    if model not in text:
        return ""
    rest = text.split(model, 1)[1]
    ends = [m for _, m, _ in SHEET] + ["Model:"]
    ends += [f"{h} " for h in HEADERS]  # "Weight 17.2 kg" (bare) ends it, "Weight: " does not
    cut = min((i for e in ends if (i := rest.find(e)) >= 0), default=len(rest))
    return rest[:cut]


def measure(detect: bool, embedder, sheet: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="casewise-tables-") as tmp, \
            mock.patch.object(ingest.loaders, "tabular_pages",
                              ingest.loaders.tabular_pages if detect else lambda pages: []):
        settings = Settings(home=Path(tmp) / "index")
        start = time.perf_counter()
        summary = run([DATA / "smart_tv_manual.pdf", sheet], settings, embedder=embedder,
                      progress=False, rebuild=True)
        ingest_s = time.perf_counter() - start
        searcher = open_searcher(settings, embedder=embedder, **FUSION)
        rows = []
        for question, model, value in SHEET:
            hits = searcher.search(question, k=10)
            rank = next((r for r, h in enumerate(hits, 1) if h.chunk.source.endswith("spec.pdf")),
                        None)
            text = hits[rank - 1].chunk.text if rank else ""
            rows.append({"question": question, "rank": rank,
                         "model_paired_with_value": value in _row_of(text, model)})
        manual = []
        for question, page in MANUAL:
            hits = searcher.search(question, k=10)
            manual.append({"question": question, "page": page, "rank": next(
                (r for r, h in enumerate(hits, 1) if h.chunk.page == page
                 and h.chunk.source.endswith("smart_tv_manual.pdf")), None)})
    return {"table_detection": detect, "tables_found": sum(f.tables for f in summary.files),
            "ingest_s": round(ingest_s, 2), "sheet": rows, "manual": manual}


def main() -> int:
    if not (DATA / "smart_tv_manual.pdf").is_file():
        print("error: the benchmark needs ../shared/data/emanual/", file=sys.stderr)
        return 2
    embedder = load_embedder("default")
    with tempfile.TemporaryDirectory() as tmp:
        sheet = build_spec_sheet(Path(tmp) / "spec.pdf")
        results = [measure(False, embedder, sheet), measure(True, embedder, sheet)]
    for result in results:
        print(json.dumps(result))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
