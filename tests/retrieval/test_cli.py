import json
import subprocess
import sys

import pytest

from retrieval.cli import main
from retrieval.embeddings import load_embedder
from retrieval.settings import Settings
from retrieval.store import ChunkStore

from .conftest import REPO_ROOT, make_chunks, write_manifest


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("-k", "--type", "--source", "--home", "--chroma-url", "--json"):
        assert option in out


def test_missing_index_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "retrieval", "reset", "--home", str(tmp_path / "none")],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: no index at {tmp_path / 'none'}: run `python -m ingest docs/` first"
    ]
    assert "Traceback" not in result.stderr


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert main(["reset", "-k", "0", "--home", str(tmp_path)]) == 2
    assert main(["reset", "--chroma-url", "localhost:8000", "--home", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "-k (0)" in err and "chroma_url" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["reset", "--type", "ticket"])
    assert exit_info.value.code == 2


@pytest.fixture(scope="module")
def minilm_index(tmp_path_factory):
    """A small index built with the real embedder through ChunkStore, plus its manifest."""
    settings = Settings(home=tmp_path_factory.mktemp("cli") / "index")
    embedder = load_embedder("default")
    chunks = make_chunks()
    ChunkStore(settings, embedder.name).upsert(
        chunks, embedder.embed_documents([c.text for c in chunks])
    )
    write_manifest(settings, embedder.name)
    return settings


@pytest.mark.integration
def test_real_query_prints_cited_passages(minilm_index, capsys):
    assert main(["How do I restore factory settings?", "-k", "2",
                 "--home", str(minilm_index.home)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1. [")
    assert "[manual.pdf p.3]  § Factory reset" in out or "[faq.csv p.3]" in out
    assert "similarity" in out and "dense #" in out
    assert "2. [" in out and "3. [" not in out


@pytest.mark.integration
def test_real_query_json_with_filters(minilm_index, capsys):
    assert main(["wifi password", "--json", "--type", "doc", "--source", "manual.pdf",
                 "--home", str(minilm_index.home)]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["citation"] == "manual.pdf p.4"
    assert {h["source"] for h in hits} == {"manual.pdf"}
    assert all(h["similarity"] is not None for h in hits)
    assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))


@pytest.mark.integration
def test_an_index_whose_embedder_weights_changed_is_refused(minilm_index, tmp_path, capsys):
    import shutil

    from retrieval.manifest import embedder_probe

    home = tmp_path / "index"
    shutil.copytree(minilm_index.home, home)
    path = home / "manifest.json"
    manifest = json.loads(path.read_text())
    probe = embedder_probe(load_embedder("default"))
    # What a package upgrade that changed the bundled weights would leave: the index's probe
    # vector no longer the one today's model gives (here: its opposite).
    path.write_text(json.dumps({**manifest, "embedder_probe": [-x for x in probe]}))
    assert main(["How do I restore factory settings?", "--home", str(home)]) == 2
    err = capsys.readouterr().err
    assert "embedder 'default' no longer embeds as it did when this index was built" in err
    assert "cosine -1.000" in err and "python -m ingest --rebuild" in err
    assert "Traceback" not in err
    path.write_text(json.dumps({**manifest, "embedder_probe": probe}))
    assert main(["How do I restore factory settings?", "--home", str(home)]) == 0
