"""The sandbox contains hostile code: each attack ends as a failed run with a named reason,
within its time limit, leaving no process, file or secret behind on the host."""

from __future__ import annotations

import errno
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from exectune_jax import sandbox

FAST = 2.0  # timeout for hostile snippets: long enough to start, short enough to wait for


def run(code: str, **kwargs) -> sandbox.SandboxResult:
    kwargs.setdefault("timeout_s", FAST)
    return sandbox.run(textwrap.dedent(code), **kwargs)


def processes_in(directory: str) -> list[int]:
    """Live processes whose working directory is inside `directory` (zombies excluded)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if cwd.startswith(directory) and state != "Z":
            found.append(int(entry))
    return found


@pytest.fixture
def waits(monkeypatch) -> list[tuple[float, bool]]:
    """(timeout given, whether it ran out) for each wall-clock wait the sandbox made on a run."""
    seen = []
    wait = sandbox._wait_then_kill_group

    def recorded(proc, timeout_s):
        timed_out = wait(proc, timeout_s)
        seen.append((timeout_s, timed_out))
        return timed_out

    monkeypatch.setattr(sandbox, "_wait_then_kill_group", recorded)
    return seen


def wait_gone(directory: str, seconds: float = 60.0) -> list[int]:
    """The processes still in `directory` once they are gone or `seconds` passed (a hang guard:
    killed processes leave at once, but a loaded machine may take a while to reap them)."""
    deadline = time.monotonic() + seconds
    while (left := processes_in(directory)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


# ---------------------------------------------------------------- ordinary programs


def test_program_that_runs_to_its_end_passes_with_its_output():
    result = run("print('hello'); import sys; print('oops', file=sys.stderr)")
    assert (result.passed, result.reason, result.returncode) == (True, "ok", 0)
    assert result.stdout == "hello\n" and result.stderr == "oops\n"


@pytest.mark.parametrize(
    "code, reason",
    [
        ("assert 1 + 1 == 3", "assertion"),
        ("raise ValueError('bad value')", "exception: ValueError: bad value"),
        ("def f(:\n    pass", "syntax_error"),
        ("import sys\nsys.exit(0)\nassert False", "early_exit"),
        ("import os\nos._exit(0)\nassert False", "early_exit"),
        ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", "killed: SIGSEGV"),
    ],
)
def test_each_way_of_failing_has_its_own_name(code, reason):
    result = run(code)
    assert not result.passed
    assert result.reason == reason


def test_leaving_early_cannot_skip_the_tests_appended_after_the_code():
    solution = "import os\ndef add(a, b):\n    return 0\nos._exit(0)\n"
    result = run(solution + "assert add(2, 2) == 4\n")
    assert (result.passed, result.reason) == (False, "early_exit")


def test_scratch_directory_is_the_cwd_fresh_each_run_and_removed_afterwards():
    first = run("import os\nopen('note.txt', 'w').write('x')\nprint(os.getcwd())")
    second = run("import os\nprint(os.getcwd(), os.listdir('.'))")
    assert first.passed and second.passed
    first_dir = first.stdout.strip()
    assert not Path(first_dir).exists()
    assert first_dir not in second.stdout and "note.txt" not in second.stdout


def test_extra_files_are_importable_from_the_program():
    result = run("from helper import twice\nassert twice(4) == 8", files={"helper.py": "def twice(x):\n    return 2 * x\n"})
    assert result.passed, result.stderr


def test_file_names_outside_the_scratch_directory_are_refused():
    with pytest.raises(ValueError, match="inside the scratch directory"):
        sandbox.run("pass", files={"../escape.py": ""})


@pytest.mark.parametrize("limit", [{"timeout_s": 0}, {"memory_mb": 0.5}, {"max_processes": -1}, {"scratch_mb": True}])
def test_bad_limits_are_refused_with_the_field_name(limit):
    with pytest.raises(ValueError, match=f"sandbox limit {next(iter(limit))} must be"):
        sandbox.run("pass", **limit)


def test_memory_too_small_for_the_program_is_named_memory_not_a_crash():
    result = run("x = bytes(1 << 20)", memory_mb=4)  # 1 MiB, a fresh mapping whatever the heap holds
    assert (result.passed, result.reason) == (False, "memory")


def test_output_is_cut_at_the_limit_and_marked_truncated():
    result = run("print('y' * 100_000)", output_limit=1000)
    assert result.passed
    assert len(result.stdout) == 1000 and result.truncated


def test_run_many_keeps_order_and_overlaps_the_runs(monkeypatch):
    # each run waits, its child started, until all four have started theirs: one after another,
    # the first would wait alone until the barrier's timeout broke it
    started = threading.Barrier(4, timeout=120)
    wait = sandbox._wait_then_kill_group

    def wait_for_all(proc, timeout_s):
        started.wait()
        return wait(proc, timeout_s)

    monkeypatch.setattr(sandbox, "_wait_then_kill_group", wait_for_all)
    results = sandbox.run_many([f"print({i})" for i in range(4)], workers=4, timeout_s=10)
    assert [r.stdout.strip() for r in results] == ["0", "1", "2", "3"]
    assert all(r.passed for r in results)


# ---------------------------------------------------------------- hostile programs


def test_infinite_loop_is_killed_at_the_wall_clock_limit(waits):
    result = run("while True:\n    pass", timeout_s=1.5)
    assert (result.passed, result.reason) == (False, "timeout")
    assert waits == [(1.5, True)]  # a 1.5 s wait on the child ran out, then the kill


def test_fork_bomb_hits_the_process_limit_and_leaves_no_process_behind():
    result = run(
        """
        import os
        print(os.getcwd(), flush=True)
        while True:
            os.fork()
        """,
        max_processes=16,
    )
    assert (result.passed, result.reason) == (False, "process_limit")
    assert wait_gone(result.stdout.splitlines()[0]) == []
    assert subprocess.run([sys.executable, "-c", "pass"]).returncode == 0  # the host can still fork


def test_background_child_is_killed_when_the_run_ends():
    result = run(
        """
        import os, time
        print(os.getcwd(), flush=True)
        if os.fork() == 0:
            time.sleep(60)
        """
    )
    assert result.passed
    assert wait_gone(result.stdout.strip()) == []


@pytest.mark.skipif(not sandbox.namespaces()["pid"], reason="no PID namespace on this host")
def test_child_that_starts_its_own_session_is_killed_too():
    result = run(
        """
        import os, time
        print(os.getcwd(), flush=True)
        if os.fork() == 0:
            os.setsid()
            time.sleep(60)
        """
    )
    assert result.passed
    assert wait_gone(result.stdout.strip()) == []


def test_memory_hog_fails_with_memory():
    result = run("blocks = []\nwhile True:\n    blocks.append(bytearray(8 * 2**20))", memory_mb=128, timeout_s=10)
    assert (result.passed, result.reason) == (False, "memory")


def test_huge_file_write_stops_at_the_file_size_limit():
    result = run(
        """
        with open('big.bin', 'wb') as f:
            while True:
                f.write(b'0' * 2**20)
        """,
        file_size_mb=4,
    )
    assert (result.passed, result.reason) == (False, "file_size")


def test_printing_forever_stops_at_the_file_size_limit():
    result = run("while True:\n    print('x' * 1000)", file_size_mb=1, output_limit=100)
    assert (result.passed, result.reason) == (False, "file_size")
    assert len(result.stdout) == 100 and result.truncated


@pytest.mark.parametrize(
    "code",
    [
        "open({target!r}, 'w').write('owned')",
        "import os\nos.open({target!r}, os.O_WRONLY | os.O_CREAT)",
        "import shutil\nopen('x', 'w').write('owned')\nshutil.move('x', {target!r})",
        "import os\nos.symlink({target!r}, 'link')\nopen('link', 'w').write('owned')",
    ],
    ids=["open", "os.open", "move", "symlink"],
)
def test_writing_outside_the_scratch_directory_is_blocked(tmp_path, code):
    target = str(tmp_path / "escaped.txt")
    result = run(code.format(target=target))
    assert (result.passed, result.reason) == (False, "filesystem_blocked")
    assert not os.path.exists(target)


def test_a_blocked_write_fails_the_run_even_when_the_program_catches_it(tmp_path):
    target = str(tmp_path / "escaped.txt")
    result = run(f"try:\n    open({target!r}, 'w')\nexcept OSError:\n    pass")
    assert (result.passed, result.reason) == (False, "filesystem_blocked")


@pytest.mark.skipif(os.geteuid() != 0, reason="the kernel-level barrier is the switch from root to nobody")
def test_native_writes_outside_the_scratch_directory_never_reach_the_host(tmp_path):
    targets = [str(tmp_path / "escaped.txt"), str(Path(__file__).parent / f"escaped-{os.getpid()}.txt")]
    result = run(
        f"""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        for target in {[t.encode() for t in targets]!r}:
            print(libc.open(target, 0o101, 0o644), ctypes.get_errno())
        """
    )
    assert result.passed
    assert not any(os.path.exists(t) for t in targets)
    assert all(line.split()[0] == "-1" for line in result.stdout.splitlines())


def test_secrets_in_the_parent_environment_are_not_visible(monkeypatch):
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("EXECTUNE_TEST_API_KEY", secret)
    result = run("import os\nprint(dict(os.environ))\nkey = os.environ['EXECTUNE_TEST_API_KEY']")
    assert (result.passed, result.reason) == (False, "exception: KeyError: 'EXECTUNE_TEST_API_KEY'")
    assert secret not in result.stdout + result.stderr
    threads = {"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"}
    assert set(eval(result.stdout)) == {"PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", *threads}


def test_reading_the_parent_process_environment_is_blocked(monkeypatch):
    secret = "sk-test-fedcba9876543210"
    monkeypatch.setenv("EXECTUNE_TEST_API_KEY", secret)
    result = run(f"print(open('/proc/{os.getpid()}/environ', 'rb').read())")
    assert (result.passed, result.reason) == (False, "filesystem_blocked")
    assert secret not in result.stdout + result.stderr


@pytest.fixture()
def home_secret():
    """A secret file in this user's home directory, where credentials usually live."""
    home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    if not (home.is_dir() and os.access(home, os.W_OK)) or str(home) == "/":
        pytest.skip("this user has no writable home directory")
    secret = "sk-home-0123456789"
    fd, path = tempfile.mkstemp(dir=home, prefix=".exectune-sandbox-test-")
    os.write(fd, secret.encode())
    os.close(fd)
    yield path, secret
    os.unlink(path)


