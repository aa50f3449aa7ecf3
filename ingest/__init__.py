"""Ingest: load PDFs, FAQ/ticket histories, Markdown and text; chunk them; index them in Chroma.

`python -m ingest PATH...` is the entry point (`ingest.cli`); `ingest.pipeline.run` is the
library call behind it.
"""
