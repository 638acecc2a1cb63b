"""Threat tests for the sandbox: each runs hostile code through a real bubblewrap sandbox and then
checks that the run finished with the expected status and that the host is unchanged: no
process of the sandbox's uid left but the warm worker, no file written outside the scratch
directory, nothing secret in the result. Then the per-assert report (a candidate cannot add a
held assert to it), and the pure parts of the host and the harness, which run without a sandbox.

Tests that need a sandbox skip when none can be made here, and fail instead on CI (``CI=true``)."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from stages import execution, sandbox_program
from stages.execution import ExecResult, Sandbox, run_tests
from tests.conftest import require_sandbox

REPO = Path(__file__).resolve().parents[1]
SECRET = "s3cret-" + secrets.token_hex(8)


def uid_processes(uid: int | None) -> list[int]:
    if uid is None:
        return []
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                status = Path(f"/proc/{d}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("Uid:") and int(line.split()[1]) == uid:
                    out.append(int(d))
    return out


@pytest.fixture(scope="module")
def box():
    require_sandbox()
    os.environ["VERIFY_TEST_SECRET"] = SECRET  # set in the parent: must never reach a candidate
    b = Sandbox(1)
    yield b
    uid = b.slots[0].uid
    b.close()
    deadline = time.monotonic() + 5
    while uid_processes(uid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uid_processes(uid) == [], "sandbox processes survived close()"
    os.environ.pop("VERIFY_TEST_SECRET", None)


@pytest.fixture
def host_markers(tmp_path):
    """Paths a hostile candidate tries to create on the host; none may exist afterwards."""
    tag = secrets.token_hex(4)
    paths = [
        Path("/tmp") / f"verify-pwned-{tag}",
        Path.home() / f"verify-pwned-{tag}",
        REPO / f"verify-pwned-{tag}",
    ]
    yield tag, paths
    leaked = [p for p in paths if p.exists()]
    for p in leaked:
        p.unlink()
    assert not leaked, f"files written outside the scratch directory: {leaked}"


def run(
    box: Sandbox,
    program: str,
    tests: str = "assert True\n",
    timeout: float = 3.0,
    per_assert: bool = False,
) -> ExecResult:
    t0 = time.monotonic()
    res = box.run(program, tests, timeout=timeout, memory_mb=256, per_assert=per_assert)
    assert time.monotonic() - t0 < timeout + 10, "the verify call did not finish in time"
    assert SECRET not in res.detail
    # Only the warm worker (outer bwrap, its init and the zygote) may remain, or nothing at all
    # when the candidate killed the worker.
    deadline = time.monotonic() + 3  # a killed worker's processes take a moment to be reaped
    while len(uid_processes(box.slots[0].uid)) not in (0, 3) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(uid_processes(box.slots[0].uid)) in (0, 3), "candidate processes left behind"
    return res


def test_fork_bomb(box, host_markers):
    prog = (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    res = run(box, prog)
    assert res.status == "timeout"
    assert run(box, "x = 1", "assert x == 1").status == "passed"


def test_memory_bomb(box):
    res = run(box, "chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))\n")
    assert res.status == "memory"


def test_busy_loop(box):
    res = run(box, "while True:\n    pass\n", timeout=1.5)
    assert res.status == "timeout"
    assert 1.4 < res.seconds < 3.0


def test_sigterm_ignored(box):
    prog = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass\n"
    assert run(box, prog, timeout=1.5).status == "timeout"


def test_disk_filling(box, host_markers):
    before = os.statvfs("/tmp").f_bfree
    prog = (
        "import os\nn = 0\nfor d in ('/tmp', '/dev/shm', '/dev'):\n"
        "    for i in range(10000):\n        try:\n"
        "            with open(f'{d}/fill{i}', 'wb') as f:\n                f.write(b'x' * (1 << 20) * 8)\n"
        "            n += 1\n        except OSError:\n            break\n"
        "assert n < 40, n\n"
    )
    res = run(box, prog, timeout=20)
    assert res.status == "passed", res  # every place filled up, or refused, within the caps
    assert os.statvfs("/tmp").f_bfree > before - 1000  # the host's /tmp did not fill
    # the next candidate of the slot starts with an empty scratch directory
    assert run(box, "import os", "assert os.listdir('/tmp') == []").status == "passed"


def test_writes_outside_scratch(box, host_markers):
    tag, paths = host_markers
    prog = (
        "written = []\n"
        f"for p in ['/tmp/verify-pwned-{tag}', '/root/verify-pwned-{tag}', "
        f"'{REPO}/verify-pwned-{tag}', '/usr/verify-pwned-{tag}', '/verify-pwned-{tag}']:\n"
        "    try:\n        open(p, 'w').write('x')\n        written.append(p)\n"
        "    except OSError:\n        pass\n"
    )
    # Only the sandbox's own /tmp accepts the write; the host paths are untouched (fixture).
    res = run(box, prog, f"assert written == ['/tmp/verify-pwned-{tag}'], written")
    assert res.status == "passed", res


def test_reading_host_files_and_secrets(box):
    prog = (
        "import os, glob\nfound = []\n"
        "if any('s3cret' in v for v in os.environ.values()):\n    found.append('env')\n"
        "for p in ['/proc/1/environ', '/proc/self/environ', '/etc/shadow', '/etc/passwd',\n"
        f"          '{REPO}/pyproject.toml', '/root/.bash_history']:\n"
        "    try:\n        open(p, 'rb').read()\n        found.append(p)\n"
        "    except OSError:\n        pass\n"
        "found += glob.glob('/proc/*/environ')\n"
        "print(sorted(os.environ))\n"
    )
    res = run(box, prog, "assert found == [], found")
    assert res.status == "passed", res


def test_tcp_to_loopback_listener(box):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    srv.settimeout(4)
    port = srv.getsockname()[1]
    got: list = []

    def accept():
        try:
            got.append(srv.accept())
        except OSError:
            pass

    t = threading.Thread(target=accept)
    t.start()
    prog = (
        "import socket\nconnected = False\ntry:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n    connected = True\n"
        "except OSError:\n    pass\n"
    )
    res = run(box, prog, "assert not connected")
    t.join()
    srv.close()
    assert res.status == "passed", res
    assert got == [], "a sandboxed candidate reached a host listener"


@pytest.mark.parametrize(
    "attack",
    [
        "k(os.getppid(), signal.SIGKILL)",
        "getattr(os, 'kill' + 'pg')(0, signal.SIGKILL)",
        "k(-1, signal.SIGKILL)",
        "k(1, signal.SIGKILL)",
    ],
)
def test_killing_parent_group_and_everyone(box, attack):
    sentinel = subprocess.Popen(["sleep", "60"])  # a host process of ours that must survive
    try:
        prog = f"import os, signal\nk = getattr(os, 'ki' + 'll')\n{attack}\n"
        res = run(box, prog, "assert True")
        assert res.status in ("error", "passed", "timeout")
        assert sentinel.poll() is None, "a host process was killed"
        # the slot recovers for the next candidate
        assert run(box, "x = 2", "assert x == 2").status == "passed"
    finally:
        sentinel.kill()
        sentinel.wait()


def test_double_forked_daemon(box, host_markers):
    tag, _paths = host_markers
    prog = (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        f"        time.sleep(2)\n        open('/tmp/daemon-{tag}', 'w').write('alive')\n"
        "        while True:\n            time.sleep(1)\n"
        "    getattr(os, '_e' + 'xit')(0)\n"
        "def f():\n    return 1\n"
    )
    res = run(box, prog, "assert f() == 1")
    assert res.status == "passed", res
    time.sleep(2.5)
    # the daemon was killed with the run: it never wrote, and the next candidate sees nothing
    res = run(box, "import os", f"assert not os.path.exists('/tmp/daemon-{tag}')")
    assert res.status == "passed", res


def test_stdout_flood(box):
    res = run(box, "import sys\nwhile True:\n    sys.stdout.write('x' * 4096)\n", timeout=10)
    assert res.status == "error" and "output limit" in res.detail
    assert res.seconds < 9
    assert len(res.detail) <= execution.DETAIL_MAX


def test_subprocess_escape(box, host_markers):
    tag, _paths = host_markers
    prog = (
        "import subprocess\n"
        f"r = subprocess.run(['sh', '-c', 'echo $VERIFY_TEST_SECRET; touch {REPO}/verify-pwned-{tag} /tmp/x; "
        "cat /proc/1/environ; ls /root'], capture_output=True, text=True)\n"
        "out = r.stdout + r.stderr\n"
    )
    res = run(box, prog, "assert 's3cret' not in out")
    assert res.status == "passed", res


def test_ctypes_escape(box):
    # the plain import is refused before running; a disguised one is refused at run time
    assert run(box, "import ctypes").status == "rejected"
    res = run(box, "m = __import__('ct' + 'ypes')\nm.CDLL(None).kill(-1, 9)\n")
    assert res.status == "error" and "ctypes" in res.detail


def test_writing_to_inherited_descriptors(box):
    prog = (
        "import os\nfor fd in range(3, 256):\n    try:\n"
        "        os.write(fd, b'PASS' * 4)\n    except OSError:\n        pass\n"
    )
    res = run(
        box, prog, "assert 1 == 2"
    )  # the tests fail: forged writes must not turn it into a pass
    assert res.status != "passed"
    res = run(box, prog, "assert 1 == 1")  # and junk on the report pipe is never a pass either
    assert res.status != "passed"


# --- a pass is proven, not claimed ------------------------------------------------------------

FAILING = "def add(a, b):\n    return a - b\n"
CHEATS = {
    "os._exit": "import os\ngetattr(os, '_e' + 'xit')(0)\n",
    "sys.exit": "import sys\ngetattr(sys, 'ex' + 'it')(0)\n",
    "SystemExit": "def add(a, b):\n    raise SystemExit(0)\n",
    "print PASS": "print('PASS: all tests passed')\n",
    "excepthook": "import sys\nsetattr(sys, 'except' + 'hook', lambda *a: None)\n",
    "atexit": "__import__('at' + 'exit').register(lambda: print('ok'))\n",
    "always equal": "class E:\n    def __eq__(self, o):\n        return 1 == 1\n    def __ne__(self, o):\n        return 1 == 0\ndef add(a, b):\n    return E()\n",
    "gc token hunt": "g = __import__('g' + 'c')\ng.get_objects()\n",
    "settrace": "import sys\ngetattr(sys, 'set' + 'trace')(lambda *a: None)\n",
    "forge report audit": "import os, sys\nsys.audit('verify.report')\ngetattr(os, '_e' + 'xit')(0)\n",
    "forge report via C callback": (
        "import functools, os, signal, sys\n"
        "signal.signal(signal.SIGALRM, functools.partial(sys.audit, 'verify.report'))\n"
        "signal.setitimer(signal.ITIMER_REAL, 0.001)\n"
        "while True:\n    pass\n"
    ),
    "code object": "def add(a, b):\n    return 0\nadd.__code__.replace(co_code=add.__code__.co_code)\n",
    # The candidate shares the builtins module with the harness: these passed before the harness
    # bound its builtins ahead of the candidate.
    "builtins.exec no-op": "import builtins\nbuiltins.exec = lambda *a, **k: None\n",
    "builtins.zip empty": "import builtins\nbuiltins.zip = lambda *a, **k: ()\n",
    "rebind comparison helper": (
        "def add(a, b):\n    g = globals()\n    for k in list(g):\n"
        "        if k.startswith('_verify_cmp_'):\n            g[k] = lambda *x: True\n"
        "    return 3 if (a, b) == (1, 2) else 0\n"
    ),
    "fork to try both answers": (
        "import os\ndef add(a, b):\n    return a + b if os.fork() == 0 else a - b\n"
    ),
}


@pytest.mark.parametrize("name", sorted(CHEATS))
def test_cheats_never_pass(box, name):
    res = run(box, FAILING + CHEATS[name], "assert add(1, 2) == 3\nassert add(2, 2) == 4\n")
    assert res.status != "passed", (name, res)


def test_honest_candidate_passes_and_details_are_short(box):
    assert (
        run(box, "def add(a, b):\n    return a + b\n", "assert add(1, 2) == 3").status == "passed"
    )
    res = run(box, "def add(a, b):\n    return a - b\n", "x = 1\nassert add(1, 2) == 3")
    assert res.status == "failed"
    assert "tests line 2" in res.detail and "-1 != 3" in res.detail


def test_run_tests_contract_and_unsafe_mode(sandbox_required):
    prog, tests = "def f():\n    return 41 + 1\n", "assert f() == 42\n"
    assert run_tests(prog, tests).status == "passed"
    assert run_tests(prog, tests, sandbox=False).status == "passed"
    assert (
        run_tests("import os\ngetattr(os, '_e' + 'xit')(0)", tests, sandbox=False).status == "error"
    )
    assert run_tests("while True: pass", tests, timeout=1, sandbox=False).status == "timeout"
    with Sandbox(1) as own:  # or in a sandbox of the caller's, kept warm between calls
        assert run_tests(prog, tests, sandbox=own).status == "passed"
        res = run_tests(prog, tests + "assert f() == 41\n", sandbox=own, per_assert=True)
        assert res.status == "failed" and res.asserts == (True, False)
        assert own.slots[0].proc is not None  # still warm


def test_run_many_keeps_order(sandbox_required):
    jobs = [
        (f"def f():\n    return {i}\n", f"assert f() == {i if i % 3 else -1}\n") for i in range(12)
    ]
    got = [r.status for r in execution.run_many(jobs, workers=2, timeout=5)]
    assert got == ["failed" if i % 3 == 0 else "passed" for i in range(12)]


@pytest.fixture
def fresh_check():
    """check_sandbox() asked again, and its answer for this test forgotten afterwards."""
    execution.check_sandbox.cache_clear()
    yield
    execution.check_sandbox.cache_clear()


def test_unavailable_sandbox_is_refused(monkeypatch, fresh_check):
    monkeypatch.setattr(execution, "BWRAP", "/nonexistent/bwrap")
    why = execution.check_sandbox()
    assert why and "bubblewrap" in why and "unsafe" in why
    with pytest.raises(execution.SandboxUnavailable, match="bubblewrap"):
        Sandbox(1)


def test_seccomp_refuses_ptrace(box):
    prog = (
        "import subprocess\n"
        "r = subprocess.run(['python3', '-I', '-c', 'import ctypes,os;"
        "print(ctypes.CDLL(None).ptrace(16, os.getppid(), 0, 0))'], capture_output=True, text=True)\n"
    )
    res = run(box, prog, "assert r.stdout.strip() == '-1', r.stdout + r.stderr")
    assert res.status == "passed", res


def test_a_closed_sandbox_refuses_to_run():
    box = Sandbox(1, sandbox=False)  # starts nothing until the first run
    box.close()
    box.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        box.run("x = 1", "assert x == 1")


# --- per-assert runs --------------------------------------------------------------------------

ADD3 = "assert add(1, 2) == 3\nassert add(2, 2) == 4\nassert add(0, 0) == 0\n"
MINUS = "def add(a, b):\n    return a - b\n"  # honestly holds only the third assert


def test_per_assert_vector_follows_the_tests(box):
    tests = (
        "import math\n"
        "s = []\n"
        "assert add(1, 2) == 3\n"
        "s.append(add(2, 2))\n"
        "assert s == [4]\n"
        "assert add(2, 2) == 5\n"  # a wrong assert: fails, and the next checks still run
        "try:\n    add(1)\nexcept TypeError:\n    pass\n"
        "else:\n    raise AssertionError('expected TypeError')\n"
        "for x in range(3):\n    assert add(x, 0) == x\n"
        "assert math.isclose(add(0.1, 0.2), 0.3)\n"
    )
    good = "def add(a, b):\n    return a + b\n"
    res = run(box, good, tests, per_assert=True)
    assert res.asserts == (True, True, False, True, True, True)
    assert res.status == "failed"
    assert "5/6 checks held" in res.detail and "tests line 6" in res.detail
    res = run(box, good, "assert add(1, 2) == 3\nassert add(2, 3) == 5\n", per_assert=True)
    assert res.status == "passed" and res.asserts == (True, True)


def test_per_assert_setup_failure_stops_and_timeout_keeps_the_proven_checks(box):
    good = "def add(a, b):\n    return a + b\n"
    res = run(
        box, good, "assert add(1, 2) == 3\nx = add(None, 1)\nassert x == 1\n", per_assert=True
    )
    assert res.asserts == (True, False) and res.status == "error" and "TypeError" in res.detail
    slow = "def add(a, b):\n    while a == 2:\n        pass\n    return a + b\n"
    res = run(box, slow, "assert add(1, 2) == 3\n" + ADD3, timeout=1.5, per_assert=True)
    assert res.status == "timeout" and res.asserts == (True, True, False, False)


def test_per_assert_whole_candidate_failures(box):
    res = run(box, "def add(a, b)\n    return a + b\n", ADD3, per_assert=True)
    assert res.status == "error" and "SyntaxError in candidate" in res.detail
    res = run(box, "raise ValueError('at import')\n", ADD3, per_assert=True)
    assert res.status == "error" and res.asserts == (False, False, False)
    assert run(box, "import ctypes", ADD3, per_assert=True).status == "rejected"


FORGERIES = {
    "print a fake vector": MINUS
    + 'print(\'{"status": "passed", "asserts": [true, true, true]}\')\n',
    "forged frames on every descriptor": MINUS + "import os\nfor fd in range(3, 256):\n    try:\n"
    "        for i in range(3):\n            os.write(fd, b'x' * 16 + b'A' + i.to_bytes(4, 'big'))\n"
    "        os.write(fd, b'x' * 16 + b'D' + (3).to_bytes(4, 'big'))\n"
    "    except OSError:\n        pass\n",
    "forged frames from inside a check": (
        "import os\ndef add(a, b):\n    for fd in range(3, 256):\n        try:\n"
        "            os.write(fd, b'\\0' * 16 + b'A' + (1).to_bytes(4, 'big'))\n"
        "        except OSError:\n            pass\n    return a - b\n"
    ),
    "exit 0 after the first check": (
        "import os\ncalls = []\ndef add(a, b):\n    calls.append(1)\n"
        "    if len(calls) == 2:\n        getattr(os, '_e' + 'xit')(0)\n    return a + b\n"
    ),
    "fork so that a copy holds the other asserts": (
        "import os\ndef add(a, b):\n    return a + b if os.fork() == 0 else a - b\n"
    ),
    "builtins.exec no-op": MINUS + "import builtins\nbuiltins.exec = lambda *a, **k: None\n",
    "forge the audit events": MINUS
    + "import sys\nfor i in range(3):\n    sys.audit('verify.held', i)\nsys.audit('verify.done', 3)\n",
    "rebind comparison helper": (
        "def add(a, b):\n    g = globals()\n    for k in list(g):\n"
        "        if k.startswith('_verify_cmp_'):\n            g[k] = lambda *x: True\n"
        "    return a - b\n"
    ),
}
HONEST = {  # what each candidate's own answers hold, asserts in ADD3 order
    "exit 0 after the first check": (True, False, False),
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_per_assert_report_cannot_be_forged(box, name):
    res = run(box, FORGERIES[name], ADD3, per_assert=True)
    honest = HONEST.get(name, (False, False, True))
    assert res.status != "passed", (name, res)
    assert len(res.asserts) == 3
    forged = [
        j for j, (got, ok) in enumerate(zip(res.asserts, honest, strict=True)) if got and not ok
    ]
    assert forged == [], (name, res)
    if name in ("print a fake vector", "builtins.exec no-op", "forge the audit events"):
        assert res.asserts == honest  # nothing the candidate did touched the real proofs


# --- pure parts: no sandbox needed ------------------------------------------------------------


def test_check_flags_tell_checks_from_setup():
    import ast

    tests = (
        "import math\n"
        "def helper(x):\n    assert x\n    return x\n"
        "s = helper([1])\n"
        "assert add(1, 2) == 3\n"
        "try:\n    add(1)\nexcept TypeError:\n    pass\nelse:\n    raise AssertionError('x')\n"
        "for x in range(2):\n    assert add(x, 0) == x\n"
        "if True:\n    y = 1\n"
        "s.append(2)\n"
        "with open('/dev/null') as f:\n    f.read()\n"
    )
    assert sandbox_program.check_flags(ast.parse(tests)) == [
        False,  # import
        False,  # a helper holding an assert is a definition, not a check
        False,
        True,
        True,  # try/else raise AssertionError
        True,  # a loop of asserts
        False,  # an if without assert or raise
        False,
        False,
    ]
    assert sandbox_program.count_checks(tests) == 3
    assert sandbox_program.count_checks("assert (") == 0


def test_read_proofs_accepts_only_a_prefix_of_token_frames():
    tok = bytes(range(16))

    def frame(kind: bytes, i: int) -> bytes:
        return tok + kind + i.to_bytes(4, "big")

    detail = b'R{"status": "failed", "detail": "x"}'
    ok = frame(b"A", 0) + frame(b"A", 2) + frame(b"D", 3) + detail
    assert sandbox_program.read_proofs(ok, tok, 3) == ([True, False, True], True, detail)
    # anything before the first frame, a wrong token, or a truncated frame proves nothing
    assert sandbox_program.read_proofs(b"x" + ok, tok, 3)[:2] == ([False] * 3, False)
    forged = bytes(16) + b"A" + (1).to_bytes(4, "big")
    assert sandbox_program.read_proofs(forged + ok, tok, 3)[:2] == ([False] * 3, False)
    assert sandbox_program.read_proofs(frame(b"A", 0)[:-1], tok, 3)[:2] == ([False] * 3, False)
    # indices must rise and stay in range; the end frame must count every check
    assert sandbox_program.read_proofs(frame(b"A", 2) + frame(b"A", 0), tok, 3)[0] == [
        False,
        False,
        True,
    ]
    assert sandbox_program.read_proofs(frame(b"A", 7), tok, 3)[0] == [False] * 3
    assert sandbox_program.read_proofs(frame(b"D", 2), tok, 3)[1] is False
    # frames after the end are not read
    held, done, rest = sandbox_program.read_proofs(frame(b"D", 3) + frame(b"A", 1), tok, 3)
    assert (held, done, rest) == ([False] * 3, True, frame(b"A", 1))


@pytest.mark.parametrize(
    "program, why",
    [
        ("import ctypes\n", "imports ctypes"),
        ("from gc import get_objects\n", "imports gc"),
        ("import os\nos._exit(0)\n", "calls os._exit"),
        ("exit()\n", "calls exit()"),
        ("import sys\nsys.excepthook = print\n", "replaces sys.excepthook"),
        (
            "class E:\n    def __eq__(self, o):\n        return True\n",
            "defines __eq__ that always returns True",
        ),
        ("def add(a, b):\n    return a + b\n", None),
        ("def add(a, b)\n", None),  # a syntax error is reported by running, with its line
    ],
)
def test_precheck(program, why):
    assert execution.precheck(program) == why
