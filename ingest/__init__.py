"""Ingest: load PDFs, ticket histories, Markdown and text; chunk them; index them in Chroma.

`python -m ingest PATH...` is the entry point (`ingest.cli`); `ingest.pipeline.run` is the
library call behind it. The readers other packages use live here too: `ingest.loaders.read_faq`
(ticket histories and help-desk exports, `ingest.exports`), `ingest.loaders.read_jsonl` (every
JSON Lines file), and `ingest.redact` (customers' identifiers). Scanned pages are read by
`ingest.ocr`, ruled tables by `ingest.tables`.
"""
