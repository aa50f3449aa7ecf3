import json
from pathlib import Path

import pytest

from ingest.loaders import (
    NO_TEXT_LAYER,
    NoTextError,
    UnreadableFileError,
    clean_pages,
    heading_sections,
    load_file,
)
from tests.conftest import shared_data
from tests.ingest.conftest import write_jsonl


def _pdf_samples() -> list[tuple[Path, dict]]:
    folder = shared_data("pdf-samples")
    listed = json.loads((folder / "files.json").read_text())["data"]
    meta = {Path(d["path"]).name: d for d in listed}
    return [(p, meta[p.name]) for p in sorted(folder.glob("*.pdf"))]


def test_router_manual_sections_come_from_the_outline_and_pages_are_exact(router_pdf):
    loaded = load_file(router_pdf)
    assert loaded.type == "doc" and loaded.pages == 6 and loaded.warnings == []
    reset = [b for b in loaded.blocks if "recessed Reset button" in b.text]
    assert len(reset) == 1
    assert reset[0].page == 6
    assert reset[0].section == "Troubleshooting and Reset > Factory reset"
    # The nested title is matched as its own line, not inside the chapter heading above it.
    guest = next(b for b in loaded.blocks if b.section.endswith("> Guest network"))
    assert guest.text.startswith("Guest network") and guest.page == 4
    # The running footer is not content.
    assert not any("User Manual - page" in b.text for b in loaded.blocks)


def test_every_pdf_sample_is_indexed_or_reported_with_its_reason():
    samples = _pdf_samples()
    assert len(samples) >= 10
    outcomes = {}
    for path, meta in samples:
        try:
            loaded = load_file(path)
        except NoTextError as e:
            outcomes[path.name] = ("skipped", e.reason)
            continue
        except UnreadableFileError as e:
            assert str(path) in str(e)
            outcomes[path.name] = ("failed", e.reason)
            continue
        assert loaded.blocks, path.name
        assert all(1 <= b.page <= meta["pages"] for b in loaded.blocks), path.name
        outcomes[path.name] = ("indexed", loaded.warnings)
    encrypted = [p.name for p, m in samples if m["encrypted"]]
    assert encrypted
    for name in encrypted:
        assert outcomes[name] == ("failed", "encrypted (password required)")
    status, reason = outcomes["unreadablemetadata.pdf"]
    assert status == "failed" and reason == "unreadable: Invalid object in /Pages"
    status, warnings = outcomes["imagemagick-images.pdf"]
    assert status == "indexed"
    assert warnings == [f"page 4: {NO_TEXT_LAYER}", f"page 5: {NO_TEXT_LAYER}"]
    failed = {n for n, (s, _) in outcomes.items() if s != "indexed"}
    assert failed == set(encrypted) | {"unreadablemetadata.pdf"}


def test_right_to_left_text_and_outlines_from_real_producers():
    loaded = load_file(shared_data("pdf-samples", "habibi.pdf"))
    assert "habibi" in loaded.blocks[0].text and "حَبيبي" in loaded.blocks[0].text
    outline = load_file(shared_data("pdf-samples", "pdflatex-outline.pdf"))
    assert {"Foo", "Bar", "Baz"} <= {b.section for b in outline.blocks}
    mistitled = load_file(shared_data("pdf-samples", "mistitled_outlines_example.pdf"))
    assert any("mistitled outline" in w for w in mistitled.warnings)
    assert {b.page for b in mistitled.blocks} == {1, 2, 3, 4}


def test_empty_file_and_non_pdf_bytes_named_pdf(tmp_path):
    empty = tmp_path / "empty.pdf"
    empty.write_bytes(b"")
    with pytest.raises(UnreadableFileError, match="empty file") as err:
        load_file(empty)
    assert str(empty) in str(err.value)
    fake = tmp_path / "fake.pdf"
    fake.write_bytes(b"PK\x03\x04 this is a zip, not a pdf")
    with pytest.raises(UnreadableFileError, match=r"not a PDF \(no %PDF header"):
        load_file(fake)
    truncated = tmp_path / "truncated.pdf"
    truncated.write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog")
    with pytest.raises(UnreadableFileError, match="^.*unreadable: "):
        load_file(truncated)


