import json
import os
import subprocess
import sys

import pytest

from ingest.cli import main
from retrieval.settings import DEFAULT_EMBEDDER
from tests.conftest import REPO
from tests.ingest.conftest import write_markdown


def test_help_documents_flags_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--home", "--embedder", "--chroma-url", "--prune", "--rebuild", "--chunk-size",
                 "--chunk-overlap", "--redact", "--no-redact", "--ocr", "--quiet", "--json"):
        assert flag in out
    assert "exit codes:" in out and "some files failed" in out
    assert "zendesk-export.json" in out and "--ocr on" in out  # examples of the new inputs


def test_bad_ocr_mode_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path), "--ocr", "sometimes"])
    assert exit_.value.code == 2
    assert "invalid choice: 'sometimes'" in capsys.readouterr().err


def test_module_entry_point_help_runs():
    result = subprocess.run([sys.executable, "-m", "ingest", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "python -m ingest" in result.stdout


def test_missing_and_empty_files_exit_1_with_json_summary(tmp_path, capsys):
    empty = tmp_path / "empty.md"
    empty.write_text("")
    code = main([str(tmp_path / "nope.pdf"), str(empty), "--home", str(tmp_path / "idx"),
                 "--json"])
    assert code == 1
    data = json.loads(capsys.readouterr().out)
    assert data["counts"]["failed"] == 2 and data["exit_code"] == 1
    reasons = {f["path"].rsplit("/", 1)[-1]: f["reason"] for f in data["files"]}
    assert reasons == {"nope.pdf": "does not exist", "empty.md": "empty file"}


def test_quiet_prints_only_failures_to_stderr(tmp_path, capsys):
    code = main([str(tmp_path / "nope.pdf"), "--home", str(tmp_path / "idx"), "--quiet"])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert captured.err.strip() == f"failed: {tmp_path / 'nope.pdf'}: does not exist"


def test_usage_errors_exit_2_without_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
    assert "required: PATH" in capsys.readouterr().err
    code = main(["x.md", "--chunk-size", "50", "--chunk-overlap", "60", "--home", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == "error: chunk_overlap (60) must be smaller than chunk_size (50)"


def test_embedder_mismatch_exits_2_with_one_line(tmp_path, ingest, settings, capsys):
    doc = write_markdown(tmp_path / "docs" / "guide.md")
    ingest([doc])  # built with the HashEmbedder ("hash-bow-256")
    code = main([str(doc), "--home", str(settings.home), "--embedder", "default"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: index at") and "--rebuild" in err and len(err.splitlines()) == 1


@pytest.mark.integration
def test_sample_docs_with_the_real_embedder_then_unchanged(tmp_path):
    build = subprocess.run([sys.executable, "samples/build_samples.py", "--out",
                            str(tmp_path / "docs")], cwd=REPO, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    (tmp_path / "docs" / "faq.csv").write_bytes((REPO / "samples/docs/faq.csv").read_bytes())
    cmd = [sys.executable, "-m", "ingest", str(tmp_path / "docs"), "--home",
           str(tmp_path / "idx"), "--json"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    assert data["counts"]["indexed"] == 2 and data["embedder"] == DEFAULT_EMBEDDER
    assert data["embedded"] == data["total_chunks"] >= 15 + 6  # 15 tickets, 6 pages
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    again = json.loads(second.stdout)
    assert second.returncode == 0 and again["embedded"] == 0
    assert again["counts"]["unchanged"] == 2
