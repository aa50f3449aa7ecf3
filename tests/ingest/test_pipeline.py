import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from filelock import FileLock

from ingest.chunking import ChunkingConfig
from ingest.pipeline import TEST_BATCH_SLEEP_ENV, IngestLockedError, run
from retrieval.errors import IndexSettingsMismatchError
from retrieval.manifest import read_manifest
from retrieval.store import ChunkStore
from tests.conftest import REPO, HashEmbedder, shared_data
from tests.ingest.conftest import write_jsonl, write_markdown


def _store(settings, embedder_name="hash-bow-256") -> ChunkStore:
    return ChunkStore(settings, embedder_name)


def _assert_consistent(settings, embedder_name="hash-bow-256") -> dict:
    """Store and manifest agree exactly: no orphans, nothing missing, no duplicate chunks."""
    manifest = read_manifest(settings.manifest_path)
    owned = [i for entry in manifest["files"].values() for i in entry["chunk_ids"]]
    assert len(owned) == len(set(owned))
    store = _store(settings, embedder_name)
    assert store.ids() == set(owned)
    chunks = store.all_chunks()
    positions = [(c.source, c.chunk_index) for c in chunks]
    assert len(positions) == len(set(positions))
    return manifest


def test_index_docs_and_faq_with_citation_metadata(ingest, settings, router_pdf, tmp_path):
    faq = REPO / "samples" / "docs" / "faq.csv"
    summary = ingest([router_pdf.parent, faq])
    assert summary.counts["indexed"] == 2 and summary.exit_code == 0
    manifest = _assert_consistent(settings)
    assert manifest["embedder"] == "hash-bow-256"
    assert manifest["chunking"] == ChunkingConfig().to_dict()
    assert manifest["settings"]["home"] == str(settings.home)
    assert {"version", "files", "updated_at"} <= manifest.keys()
    chunks = _store(settings).all_chunks()
    reset = [c for c in chunks if c.type == "doc" and "recessed Reset button" in c.text]
    # The page's short sections are joined; the chunk is labelled with their common chapter.
    assert [(c.page, c.section) for c in reset] == [(6, "Troubleshooting and Reset")]
    assert {c.page for c in chunks if c.type == "doc"} == {1, 2, 3, 4, 5, 6}
    assert reset[0].doc_hash == manifest["files"][reset[0].source]["hash"]
    faqs = [c for c in chunks if c.type == "faq"]
    assert len(faqs) == 15 and all(c.metadata["faq_id"].startswith("T-") for c in faqs)


def test_rerun_embeds_nothing_and_says_so(ingest, settings, router_pdf, hash_embedder):
    ingest([router_pdf])
    before = hash_embedder.texts_embedded
    assert before > 0
    summary = ingest([router_pdf])
    assert hash_embedder.texts_embedded == before
    assert summary.embedded == 0 and summary.counts["unchanged"] == 1
    assert "nothing to embed" in summary.format_table()
    _assert_consistent(settings)


def test_changed_file_replaces_its_chunks_and_embeds_only_new_ones(
        ingest, settings, tmp_path, hash_embedder):
    doc = write_markdown(tmp_path / "docs" / "guide.md", sections=4)
    ingest([doc])
    # Sources are relative to the directory holding the index home (tmp_path here).
    old_ids = set(read_manifest(settings.manifest_path)["files"]["docs/guide.md"]["chunk_ids"])
    text = doc.read_text().replace("word3x5 ", "changed ")
    doc.write_text(text)
    embedded_before = hash_embedder.texts_embedded
    summary = ingest([doc])
    assert summary.counts["indexed"] == 1 and summary.deleted == 1
    assert hash_embedder.texts_embedded - embedded_before == 1
    manifest = _assert_consistent(settings)
    new_ids = set(manifest["files"]["docs/guide.md"]["chunk_ids"])
    assert len(old_ids - new_ids) == 1 and len(new_ids - old_ids) == 1
    new_hash = manifest["files"]["docs/guide.md"]["hash"]
    assert {c.doc_hash for c in _store(settings).all_chunks()} == {new_hash}
    assert any("changed" in c.text for c in _store(settings).all_chunks())


def test_prune_removes_chunks_of_deleted_files_only_when_asked(ingest, settings, tmp_path):
    keep = write_markdown(tmp_path / "docs" / "keep.md", tag="k")
    gone = write_markdown(tmp_path / "docs" / "gone.md", tag="g")
    ingest([tmp_path / "docs"])
    gone.unlink()
    summary = ingest([tmp_path / "docs"])
    assert any("no longer exist" in n and "--prune" in n for n in summary.notes)
    assert any(c.source.endswith("gone.md") for c in _store(settings).all_chunks())
    summary = ingest([tmp_path / "docs"], prune=True)
    assert [f.status for f in summary.files if f.path.endswith("gone.md")] == ["pruned"]
    manifest = _assert_consistent(settings)
    assert list(manifest["files"]) == ["docs/keep.md"]
    assert {c.source for c in _store(settings).all_chunks()} == {"docs/keep.md"}
    assert keep.exists()