@pytest.mark.parametrize("namespaces", [True, False], ids=["namespaces", "hook-only"])
def test_home_directory_contents_are_out_of_reach(home_secret, namespaces):
    path, secret = home_secret
    for code in (f"print(open({path!r}).read())", f"import os\nprint(os.listdir({os.path.dirname(path)!r}))"):
        result = run(code, namespaces=namespaces)
        assert secret not in result.stdout + result.stderr
        assert os.path.basename(path) not in result.stdout
    assert not run(f"print(open({path!r}).read())", namespaces=namespaces).passed


@pytest.mark.skipif(not sandbox.namespaces()["mount"], reason="no mount namespace on this host")
def test_scratch_space_is_capped_in_total_not_only_per_file():
    result = run(
        """
        i = 0
        while True:
            with open(f'part{i}', 'wb') as f:
                f.write(b'0' * 2**20)
            i += 1
        """,
        scratch_mb=8,
    )
    assert (result.passed, result.reason) == (False, "disk_full")


@pytest.fixture()
def listener():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.3)
    yield server
    server.close()


def accepted_anything(server: socket.socket) -> bool:
    try:
        conn, _ = server.accept()
    except socket.timeout:
        return False
    conn.close()
    return True


@pytest.mark.parametrize(
    "code",
    [
        "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'leak')",
        "import socket\nsocket.getaddrinfo('example.com', 80)",
        "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/', timeout=1)",
    ],
    ids=["connect", "dns", "urllib"],
)
def test_opening_a_socket_is_blocked(listener, code):
    result = run(code.format(port=listener.getsockname()[1]))
    assert (result.passed, result.reason) == (False, "network_blocked")
    assert not accepted_anything(listener)


