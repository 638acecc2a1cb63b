"""The program that runs inside the sandbox: a zygote that forks one child per candidate, and the
child's limits, test harness and audit hook. :mod:`stages.execution` (the host side) starts it
as ``python3 -I -S -B -c <this file> sandboxed|plain`` and talks to it over stdin/stdout.

The zygote
----------
A Python interpreter that has already imported what the harness needs reads one JSON job per
line (program, tests, limits, mode) and answers one JSON result per line. For each job it forks
a child. The child sets its own limits (address space, CPU seconds, processes, file size, open
files, no core dumps), its own session, stdout/stderr into a capped pipe, closes every other
descriptor and runs the candidate. Candidates run strictly one after another; after each, the
zygote SIGKILLs every process in the sandbox it can see (``kill(-1)``, repeated until none is
left, which also takes double-forked daemons) and wipes ``/tmp`` and ``/dev/shm``, so no
candidate sees another's files or processes. A wall-clock timeout kills the whole tree the same
way.

A pass is proven, not claimed
-----------------------------
Exit status 0 never counts by itself. After the fork, the zygote makes a random 128-bit token
and hands it to the child through a pipe. The child reads it *before* any candidate code runs
and keeps it only inside the closure of an audit hook (``sys.addaudithook``: Python code cannot
remove it); no frame, module or global refers to it. The hook writes the token to the report
pipe only when the harness's own frame, at the one line that follows a normal return from the
tests, asks for it, and only in the child process itself (a process the candidate forks inherits
the hook but not the right to report). The zygote counts a pass only for "exit status 0 and the
report is exactly the token". ``os._exit(0)``, ``sys.exit(0)``, ``SystemExit``, printed "PASS"
text, ``sys.excepthook``/``atexit`` hooks or a forged write to the report pipe therefore all fail.
Once armed, the hook also refuses what could read the token out of memory or jump the harness
past the tests: ``ctypes`` (import and every ``ctypes.*`` event), ``gc.get_objects/referrers/
referents``, ``sys.settrace``/``setprofile``, building code objects (``code.__new__``,
``code.replace``), further audit hooks, ``marshal.loads`` of anything but the read-only system
``.pyc`` being imported, and extension modules from outside the system library. The candidate
shares the interpreter's ``builtins`` module, so the harness, the hook and the comparison helper
bind every builtin they call after the candidate starts (``exec``, ``zip``, ``str`` ...) before
it starts: replacing ``builtins.exec`` with a no-op does not skip the tests. Asserts of the form
``a == b`` / ``a != b`` are rewritten to also check that neither side compares equal to a fresh
private object, so "``__eq__`` always True" results fail.

Per-assert runs (``"per_assert": true`` in the job)
---------------------------------------------------
For agreement-based selection (:mod:`stages.agreement`) one run says *which* checks held. A
*check* is a top-level ``assert``, or a top-level ``if``/``for``/``while``/``with``/``try``/
``match`` statement that holds an ``assert`` or a ``raise`` outside any nested function (the
``try: f(bad) except ValueError: pass else: raise AssertionError`` idiom). Every other
top-level statement (imports, helper definitions, setup calls) is *setup*. The statements run in
source order, one at a time, so setup that a check needs has run before it and stateful tests
(``s.push(1)`` then ``assert len(s) == 1``) mean what they say; each check runs in its own
``try``, and a failing check does not stop the next one. A setup statement that raises stops the
run there (the state later checks need is missing, so they are not held). Each check that
returned normally is proven by its own report frame, ``token + b"A" + index``, written by the
hook only for the harness's frame at the one line that follows that check; the end of the loop
is proven by ``token + b"D" + count``. The zygote reads frames only from the start of the
report and stops at the first byte that is not a valid frame, so bytes the candidate writes to
the pipe (which it can: it holds the write end) can only lose it held checks, never add any;
and the indices must strictly increase. Checks after a timeout or a crash are not held; checks
before it keep their proof.

What the harness does not protect against: the candidate runs in the same interpreter as the
harness, so it can read the test source from the harness's frame and answer the expected values
(a pass proves that the asserts held, not that the code is a general solution); and a candidate
that finds the comparison helper's randomised global name can rebind it. The harness re-installs
the helper before each check of a per-assert run and refuses a run whose helper was replaced
when a check (or, in a whole run, the tests) returned, which stops the direct attack; a
candidate that swaps it back before that, or from a thread of its own, is not stopped. None of
this is a known generated-code behaviour. The sandbox around it (:mod:`stages.execution`) is
what keeps such code from the host.

This module imports only the standard library and nothing of the project: its source is the
sandboxed program. The host imports it for the pure parts both sides share (:func:`check_flags`,
:func:`read_proofs`, the statuses), which are tested there.
"""

