"""A damaged conversation memory (`memory.sqlite` full of random bytes): one line naming the
file, nothing touched, and `--reset-memory` keeps a copy and starts fresh (chat and ask; serve
is covered by tests/agent/test_serve.py)."""

from __future__ import annotations

import io
import os
import sqlite3

import pytest

from agent.api import Assistant, reset_memory
from agent.cli import main
from agent.db import DamagedDatabaseError
from retrieval.settings import Settings
from tests.agent.conftest import RESET, FakeSearcher, build_index
from tests.conftest import ScriptedChatModel

GOOD = "Reasoning: Passage [1] says so.\nAnswer: Hold Reset for 10 seconds.\nSources: [router_manual.pdf p.4]"
NOISE = os.urandom(16384)
REMOTE = ["--llm-url", "http://127.0.0.1:9", "--llm-model", "m"]  # never called below


@pytest.fixture(scope="module")
def index_home(tmp_path_factory):
    from retrieval.embeddings import load_embedder

    home = tmp_path_factory.mktemp("memory-damage")
    build_index(Settings.resolve(home=home), [RESET], load_embedder("default"))
    return home


@pytest.fixture
def damaged(index_home):
    path = index_home / "memory.sqlite"
    for old in index_home.glob("memory.sqlite*"):
        old.unlink()
    path.write_bytes(NOISE)
    return path


def test_the_assistant_names_the_damaged_file(tmp_path):
    path = tmp_path / "memory.sqlite"
    path.write_bytes(NOISE)
    with pytest.raises(DamagedDatabaseError) as error:
        Assistant(FakeSearcher([RESET]), ScriptedChatModel(), memory_path=path)
    message = str(error.value)
    assert message.startswith(f"conversation memory {path} is damaged (file is not a database)")
    assert "--reset-memory" in message
    assert path.read_bytes() == NOISE


def test_reset_keeps_the_file_and_its_wal(tmp_path):
    import shutil

    live = tmp_path / "live" / "memory.sqlite"
    first = Assistant(FakeSearcher([RESET]), ScriptedChatModel([GOOD]), memory_path=live,
                      min_similarity=0.3)
    first.ask("How do I reset the router to factory settings?", thread_id="kept")
    # Copy the files while the connection is open: what a killed process leaves behind, with
    # the conversation still in the -wal file.
    path = tmp_path / "memory.sqlite"
    for suffix in ("", "-wal", "-shm"):
        shutil.copy(live.with_name(live.name + suffix), path.with_name(path.name + suffix))
    first.close()
    assert path.with_name("memory.sqlite-wal").stat().st_size > 0
    kept = reset_memory(path)
    assert not path.exists() and not path.with_name("memory.sqlite-wal").exists()
    assert kept.name.startswith("memory.sqlite.") and kept.with_name(kept.name + "-wal").exists()
    with sqlite3.connect(kept) as conn:  # the moved copy still opens with its conversation
        assert conn.execute("SELECT count(*) FROM checkpoints WHERE thread_id = 'kept'"
                            ).fetchone()[0] > 0
    fresh = Assistant(FakeSearcher([RESET]), ScriptedChatModel(), memory_path=path)
    assert fresh.threads() == set()
    fresh.close()
    assert reset_memory(tmp_path / "none.sqlite") is None


def test_ask_with_a_damaged_memory_exits_2_with_one_line(damaged, capsys):
    argv = ["ask", "How do I reset the router?", "--session", "s", "--home",
            str(damaged.parent), *REMOTE]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: conversation memory {damaged} is damaged")
    assert "--reset-memory" in err and len(err.strip().splitlines()) == 1
    assert damaged.read_bytes() == NOISE


def test_chat_with_reset_memory_keeps_a_copy_and_starts_fresh(damaged, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # Ctrl-D at the first prompt
    assert main(["chat", "--home", str(damaged.parent), "--reset-memory", *REMOTE]) == 0
    kept = list(damaged.parent.glob("memory.sqlite.*.bak"))
    assert len(kept) == 1 and kept[0].read_bytes() == NOISE
    assert f"conversation memory moved aside to {kept[0]}" in capsys.readouterr().err
    with sqlite3.connect(damaged) as conn:  # the new memory is a healthy database
        assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