def test_without_namespaces_the_hook_still_blocks_sockets_and_limits_still_hold(listener, waits):
    port = listener.getsockname()[1]
    connect = run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)", namespaces=False)
    assert (connect.passed, connect.reason, connect.network_isolated) == (False, "network_blocked", False)
    assert not accepted_anything(listener)
    loop = run("while True:\n    pass", namespaces=False, timeout_s=1.0)
    assert loop.reason == "timeout" and waits[-1] == (1.0, True)
    bomb = run("import os\nprint(os.getcwd(), flush=True)\nwhile True:\n    os.fork()", namespaces=False)
    assert bomb.reason == "process_limit"
    assert wait_gone(bomb.stdout.splitlines()[0]) == []


def test_program_execution_is_blocked():
    result = run("import subprocess\nsubprocess.run(['true'])")
    assert (result.passed, result.reason) == (False, "exec_blocked")


@pytest.mark.skipif(not sandbox.network_isolated(), reason="no network namespace on this host")
def test_native_connect_bypassing_the_hook_cannot_reach_the_host(listener):
    port = listener.getsockname()[1]
    result = run(
        f"""
        import ctypes, struct
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.socket(2, 1, 0)
        addr = struct.pack('=H', 2) + struct.pack('!H', {port}) + bytes([127, 0, 0, 1]) + bytes(8)
        assert libc.connect(fd, addr, len(addr)) == 0, ctypes.get_errno()
        """
    )
    assert (result.passed, result.reason) == (False, "assertion")
    assert result.network_isolated
    assert not accepted_anything(listener)