from __future__ import annotations

import ast
import json
import os
import select
import shutil
import signal
import sys
import time

STATUSES = ("passed", "failed", "error", "timeout", "memory", "rejected")
DETAIL_MAX = 300
OUTPUT_LIMIT = 1 << 20  # bytes of candidate stdout+stderr before the run is stopped
REPORT_LIMIT = 1 << 16  # bytes of report kept: ~3000 per-assert frames
FSIZE_MB = 16
NOFILE = 64
TOKEN_LEN = 16
FRAME_LEN = TOKEN_LEN + 1 + 4  # token, kind (b"A" held / b"D" done), big-endian index

_CANDIDATE_FILE = "<candidate>"
_TESTS_FILE = "<tests>"
# The audit events the harness raises; the hook honours each one only from the harness frame at
# the line where that event is raised (found in _child's bytecode by report_lines).
_REPORT_EVENT = "verify.report"
_HELD_EVENT = "verify.held"
_DONE_EVENT = "verify.done"


def cap(text: str, n: int = DETAIL_MAX) -> str:
    """One line of at most ``n`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


# ---------------------------------------------------------------------------------------------
# Pure parts, shared with the host.
# ---------------------------------------------------------------------------------------------

# The sandbox's interpreter is the system python3, which may be older than the host's.
_COMPOUND = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith, ast.Try, ast.Match)
_COMPOUND += (getattr(ast, "TryStar", ast.Try),)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


def _holds_check(node: ast.AST) -> bool:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Assert | ast.Raise):
            return True
        if not isinstance(child, _SCOPES) and _holds_check(child):
            return True
    return False


def check_flags(tree: ast.Module) -> list[bool]:
    """For each top-level statement of the tests, whether it is a check (see module doc)."""
    return [
        isinstance(s, ast.Assert) or (isinstance(s, _COMPOUND) and _holds_check(s))
        for s in tree.body
    ]


def count_checks(tests: str) -> int:
    """How many checks ``tests`` holds; 0 when it does not parse."""
    try:
        return sum(check_flags(ast.parse(tests)))
    except (SyntaxError, ValueError):
        return 0


def read_proofs(report: bytes, token: bytes, n: int) -> tuple[list[bool], bool, bytes]:
    """Which of ``n`` checks the report proves held, whether it proves the harness finished, and
    the bytes after the last valid frame (the unauthenticated failure detail)."""
    held, done, pos, nxt = [False] * n, False, 0, 0
    while not done and len(report) - pos >= FRAME_LEN and report.startswith(token, pos):
        kind = report[pos + TOKEN_LEN : pos + TOKEN_LEN + 1]
        index = int.from_bytes(report[pos + TOKEN_LEN + 1 : pos + FRAME_LEN], "big")
        if kind == b"A" and nxt <= index < n:
            held[index], nxt = True, index + 1
        elif kind == b"D" and index == n:
            done = True
        else:
            break
        pos += FRAME_LEN
    return held, done, report[pos:]


# ---------------------------------------------------------------------------------------------
# The child: limits, then the candidate and the tests under the armed hook.
# ---------------------------------------------------------------------------------------------


def _rewrite_tests(tests: str, helper: str) -> ast.Module:
    """Parse ``tests`` and route ``assert a == b`` / ``!=`` through ``helper`` (see module doc)."""
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
    """The comparison helper. Every builtin it calls is bound here, before the candidate runs."""
    _bool, _zip, _type, _repr, _len = bool, zip, type, repr, len
    _AssertionError, _Exception = AssertionError, Exception

    class _Probe:
        __slots__ = ()

    def short(x) -> str:
        try:
            r = _repr(x)
        except _Exception as e:  # a hostile __repr__
            r = f"<unrepresentable {_type(x).__name__}: {_type(e).__name__}>"
        return r if _len(r) <= 80 else r[:77] + "..."

    def compare(left, ops, rights):
        a = left
        for is_eq, b in _zip(ops, rights, strict=True):
            result = _bool(a == b) if is_eq else _bool(a != b)
            if not result:
                raise _AssertionError(f"{short(a)} {'!=' if is_eq else '=='} {short(b)}")
            for x in (a, b):
                probe = _Probe()
                try:
                    cheat = _bool(x == probe) if is_eq else not _bool(x != probe)
                except _Exception:
                    cheat = False
                if cheat:
                    raise _AssertionError(f"{_type(x).__name__} object compares equal to anything")
            a = b
        return True

    return compare


def _make_hook(token: bytes, report_fd: int, main_frame, lines: dict, trusted: tuple):
    """The audit hook that holds the token (see module doc). Nothing else references it, and
    every function it calls is bound here, before the candidate can replace any."""
    import sys as _sys

    trusted = tuple(trusted)
    state = {"reported": False, "done": False, "next": 0, "pyc": None}
    write, getpid, getframe, fsdecode = os.write, os.getpid, _sys._getframe, os.fsdecode
    os_open, os_read, os_close, rdonly = os.open, os.read, os.close, os.O_RDONLY
    _str, _bytes, _int, _type, _isinstance = str, bytes, int, type, isinstance
    _RuntimeError, full = RuntimeError, slice(None)
    exact = str.__getitem__  # exact(s, full): a plain str copy of a str subclass
    pid = getpid()
    report_line, held_line, done_line = (
        lines[e] for e in (_REPORT_EVENT, _HELD_EVENT, _DONE_EVENT)
    )
    report_event, held_event, done_event = _REPORT_EVENT, _HELD_EVENT, _DONE_EVENT
    blocked_exact = frozenset(
        {
            "gc.get_objects",
            "gc.get_referrers",
            "gc.get_referents",
            "sys.settrace",
            "sys.setprofile",
            "code.__new__",
            "sys.addaudithook",
        }
    )

    def read_file(path: str) -> bytes:
        fd, chunks = os_open(path, rdonly), []
        try:
            while chunk := os_read(fd, 1 << 20):
                chunks.append(chunk)
        finally:
            os_close(fd)
        return b"".join(chunks)

    def hook(event, args):
        if event in (report_event, held_event, done_event):
            f = getframe(1)
            if f is not main_frame or getpid() != pid:
                return
            line = f.f_lineno
            if event == report_event and line == report_line and not state["reported"]:
                state["reported"] = True
                write(report_fd, token)
            elif event == held_event and line == held_line and not state["done"]:
                i = args[0]
                if _type(i) is _int and i >= state["next"]:
                    state["next"] = i + 1
                    write(report_fd, token + b"A" + i.to_bytes(4, "big"))
            elif event == done_event and line == done_line and not state["done"]:
                state["done"] = True
                write(report_fd, token + b"D" + args[0].to_bytes(4, "big"))
            return
        if event in blocked_exact or event.startswith("ctypes."):
            raise _RuntimeError(f"sandbox: {event} is not allowed")
        if event == "import":
            name, path = args[0], args[1]
            if _isinstance(name, _str) and exact(name, full).split(".")[0] in ("ctypes", "_ctypes"):
                raise _RuntimeError(f"sandbox: importing {name} is not allowed")
            if path:
                p = exact(fsdecode(path), full) if _isinstance(path, _str | _bytes) else None
                if p is None or not p.startswith(trusted):
                    raise _RuntimeError(f"sandbox: loading {path} is not allowed")
        elif event == "open":
            path = args[0]
            if _isinstance(path, _str | _bytes):
                p = exact(fsdecode(path), full)
                if p.endswith(".pyc"):
                    state["pyc"] = p if p.startswith(trusted) else None
                    if state["pyc"] is None:
                        raise _RuntimeError(f"sandbox: reading {p} is not allowed")
        elif event in ("marshal.loads", "marshal.load"):
            data, pyc = args[0] if args else b"", state["pyc"]
            state["pyc"] = None
            if pyc is None or _type(data) is not _bytes or read_file(pyc)[16:] != data:
                raise _RuntimeError("sandbox: marshal.loads is not allowed")
            state["pyc"] = None  # read_file's own open event set it again

    return hook


def _child(job: dict, arm_fd: int, report_fd: int, lines: dict[str, int]) -> None:
    """The forked child: limits, then the candidate and the tests under the armed hook.
    ``lines``: where this function raises each report event (:func:`report_lines`)."""
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
    token = os.read(arm_fd, TOKEN_LEN)
    os.close(arm_fd)
    write, dumps = os.write, json.dumps

    def fail(status: str, detail: str) -> None:
        try:
            write(report_fd, b"R" + dumps({"status": status, "detail": cap(detail)}).encode())
        except BaseException:  # noqa: BLE001 - a detail is never worth dying for
            pass

    per_assert = bool(job.get("per_assert"))
    helper = "_verify_cmp_" + os.urandom(6).hex()
    try:
        prog_code = compile(job["program"], _CANDIDATE_FILE, "exec", dont_inherit=True)
        tree = _rewrite_tests(job["tests"], helper)
        if per_assert:
            units, k = [], 0
            for stmt, is_check in zip(tree.body, check_flags(tree), strict=True):
                one = compile(ast.Module([stmt], []), _TESTS_FILE, "exec", dont_inherit=True)
                units.append((one, k if is_check else -1))
                k += is_check
            units, n_checks = tuple(units), k  # a tuple: the candidate cannot edit it
        else:
            test_code = compile(tree, _TESTS_FILE, "exec", dont_inherit=True)
    except SyntaxError as e:
        where = "tests" if e.filename == _TESTS_FILE else "candidate"
        fail("error", f"SyntaxError in {where} line {e.lineno}: {e.msg}")
        return
    compare = _make_compare()
    ns = {"__name__": "__candidate__", "__builtins__": builtins}
    ns_get = ns.get
    tests_lines = job["tests"].splitlines()
    # Bound before the candidate runs: it shares the builtins module and may replace any name.
    run, base_exc, audit, rng, describe = exec, BaseException, sys.audit, range, _describe
    # The hook accepts each report only from this frame, at the line of its audit() call below.
    frame = sys._getframe()
    sys.addaudithook(_make_hook(token, report_fd, frame, lines, job["trusted"]))
    del token, frame
    if not per_assert:
        try:
            run(prog_code, ns)
            ns[helper] = compare
            run(test_code, ns)
        except base_exc as e:  # everything the candidate raises is a result
            fail(*describe(e, tests_lines))
        else:
            if ns_get(helper) is compare:
                audit("verify.report")
            else:
                fail("error", "the tests' comparison helper was replaced")
    else:
        first = None  # (status, detail) of the first statement that did not return
        try:
            run(prog_code, ns)
        except base_exc as e:
            first = describe(e, tests_lines)
            units = ()
        for j in rng(len(units)):
            code, k = units[j]
            ns[helper] = compare
            try:
                run(code, ns)
            except base_exc as e:
                if first is None:
                    try:
                        first = describe(e, tests_lines)
                    except base_exc:
                        first = ("error", "an exception that cannot be described")
                if k < 0:
                    break  # setup failed: what the later checks need is missing
                continue
            if ns_get(helper) is not compare:
                first = ("error", "the tests' comparison helper was replaced")
                break
            if k >= 0:
                audit("verify.held", k)
        audit("verify.done", n_checks)
        if first is not None:
            fail(*first)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001
        pass


def report_lines() -> dict[str, int]:
    """The line of ``_child`` that raises each report event, found in its bytecode (once per
    zygote: reading the bytecode costs milliseconds, a third of a whole run)."""
    import dis

    lines = {}
    for ins in dis.get_instructions(_child):
        if ins.opname == "LOAD_CONST" and ins.argval in (_REPORT_EVENT, _HELD_EVENT, _DONE_EVENT):
            lines.setdefault(ins.argval, ins.positions.lineno)
    if len(lines) != 3:
        raise RuntimeError(f"harness: report calls not found (found {sorted(lines)})")
    return lines


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


# ---------------------------------------------------------------------------------------------
# The zygote: one fork per job, the verdict, and the clean-up between jobs.
# ---------------------------------------------------------------------------------------------


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


def _zygote_run(job: dict, sandboxed: bool, lines: dict[str, int]) -> dict:
    arm_r, arm_w = os.pipe()
    rep_r, rep_w = os.pipe()
    out_r, out_w = os.pipe()
    scratch = "/tmp"
    if not sandboxed:
        import tempfile

        scratch = tempfile.mkdtemp(prefix="verify-")
    exit_now = os._exit  # bound before the fork: the candidate may replace os._exit
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the candidate's process
        code = 70
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
            _child(job, arm_r, rep_w, lines)
            code = 0
        finally:
            exit_now(code)
    os.close(arm_r)
    os.close(rep_w)
    os.close(out_w)
    token = os.urandom(TOKEN_LEN)
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
            elif len(report) < REPORT_LIMIT:
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
                if fd == rep_r and len(report) < REPORT_LIMIT:
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
    res = {"seconds": round(seconds, 4), "clean": clean}
    if job.get("per_assert"):
        n = count_checks(job["tests"])
        held, done, rest = read_proofs(report, token, n)
        if done and all(held) and not rest:
            rest = token  # then the whole-run rule decides: exit status 0 and nothing else
        status, detail = _verdict(why, wstatus, rest, token, tail, timeout, out_limit)
        if status != "passed":
            detail = f"{sum(held)}/{n} checks held; {detail}"
        res["asserts"] = held
    else:
        status, detail = _verdict(why, wstatus, report, token, tail, timeout, out_limit)
    res.update(status=status, detail=cap(detail))
    return res


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
    import resource  # noqa: F401 - imported once here so that each fork starts warm

    lines = report_lines()
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
                res = _zygote_run(job, sandboxed, lines)
            except Exception as e:  # noqa: BLE001 - answer, never die
                res = {"status": "error", "detail": cap(f"harness: {type(e).__name__}: {e}")}
            out.write(json.dumps(res).encode() + b"\n")


if __name__ == "__main__":
    _zygote_main(sys.argv[1:] == ["sandboxed"])
