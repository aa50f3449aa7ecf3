"""Crash test: SIGKILL a loaded server, restart it on the same files, lose nothing it
acknowledged (bench/serve.py reports the same figures for the manual's index)."""

from __future__ import annotations

import pytest

from bench.serve import crash_test
from retrieval.settings import Settings
from tests.agent.conftest import FAQ, LIGHTS, RESET, WIFI, build_index

QUESTIONS = ["How do I reset the router to factory settings?",
             "How do I change the Wi-Fi password?", "How do I turn off the status lights?"]


@pytest.mark.integration
def test_sigkill_mid_load_loses_no_acknowledged_feedback_and_keeps_sessions(tmp_path):
    from retrieval.embeddings import load_embedder

    home = tmp_path / "home"
    build_index(Settings.resolve(home=home), [RESET, LIGHTS, WIFI, FAQ], load_embedder("default"))
    figures = crash_test(home, QUESTIONS, clients=8, requests=2000, kill_after=40)
    assert figures["acked_feedback"] >= 40 and figures["errors_before_kill"] == 0, figures
    # Requests were in flight at the kill, not finished: the load was cut, not drained.
    assert figures["acked_feedback"] < 2000
    assert figures["lost_feedback"] == 0, figures
    assert figures["integrity"] == {"memory.sqlite": "ok", "feedback.sqlite": "ok"}
    assert figures["sessions"] == 8 and figures["sessions_intact"] == 8, figures
    assert figures["answers_after_restart"] is True