def test_network_isolation_is_reported_the_same_by_probe_and_run():
    assert run("pass").network_isolated is sandbox.network_isolated()


# ---------------------------------------------------------------- naming rules (pure)


@pytest.mark.parametrize(
    "timed_out, returncode, record, reason",
    [
        (True, -signal.SIGKILL, {"reason": "ok"}, "timeout"),
        (False, 1, {"reason": "memory"}, "memory"),
        (False, -signal.SIGXCPU, None, "timeout"),
        (False, 128 + signal.SIGXFSZ, None, "file_size"),
        (False, -signal.SIGKILL, None, "killed: SIGKILL"),
        (False, 0, None, "early_exit"),
    ],
)
def test_classify_names_the_end_from_what_the_host_saw(timed_out, returncode, record, reason):
    assert sandbox.classify(timed_out, returncode, record) == reason


@pytest.mark.parametrize(
    "exc, reason",
    [
        (OSError(errno.EFBIG, "File too large"), "file_size"),
        (BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable"), "process_limit"),
        (RuntimeError("can't start new thread"), "process_limit"),
        (MemoryError(), "memory"),
        (IndentationError("unexpected indent"), "syntax_error"),
        (KeyError("k"), "exception: KeyError: 'k'"),
        (sandbox.SandboxViolation("network_blocked", "socket.connect"), "network_blocked"),
    ],
)
def test_reason_for_maps_exceptions_to_names(exc, reason):
    assert sandbox.reason_for(exc) == reason


# ---------------------------------------------------------------- import directories under /tmp

VENV_PROBE = """
import json, os, sys
from exectune_jax import sandbox

site = sys.argv[1]
result = sandbox.run(
    "import ctypes, os\\n"
    "import probe_pkg\\n"
    "print('value', probe_pkg.VALUE)\\n"
    "fd = ctypes.CDLL(None, use_errno=True).open(probe_pkg.__file__.encode(), os.O_WRONLY | os.O_TRUNC)\\n"
    "print('native write', 'refused' if fd < 0 else 'allowed')\\n",
    timeout_s=10,
)
print(json.dumps({"packages": sandbox._package_dirs(), "passed": result.passed, "reason": result.reason,
                  "stdout": result.stdout, "stderr": result.stderr[-2000:]}))
"""


@pytest.fixture()
def venv_under_tmp():
    """A real virtual environment inside /tmp, one package in its site-packages."""
    root = Path(tempfile.mkdtemp(prefix="exectune-venv-test-", dir="/tmp"))
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
        python = root / "venv" / "bin" / "python"
        site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
        (Path(site) / "probe_pkg").mkdir(parents=True)
        (Path(site) / "probe_pkg" / "__init__.py").write_text("VALUE = 42\n")
        yield python, site
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=True)


@pytest.mark.skipif(not sandbox.namespaces()["mount"], reason="no mount namespace on this host")
def test_a_venv_under_tmp_stays_importable_and_read_only_under_the_fresh_tmp(venv_under_tmp):
    python, site = venv_under_tmp
    assert site.startswith("/tmp/")
    repo = str(Path(__file__).resolve().parents[1])
    found = subprocess.run([str(python), "-c", VENV_PROBE, site], capture_output=True, text=True,
                           env={"PATH": os.environ["PATH"], "PYTHONPATH": repo}, timeout=60)
    assert found.returncode == 0, found.stderr
    report = json.loads(found.stdout.splitlines()[-1])
    assert site in report["packages"]  # the sandbox of that venv really imports from under /tmp
    assert (report["passed"], report["reason"]) == (True, "ok"), report["stderr"]
    assert "value 42" in report["stdout"]
    assert "native write refused" in report["stdout"]
    assert (Path(site) / "probe_pkg" / "__init__.py").read_text() == "VALUE = 42\n"
