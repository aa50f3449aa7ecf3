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


def test_concurrent_writers_never_interleave(tmp_path):
    import multiprocessing as mp

    path = tmp_path / "a.jsonl"
    procs = [mp.get_context("fork").Process(target=_write_many, args=(path, name))
             for name in ("base", "finetuned", "no-rag")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    c = JsonlCache(path, ("system", "id"))
    assert c.torn_lines == 0 and len(c) == 3 * 50


def _write_many(path, name):
    c = JsonlCache(path, ("system", "id"))
    for i in range(50):
        c.put({"system": name, "id": f"q{i}", "answer": "x" * 20000})
