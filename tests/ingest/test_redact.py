"""The one redactor (ingest and finetune): what it replaces, what manual text keeps, and
`python -m ingest --redact/--no-redact` defaults per file type."""

from collections import Counter

import pytest

import finetune.data
from ingest.cli import build_parser
from ingest.loaders import UnreadableFileError, load_file
from ingest.pipeline import run
from ingest.redact import redact
from retrieval.manifest import read_manifest
from retrieval.settings import Settings
from retrieval.store import ChunkStore
from tests.conftest import shared_data

PII = {
    "bare 10-digit phone": ("Call me on 4155550123 after six.", "Call me on [PHONE] after six."),
    "NANP with country code": ("or 14155550123", "or [PHONE]"),
    "national trunk 0": ("mobile 0301234567", "mobile [PHONE]"),
    "grouped phone": ("call +1 (555) 123-4567.", "call [PHONE]."),
    "dotted phone": ("415.555.0123", "[PHONE]"),
    "international": ("+44 20 7946 0958", "[PHONE]"),
    "email": ("mail jane.doe@example.com now", "mail [EMAIL] now"),
    "spelled email": ("write to bob at example dot com", "write to [EMAIL]"),
    "bracketed email": ("bob (at) example.com", "[EMAIL]"),
    "bracketed dots": ("bob[at]example[dot]co[dot]uk", "[EMAIL]"),
    "shouted spelled email": ("JANE AT MAIL DOT EXAMPLE DOT DE", "[EMAIL]"),
    "IBAN grouped": ("IBAN GB82 WEST 1234 5698 7654 32.", "IBAN [IBAN]."),
    "IBAN lower-case grouped": ("iban gb82 west 1234 5698 7654 32", "iban [IBAN]"),
    "IBAN lower-case contiguous": ("de89370400440532013000 please", "[IBAN] please"),
    "card": ("card 4111 1111 1111 1111 expires", "card [CARD] expires"),
}


@pytest.mark.parametrize("text,expected", PII.values(), ids=PII.keys())
def test_identifiers_are_replaced(text, expected):
    redacted, counts = redact(text)
    assert redacted == expected
    assert sum(counts.values()) == 1


MANUAL_TEXT = [
    "Model QN65Q90RAFXZA, firmware 1.2.3.4, 3840 x 2160 at 120 Hz, PIN 0000, on 2021-05-06.",
    "On 2021-05-06 10:30 the update T-KTM2AKUC-1490.3 ran; Unix time 1617235200; ref 1234567890.",
    "Settings > General > Reset, then Settings > Support > About This TV (version 1130.5).",
    "Find it at samsung.com. Tap the icon at top dot menu. Press at the dot on the screen.",
    "Open http://192.168.8.1 or use an address in the 192.168.8.x range; mask 255.255.255.0.",
    "640 x 480 60 Hz 31.469 59.940 25.175 - / -; pixel clock 273.879.750; 720 (1440) x 576i.",
    "QN65 then turn your TV back on and wait five more mins; HDMI 1-4, 100-240 V, 50/60 Hz.",
    "Serial 0A1B2C3D4E, 802.11ac, 2.4 GHz and 5 GHz, 10-20-30 sleep timer, +5 dB.",
]


@pytest.mark.parametrize("text", MANUAL_TEXT)
def test_manual_vocabulary_survives(text):
    assert redact(text) == (text, Counter())


def test_the_real_manual_and_sample_pdfs_lose_nothing():
    # Every page of a 165-page manual with specification tables, and real PDFs of many
    # producers: not one placeholder (the redactor only runs on manuals with --redact).
    for pdf in [shared_data("emanual", "smart_tv_manual.pdf"),
                *sorted(shared_data("pdf-samples").glob("*.pdf"))]:
        try:
            blocks = load_file(pdf).blocks
        except UnreadableFileError:
            continue  # encrypted or damaged samples have no text to redact
        for block in blocks:
            assert redact(block.text)[1] == Counter(), (pdf.name, block.page)


def test_finetune_uses_the_same_redactor():
    assert finetune.data.redact is redact


def test_ingest_redacts_histories_by_default_not_manuals(tmp_path, hash_embedder):
    history = tmp_path / "docs" / "history.csv"
    history.parent.mkdir()
    history.write_text("question,answer\n"
                       "My email is bob at example dot com and my phone 4155550123. Reset?,"
                       "Hold Reset for 10 seconds.\n")
    manual = tmp_path / "docs" / "manual.md"
    manual.write_text("# Support\nCall our hotline 4155550123 or mail help@example.com.\n")
    settings = Settings.resolve(home=tmp_path / "index")

    def texts() -> dict[str, str]:
        store = ChunkStore(settings, hash_embedder.name)
        return {c.source.rsplit("/", 1)[-1]: c.text + repr(c.metadata)
                for c in store.all_chunks()}

    summary = run([history.parent], settings, embedder=hash_embedder, progress=False)
    by_name = {f.path.rsplit("/", 1)[-1]: f for f in summary.files}
    assert by_name["history.csv"].redactions == {"email": 1, "phone": 1}
    assert by_name["manual.md"].redactions == {}
    indexed = texts()
    assert "bob" not in indexed["history.csv"] and "4155550123" not in indexed["history.csv"]
    assert "[EMAIL]" in indexed["history.csv"] and "[PHONE]" in indexed["history.csv"]
    assert "4155550123" in indexed["manual.md"] and "help@example.com" in indexed["manual.md"]
    assert "history.csv: 1 email, 1 phone" in summary.format_table()
    # Unchanged files with an unchanged setting are not touched again ...
    again = run([history.parent], settings, embedder=hash_embedder, progress=False)
    assert again.counts["unchanged"] == 2
    # ... a changed setting indexes them again: --redact also covers the manual.
    forced = run([history.parent], settings, embedder=hash_embedder, progress=False,
                 redact=True)
    assert {f.path.rsplit("/", 1)[-1]: f.status for f in forced.files} == {
        "history.csv": "unchanged", "manual.md": "indexed"}
    assert "4155550123" not in texts()["manual.md"]
    manifest = read_manifest(settings.manifest_path)
    assert {k.rsplit("/", 1)[-1]: v["redact"] for k, v in manifest["files"].items()} == {
        "history.csv": True, "manual.md": True}
    # --no-redact puts the history's identifiers back.
    plain = run([history.parent], settings, embedder=hash_embedder, progress=False,
                redact=False)
    assert {f.status for f in plain.files} == {"indexed"}
    assert "4155550123" in texts()["history.csv"]


def test_cli_redact_flags():
    parser = build_parser()
    assert parser.parse_args(["docs"]).redact is None
    assert parser.parse_args(["docs", "--redact"]).redact is True
    assert parser.parse_args(["docs", "--no-redact"]).redact is False
    assert "--no-redact" in parser.format_help()
