from eval.cache import JsonlCache


def test_cache_roundtrip_and_torn_line(tmp_path):
    path = tmp_path / "a.jsonl"
    c = JsonlCache(path, ("system", "id"))
    c.put({"system": "base", "id": "q1", "answer": "x"})
    with path.open("a") as f:
        f.write('{"system": "base", "id": "q2", "ans')  # a kill mid-write
    c2 = JsonlCache(path, ("system", "id"))
    assert len(c2) == 1 and c2.torn_lines == 1 and ("base", "q1") in c2
    c2.put({"system": "base", "id": "q2", "answer": "y"})
    c3 = JsonlCache(path, ("system", "id"))
    assert c3.get("base", "q2")["answer"] == "y" and len(c3) == 2