def test_other_embedder_or_chunking_needs_rebuild(ingest, settings, tmp_path):
    doc = write_markdown(tmp_path / "docs" / "guide.md")
    ingest([doc])
    other = HashEmbedder(dim=128)
    with pytest.raises(IndexSettingsMismatchError, match=r"built with embedder 'hash-bow-256', this "
                                                    r"run uses 'hash-bow-128'.*--rebuild"):
        ingest([doc], embedder=other)
    with pytest.raises(IndexSettingsMismatchError, match="--rebuild"):
        ingest([doc], chunking=ChunkingConfig(chunk_size=50, chunk_overlap=10))
    summary = ingest([doc], embedder=other, rebuild=True)
    assert summary.counts["indexed"] == 1 and summary.embedded == other.texts_embedded
    manifest = _assert_consistent(settings, "hash-bow-128")
    assert manifest["embedder"] == "hash-bow-128"
    summary = ingest([doc], embedder=other, rebuild=True,
                     chunking=ChunkingConfig(chunk_size=30, chunk_overlap=5))
    manifest = _assert_consistent(settings, "hash-bow-128")
    assert manifest["chunking"]["chunk_size"] == 30
    assert summary.total_chunks > 3
    # Without flags, later runs keep the index's own chunking.
    assert ingest([doc], embedder=other).counts["unchanged"] == 1


class _RetrainedEmbedder(HashEmbedder):
    """The same name and dimension as `HashEmbedder()`, other weights: a salted hash."""

    def _vec(self, text):
        return super()._vec("retrained " + " ".join(w + "x" for w in text.split()))


def test_an_embedder_whose_weights_changed_under_its_name_is_refused(ingest, settings,
                                                                      tmp_path):
    from retrieval.manifest import PROBE_TEXT, write_manifest
    from retrieval.search import open_searcher

    doc = write_markdown(tmp_path / "docs" / "guide.md")
    ingest([doc])
    manifest = _assert_consistent(settings)
    assert manifest["embedder_probe"] == pytest.approx(HashEmbedder()._vec(PROBE_TEXT), abs=1e-6)
    before = settings.manifest_path.read_bytes()
    count = _store(settings).count()
    retrained = _RetrainedEmbedder()
    more = write_markdown(tmp_path / "docs" / "more.md", tag="m")
    with pytest.raises(IndexSettingsMismatchError,
                       match=r"embedder 'hash-bow-256' no longer embeds as it did when this index "
                             r"was built \(a fixed probe sentence now embeds at cosine .* to the "
                             r"vector recorded .*--rebuild"):
        ingest([doc, more], embedder=retrained)
    assert settings.manifest_path.read_bytes() == before and _store(settings).count() == count
    with pytest.raises(IndexSettingsMismatchError, match="no longer embeds.*ingest --rebuild"):
        open_searcher(settings, embedder=retrained)
    assert open_searcher(settings, embedder=HashEmbedder()).search("guide", k=1)
    # An index from before the probe: nothing to check until an ingest that embeds records it.
    del manifest["embedder_probe"]
    write_manifest(settings.manifest_path, manifest)
    assert open_searcher(settings, embedder=retrained).search("guide", k=1)
    ingest([doc])  # nothing changed: nothing embedded, no embedder loaded, nothing recorded
    assert "embedder_probe" not in read_manifest(settings.manifest_path)
    ingest([doc, more])
    assert read_manifest(settings.manifest_path)["embedder_probe"]
    with pytest.raises(IndexSettingsMismatchError, match="no longer embeds"):
        open_searcher(settings, embedder=retrained)


