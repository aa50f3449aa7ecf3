"""Retrieval: embeddings, the Chroma store and hybrid (dense + BM25) search with citations.

This package is the leaf of the dependency graph: it imports nothing from the other casewise
packages.
"""