def test_csv_without_question_answer_columns_names_file_and_columns(tmp_path):
    bad = tmp_path / "tickets.csv"
    bad.write_text("subject,body\nhello,world\n")
    with pytest.raises(UnreadableFileError) as err:
        load_file(bad)
    message = str(err.value)
    assert str(bad) in message
    assert "question, answer" in message and "found: subject, body" in message


def test_csv_rows_keep_optional_and_extra_columns(tmp_path):
    good = tmp_path / "faq.csv"
    good.write_text("ID,Question,Answer,section,page,product\n"
                    "T1,How to reset?,Hold the button.,Reset,6,AX3000\n"
                    "T2,,No question here,,,\n")
    loaded = load_file(good)
    assert loaded.type == "faq" and len(loaded.blocks) == 1
    block = loaded.blocks[0]
    assert block.text == "Question: How to reset?\nAnswer: Hold the button."
    assert (block.page, block.section) == (6, "Reset")
    assert block.metadata == {"faq_id": "T1", "question": "How to reset?",
                              "answer": "Hold the button.", "product": "AX3000"}
    assert loaded.warnings == ["line 3: empty question; row skipped"]


def test_jsonl_malformed_line_is_reported_by_number_and_others_kept(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [
        {"question": "Q1?", "answer": "A1", "page": 3, "tags": ["x"]},
        '{"question": "broken", ',
        {"question": "Q3?", "answer": "A3"},
    ])
    loaded = load_file(path)
    assert [b.metadata["question"] for b in loaded.blocks] == ["Q1?", "Q3?"]
    assert loaded.blocks[0].page == 3 and loaded.blocks[0].metadata["tags"] == '["x"]'
    assert len(loaded.warnings) == 1 and loaded.warnings[0].startswith("line 2: malformed JSON")


def test_jsonl_without_required_keys_fails_with_keys_found(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "x", "completion": "y"}])
    with pytest.raises(UnreadableFileError, match=r"question, answer \(found: completion, prompt"):
        load_file(path)


def test_markdown_heading_paths_and_text_files(tmp_path):
    md = tmp_path / "guide.md"
    md.write_text("# Router\nIntro text.\n## Reset\nHold the button.\n```\n# not a heading\n```\n"
                  "# Other\nMore.\n")
    blocks = load_file(md).blocks
    assert [(b.section, b.page) for b in blocks] == [
        ("Router", None), ("Router > Reset", None), ("Other", None)]
    assert "# not a heading" in blocks[1].text
    txt = tmp_path / "notes.txt"
    txt.write_text("Plain words only, in one paragraph that ends with a full stop.\n")
    assert load_file(txt).blocks[0].text.startswith("Plain words")
    unsupported = tmp_path / "image.png"
    unsupported.write_bytes(b"\x89PNG")
    with pytest.raises(NoTextError, match="unsupported file type .png"):
        load_file(unsupported)


def test_heading_lines_split_sections_but_wrapped_lines_do_not():
    lines = [
        "Connecting to the Internet",
        "You can get access to the Internet through your TV when it is connected to a network.",
        "Wired connection",
        "If you connect a LAN cable, the TV accesses the Internet automatically and you can",
        "Use The Settings menu to check.",
    ]
    sections = heading_sections(lines, carry="Previous")
    assert [s for s, _ in sections] == ["Connecting to the Internet", "Wired connection"]


def test_running_footers_and_page_numbers_are_removed_but_repeated_body_kept():
    topics = ["apples", "pears", "plums", "figs"]
    pages = [f"About {t}\nSame body line here.\nMore text {i}.\n- {i} -\nACME manual page {i}"
             for i, t in enumerate(topics, start=1)]
    cleaned = clean_pages(pages)
    assert all("ACME manual" not in c and f"- {i} -" not in c
               for i, c in enumerate(cleaned, start=1))
    assert all(c.startswith(f"About {t}\nSame body line here.")
               for c, t in zip(cleaned, topics, strict=True))