def test_bad_inputs_are_reported_and_the_rest_indexed(ingest, settings, tmp_path):
    pdfs = shared_data("pdf-samples")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.txt").write_bytes(b"")
    (bad / "fake.pdf").write_bytes(b"GIF89a not a pdf at all")
    (bad / "tickets.csv").write_text("subject,body\na,b\n")
    write_jsonl(bad / "history.jsonl", [{"question": "Q?", "answer": "A."}, "{oops",
                                        {"question": "Q2?", "answer": "A2."}])
    summary = ingest([pdfs, bad, tmp_path / "missing.pdf"])
    by_name = {f.path.rsplit("/", 1)[-1]: f for f in summary.files}
    assert by_name["libreoffice-writer-password.pdf"].reason == "encrypted (password required)"
    assert by_name["unreadablemetadata.pdf"].reason.startswith("unreadable: ")
    assert by_name["empty.txt"].reason == "empty file"
    assert by_name["fake.pdf"].reason.startswith("not a PDF")
    assert "missing required column" in by_name["tickets.csv"].reason
    assert by_name["missing.pdf"].reason == "does not exist"
    history = by_name["history.jsonl"]
    assert history.status == "indexed" and history.chunks == 2
    assert history.warnings[0].startswith("line 2: malformed JSON")
    assert by_name["files.json"].status == "skipped"
    image = by_name["imagemagick-images.pdf"]
    assert image.status == "indexed" and "page 4: no text layer" in image.warnings[0]
    failed = {n for n, f in by_name.items() if f.status == "failed"}
    assert failed == {"libreoffice-writer-password.pdf", "unreadablemetadata.pdf", "empty.txt",
                      "fake.pdf", "tickets.csv", "missing.pdf"}
    readable = [p.name for p in pdfs.glob("*.pdf")
                if p.name not in ("libreoffice-writer-password.pdf", "unreadablemetadata.pdf")]
    assert all(by_name[n].status == "indexed" and by_name[n].chunks > 0 for n in readable)
    assert summary.exit_code == 1
    table = summary.format_table()
    assert "encrypted (password required)" in table and "no text layer" in table
    _assert_consistent(settings)


def test_start_of_run_repairs_orphans_and_incomplete_files(ingest, settings, tmp_path):
    doc = write_markdown(tmp_path / "docs" / "guide.md", sections=3)
    ingest([doc])
    store = _store(settings)
    orphan = store.all_chunks()[0]
    store.upsert([type(orphan)(**{**orphan.__dict__, "id": "orphan-id"})], [[0.1] * 256])
    lost = sorted(store.ids() - {"orphan-id"})[0]
    store.delete([lost])
    summary = ingest([doc])
    assert summary.repaired == 1 and summary.counts["indexed"] == 1
    assert any("interrupted" in n for n in summary.notes)
    _assert_consistent(settings)
    assert "orphan-id" not in _store(settings).ids()


RUNNER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    from tests.conftest import HashEmbedder
    from ingest.pipeline import run
    from retrieval.settings import Settings

    class Reporting(HashEmbedder):
        def embed_documents(self, texts):
            print("batch", self.calls + 1, flush=True)  # tells the test how far the run got
            return super().embed_documents(texts)

    summary = run(sys.argv[2:], Settings.resolve(home=sys.argv[1]), embedder=Reporting(),
                  progress=False, batch_size=2)
    print("done", summary.embedded)
