"""The one ticket-history reader (ingest and `python -m finetune data`) and the one JSONL reader:
encodings, suffixes, page 0, ragged and multi-line CSV records, with file:line problems."""

import pytest

import finetune.data
from finetune.cli import main as finetune_main
from ingest.cli import main as ingest_main
from ingest.loaders import (
    NoTextError,
    UnreadableFileError,
    load_file,
    read_faq,
    read_jsonl,
)

LATIN1_CSV = "question,answer,page\nLe téléviseur s’éteint ?,Débranchez-le 30 s.,12\n"


def test_finetune_and_ingest_share_the_reader():
    assert finetune.data.read_faq is read_faq
    assert finetune.data.FaqRow is read_faq.__globals__["FaqRow"]


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16"])
def test_unicode_encodings_read_cleanly(tmp_path, encoding):
    path = tmp_path / "faq.csv"
    path.write_bytes(LATIN1_CSV.encode(encoding))
    rows, problems = read_faq(path)
    assert problems == []
    # The byte-order mark does not end up in the first column's name.
    assert [(r.question, r.answer, r.page) for r in rows] == [
        ("Le téléviseur s’éteint ?", "Débranchez-le 30 s.", 12)]


def test_windows_1252_is_read_with_one_note_naming_file_and_line(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(("question,answer\nplain?,ascii\n" + LATIN1_CSV.split("\n", 1)[1]
                      .replace(",12", "")).encode("cp1252"))
    rows, problems = read_faq(path)
    assert rows[1].question == "Le téléviseur s’éteint ?"  # 0x92 is cp1252's apostrophe
    assert len(problems) == 1
    assert str(problems[0]).startswith(f"{path}:3: not UTF-8 (byte 0xe9): read as "
                                       "Windows-1252")
    loaded = load_file(path)  # ingest reads it the same way and says so per file
    assert loaded.blocks[1].metadata["question"] == "Le téléviseur s’éteint ?"
    assert loaded.warnings[0].startswith("line 3: not UTF-8")


def test_mostly_utf8_with_a_damaged_byte_keeps_utf8(tmp_path):
    path = tmp_path / "faq.csv"
    path.write_bytes("question,answer\ncafé?,oui\n".encode() + b"bad \xff byte?,yes\n")
    rows, problems = read_faq(path)
    assert rows[0].question == "café?" and rows[1].question == "bad \ufffd byte?"
    assert problems[0].line == 3 and "damaged bytes replaced" in problems[0].reason


def test_undecodable_and_binary_files_fail_with_one_clear_message(tmp_path):
    undecodable = tmp_path / "weird.csv"
    undecodable.write_bytes(b"question,answer\nq\x81?,a\n")  # 0x81: undefined in cp1252
    with pytest.raises(UnreadableFileError, match=r"line 2 is not UTF-8 \(byte 0x81\) nor "
                                                  r"Windows-1252") as err:
        read_faq(undecodable)
    assert str(err.value).startswith(str(undecodable))
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\x00\x01\xff\xfe\x00garbage")
    with pytest.raises(UnreadableFileError, match="binary data"):
        read_faq(binary)


def test_both_clis_report_a_bad_encoding_without_a_traceback(tmp_path, capsys):
    bad = tmp_path / "history.csv"
    bad.write_bytes(b"question,answer\nq\x81?,a\n")
    code = finetune_main(["data", "--faq", str(bad), "--out", str(tmp_path / "out"),
                          "--no-token-count"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: {bad}: line 2 is not UTF-8") and len(err.splitlines()) == 1
    code = ingest_main([str(bad), "--home", str(tmp_path / "idx"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("failed: history.csv: line 2 is not UTF-8") and len(err.splitlines()) == 1


def test_csv_line_numbers_multiline_records_ragged_rows_and_pages(tmp_path):
    path = tmp_path / "faq.csv"
    path.write_text(
        'question,answer,page\n'
        'Q one?,"multi\nline answer",3\n'      # lines 2-3: one record, numbered 2
        'Q two?,,4\n'                          # line 4: empty answer
        'Q three?,A three,x\n'                 # line 5: bad page, row kept
        'Q four?,A four,5,extra\n'             # line 6: more fields than the header
        'Q five?,A five\n'                     # line 7: fewer fields: page empty, kept
        'Q six?,A six,0\n'                     # line 8: page 0 reported, row kept
        '\n'                                   # line 9: blank
        'Q seven?,A seven,7.0,\n'              # line 10: spreadsheet float, trailing comma
    )
    rows, problems = read_faq(path)
    assert [(r.line, r.page) for r in rows] == [(2, 3), (5, None), (7, None), (8, None),
                                                (10, 7)]
    assert rows[0].answer == "multi\nline answer"
    reported = {p.line: p.reason for p in problems}
    assert set(reported) == {4, 5, 6, 8}
    assert reported[4] == "empty answer; row skipped"
    assert reported[5] == "page 'x' is not a whole number; page ignored, row kept"
    assert reported[6].startswith("more fields (4) than the header (3)")
    assert reported[8] == "page 0 is not a page number (pages count from 1); page ignored, row kept"
    assert str(problems[0]).startswith(f"{path}:4: ")


def test_an_unclosed_quote_skips_its_record_not_the_rest_of_the_file(tmp_path):
    path = tmp_path / "faq.csv"
    path.write_text('question,answer\nQ1?,A1\nQ2?,"never closed\nQ3?,A3\nQ4?,A4\n')
    rows, problems = read_faq(path)
    assert [r.question for r in rows] == ["Q1?", "Q3?", "Q4?"]
    assert [(p.line, p.reason) for p in problems] == [
        (3, "a quoted field opened here is never closed; record skipped")]


def test_jsonl_pages_ids_and_broken_lines(tmp_path):
    path = tmp_path / "faq.jsonl"
    path.write_text('{"question": "a?", "answer": "b", "id": 7, "page": 0}\n{broken\n\n[1]\n'
                    '{"Question": "c?", "Answer": "d", "page": "2", "tags": ["x"]}\n'
                    '{"question": "e?", "answer": ["not", "text"]}\n')
    rows, problems = read_faq(path)
    assert [(r.line, r.id, r.page) for r in rows] == [(1, "7", None), (5, None, 2)]
    assert rows[1].extra == {"tags": '["x"]'}
    assert [(p.line, p.reason.split(";")[0]) for p in problems] == [
        (1, "page 0 is not a page number (pages count from 1)"),
        (2, "malformed JSON (Expecting property name enclosed in double quotes at column 2)"),
        (4, "expected a JSON object, got list"),
        (6, "answer is not text (list)"),
    ]


def test_suffixes_missing_columns_and_nothing_usable(tmp_path):
    ndjson = tmp_path / "faq.ndjson"
    ndjson.write_text('{"question": "a?", "answer": "b"}\n')
    assert read_faq(ndjson)[0][0].question == "a?"
    txt = tmp_path / "faq.txt"
    txt.write_text("question,answer\na,b\n")
    with pytest.raises(UnreadableFileError, match=r"unsupported ticket history type \.txt"):
        read_faq(txt)
    columns = tmp_path / "bad.csv"
    columns.write_text("q,a\nx,y\n")
    with pytest.raises(UnreadableFileError, match=r"missing required column\(s\) question, "
                                                  r"answer \(found: q, a\)"):
        read_faq(columns)
    empty_rows = tmp_path / "empty.csv"
    empty_rows.write_text("question,answer\n,\nq,\n")
    with pytest.raises(NoTextError, match=r"no record with both a question and an answer \(1 "
                                          r"problems; first: line 3: empty answer"):
        read_faq(empty_rows)
    with pytest.raises(UnreadableFileError, match="does not exist"):
        read_faq(tmp_path / "nope.csv")


def test_read_jsonl_numbers_lines_and_keeps_the_rest(tmp_path):
    path = tmp_path / "x.jsonl"
    # U+2028 is legal inside a JSON string: it must not split the line.
    path.write_bytes(b'{"a": 1}\r\n\r\n{"a": "x\xe2\x80\xa8y"}\n{"a": \n7\n')
    values, problems = read_jsonl(path)
    assert values == [(1, {"a": 1}), (3, {"a": "x\u2028y"}), (5, 7)]
    assert [p.line for p in problems] == [4]
    assert str(problems[0]).startswith(f"{path}:4: malformed JSON")
