"""The engine switch and the shared response cache, without a cluster: ``engine.*`` is validated
like every section, a missing Ray names the extra to install, and the directory cache stays
whole under concurrent writers and reads the local engine's journal."""

from __future__ import annotations

import json
import sys
import threading

import pytest

from pipeline.cache import DirCache
from pipeline.config import ConfigError, load_config
from pipeline.llm import ResponseCache
from stages.base import Response


def test_engine_defaults_to_local_and_bad_values_name_the_field():
    assert load_config(None, None).engine.kind == "local"
    assert load_config(None, ["engine.kind=ray"]).engine.kind == "ray"
    with pytest.raises(ConfigError, match=r"engine\.kind='spark'"):
        load_config(None, ["engine.kind=spark"])
    with pytest.raises(ConfigError, match=r"engine\.request_chunk=0"):
        load_config(None, ["engine.request_chunk=0"])


def test_a_missing_ray_names_the_extra(monkeypatch):
    from pipeline.engine import RayEngine

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[ray\]'"):
        RayEngine(load_config(None, ["engine.kind=ray"]).engine)


def _resp(key: str, text: str) -> Response:
    return Response(text, "stop", 3, 4, "m", f"id-{key}", key=key)


def test_dir_cache_under_concurrent_writers_is_whole_and_content_addressed(tmp_path):
    root = tmp_path / "responses"
    keys = [f"{i:02x}" + "ab" * 31 for i in range(40)]

    def writer(w: int) -> None:
        cache = DirCache(root)  # each writer its own handle, as each actor has
        for k in keys:
            cache.put(_resp(k, f"answer {k}"))

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cache = DirCache(root)
    assert sorted(cache.keys()) == sorted(keys)
    assert not list(root.rglob("*.tmp")), "a temporary file was left behind"
    for k in keys:
        got = cache.get(k)
        assert got is not None and got.text == f"answer {k}" and got.cached and got.key == k
        assert (root / k[:2] / f"{k}.json").is_file()
    assert cache.get("ff" * 32) is None


def test_dir_cache_reads_the_local_journal_and_ignores_a_torn_file(tmp_path):
    journal = tmp_path / "cache" / "responses.jsonl"
    old = ResponseCache(journal)
    old.put(_resp("aa" * 32, "from the local engine"))
    old.close()
    with open(journal, "a", encoding="utf-8") as f:
        f.write('{"key": "bb')  # a torn last line from a kill
    cache = DirCache(tmp_path / "cache" / "responses", journal=journal)
    assert cache.get("aa" * 32).text == "from the local engine"
    torn = tmp_path / "cache" / "responses" / "cc" / f"{'cc' * 32}.json"
    torn.parent.mkdir(parents=True)
    torn.write_text('{"key": "cc')
    assert cache.get("cc" * 32) is None
    cache.put(_resp("cc" * 32, "answered again"))
    assert json.loads(torn.read_text())["text"] == "answered again"


def test_dir_cache_travels_pickled_and_works_through_fsspec_urls(tmp_path):
    import pickle

    pytest.importorskip("fsspec")
    cache = DirCache(f"file://{tmp_path}/store")
    cache.put(_resp("dd" * 32, "over fsspec"))
    again = pickle.loads(pickle.dumps(cache))
    assert again.get("dd" * 32).text == "over fsspec"
    mem = DirCache("memory://pipeline-test-cache")  # an object store: no rename, one PUT
    mem.put(_resp("ee" * 32, "in memory"))
    assert mem.get("ee" * 32).text == "in memory" and mem.keys() == ["ee" * 32]