""")


def _start_runner(tmp_path, settings, paths, sleep: float) -> subprocess.Popen:
    script = tmp_path / "runner.py"
    script.write_text(RUNNER.format(repo=str(REPO)))
    env = {**os.environ, TEST_BATCH_SLEEP_ENV: str(sleep)}
    return subprocess.Popen([sys.executable, str(script), str(settings.home), *map(str, paths)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _kill_at_batch(proc: subprocess.Popen, batch: int) -> None:
    """SIGKILL the runner once it reports embedding batch `batch`."""
    for line in proc.stdout:
        if line.strip() == f"batch {batch}":
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def _wait_for_manifest_entry(settings, name: str, proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if settings.manifest_path.exists() and any(
                k.endswith(name) for k in read_manifest(settings.manifest_path)["files"]):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"{name} never appeared in the manifest")


def test_sigkill_midway_then_rerun_gives_complete_index_without_duplicates(
        tmp_path, settings, ingest):
    docs = tmp_path / "docs"
    write_markdown(docs / "a_small.md", sections=2, tag="s")
    write_markdown(docs / "b_big.md", sections=20, words=400, tag="b")
    proc = _start_runner(tmp_path, settings, [docs], sleep=0.1)
    # a_small.md is one batch; kill while b_big.md (40 chunks, 20 batches) is half written.
    _kill_at_batch(proc, 8)
    manifest = read_manifest(settings.manifest_path)
    assert not any(k.endswith("b_big.md") for k in manifest["files"]), "killed too late"
    owned = {i for e in manifest["files"].values() for i in e["chunk_ids"]}
    left = _store(settings).ids()
    assert left - owned, "the kill left no partial writes: the test did not test a crash"

    summary = ingest([docs])
    assert summary.repaired == len(left - owned)
    manifest = _assert_consistent(settings)
    reference = settings.__class__.resolve(home=tmp_path / "reference")
    ingest([docs], settings=reference)
    assert _store(settings).ids() == _store(reference).ids()
    assert len(manifest["files"]) == 2


def test_a_run_killed_after_a_clean_one_leaves_no_index_state(tmp_path, settings, ingest):
    """The index-state record vouches for the store; a killed writer must not leave it."""
    docs = tmp_path / "docs"
    write_markdown(docs / "a_small.md", sections=2, tag="s")
    ingest([docs])
    assert settings.state_path.is_file()
    write_markdown(docs / "b_big.md", sections=20, words=400, tag="b")
    _kill_at_batch(_start_runner(tmp_path, settings, [docs], sleep=0.1), 6)
    assert not settings.state_path.exists()
    owned = {i for e in read_manifest(settings.manifest_path)["files"].values()
             for i in e["chunk_ids"]}
    assert _store(settings).ids() - owned, "the kill left no partial writes"
    summary = ingest([docs])
    assert summary.repaired > 0 and summary.counts == {
        "indexed": 1, "unchanged": 1, "skipped": 0, "failed": 0, "pruned": 0}
    _assert_consistent(settings)
    assert settings.state_path.is_file()


def test_second_ingest_waits_then_stops_with_a_clear_message(tmp_path, settings, ingest):
    docs = tmp_path / "docs"
    write_markdown(docs / "a_small.md", sections=2, tag="s")
    write_markdown(docs / "b_big.md", sections=20, words=400, tag="b")
    proc = _start_runner(tmp_path, settings, [docs], sleep=0.1)
    _wait_for_manifest_entry(settings, "a_small.md", proc)
    with pytest.raises(IngestLockedError) as err:
        ingest([docs], lock_timeout=0.3)
    assert str(err.value) == (f"another ingest is running on {settings.home} (lock "
                              f"{settings.lock_path}); wait for it to finish and run again")
    out, errors = proc.communicate(timeout=60)
    assert proc.returncode == 0, errors
    summary = ingest([docs])
    assert summary.counts["unchanged"] == 2 and summary.embedded == 0
    _assert_consistent(settings)


def test_lock_held_in_process_blocks_a_run(settings, ingest, tmp_path):
    doc = write_markdown(tmp_path / "guide.md")
    settings.home.mkdir(parents=True)
    with FileLock(str(settings.lock_path)):
        with pytest.raises(IngestLockedError, match="another ingest is running"):
            ingest([doc], lock_timeout=0.1)
    assert ingest([doc]).counts["indexed"] == 1


def test_an_index_home_inside_the_documents_is_not_indexed(tmp_path, hash_embedder):
    from retrieval.settings import Settings

    docs = tmp_path / "docs"
    write_markdown(docs / "guide.md")
    inside = Settings.resolve(home=docs / "index")
    run([docs], inside, embedder=hash_embedder, progress=False)
    summary = run([docs], inside, embedder=hash_embedder, progress=False)
    assert [f.path for f in summary.files] == ["guide.md"]


def test_rebuild_works_even_without_a_manifest(ingest, settings, tmp_path):
    doc = write_markdown(tmp_path / "docs" / "guide.md")
    ingest([doc])
    settings.manifest_path.unlink()
    other = HashEmbedder(dim=128)
    with pytest.raises(IndexSettingsMismatchError):  # the collection itself knows its embedder
        ingest([doc], embedder=other)
    summary = ingest([doc], embedder=other, rebuild=True)
    assert summary.counts["indexed"] == 1
    _assert_consistent(settings, "hash-bow-128")


def test_a_text_repeated_in_a_file_is_embedded_once(ingest, settings, tmp_path, hash_embedder):
    """The same safety notice on two pages: one model call for it, the same vector twice."""
    notice = " ".join(f"notice{w}" for w in range(260))
    doc = tmp_path / "docs" / "repeats.md"
    doc.parent.mkdir(parents=True)
    doc.write_text(f"# Guide\n\n## Safety\n\n{notice}\n\n## Setup\n\n"
                   + " ".join(f"setup{w}" for w in range(260)) + f"\n\n## Safety\n\n{notice}\n")
    summary = ingest([doc], batch_size=2)
    chunks = _store(settings).all_chunks()
    texts = [c.text for c in chunks]
    assert summary.embedded == len(chunks) == 3 and len(set(texts)) == 2
    assert hash_embedder.texts_embedded == 2
    vectors = _store(settings).embeddings([c.id for c in chunks])
    twins = [c.id for c in chunks if "notice0" in c.text]
    assert len(twins) == 2 and vectors[twins[0]] == vectors[twins[1]]
    _assert_consistent(settings)
