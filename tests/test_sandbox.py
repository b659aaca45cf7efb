"""The sandbox: scrubbed environment, timeouts that leave no orphans, output limits, cancellation, no network."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from ideaforge.run import identity as sandbox_identity
from ideaforge.run import sandbox
from ideaforge.run.sandbox import Box, Limits, is_secret_name, run_sandboxed, scrubbed_env

PY = sys.executable


@pytest.fixture(params=["bwrap", "unsafe"])
def isolation(request, monkeypatch) -> str:
    """Run a test in the sandbox and again with the operator's explicit opt-out (mechanics both must keep)."""
    sandbox.check_sandbox.cache_clear()
    if request.param == "unsafe":
        monkeypatch.setenv("IDEAFORGE_UNSAFE_NO_SANDBOX", "1")
    else:
        monkeypatch.delenv("IDEAFORGE_UNSAFE_NO_SANDBOX", raising=False)
    assert sandbox.check_sandbox() == request.param  # a missing sandbox fails here, it is never skipped
    yield request.param
    sandbox.check_sandbox.cache_clear()


def _alive_with(token: str) -> list[int]:
    """Pids of live (non-zombie) processes whose command line contains ``token``."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if token.encode() in (d / "cmdline").read_bytes() and "State:\tZ" not in (d / "status").read_text():
                pids.append(int(d.name))
        except OSError:
            continue
    return pids


_BOX_KEYS = {"writable", "readonly", "devices", "network", "tmp_bytes"}


def _run(code: str, tmp_path: Path, **kw) -> tuple[sandbox.SandboxResult, str]:
    log = tmp_path / f"{uuid.uuid4().hex}.log"
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    box = Box(cwd=work, writable=[work], **{k: kw.pop(k) for k in list(kw) if k in _BOX_KEYS})
    run_kw = {k: kw.pop(k) for k in ("on_line", "cancel_event", "grace_s") if k in kw}
    kw.setdefault("wall_s", 20)
    res = run_sandboxed([PY, "-c", code], box, scrubbed_env({}), Limits(**kw), log_path=log, **run_kw)
    return res, log.read_text(errors="replace") if log.exists() else ""


# ------------------------------------------------------------------------------------------ environment


def test_scrubbed_env_keeps_whitelist_and_drops_secrets():
    base = {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "TMPDIR": "/tmp",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_REGION": "eu",
        "ANTHROPIC_API_KEY": "a",
        "OPENAI_API_KEY": "o",
        "OPENAI_BASE_URL": "http://x",
        "MLFLOW_TRACKING_URI": "http://m",
        "TEMPORAL_ADDRESS": "t:1",
        "IDEAFORGE_HOME": "/h",
        "IDEAFORGE_S3_ENDPOINT": "s3:9000",
        "IDEAFORGE_SEED": "3",
        "GITHUB_TOKEN": "g",
        "DB_PASSWORD": "p",
        "MINIO_ROOT_USER": "u",
        "RANDOM_THING": "r",
        "HF_TOKEN": "h",
        "HF_HOME": "/hf",
    }
    env = scrubbed_env(
        {"IDEAFORGE_STEPS": "40", "MY_API_KEY": "k", "AWS_REGION": "x", "OMP_NUM_THREADS": "1"}, base
    )
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "TMPDIR": "/tmp",
        "IDEAFORGE_SEED": "3",
        "HF_HOME": "/hf",
        "IDEAFORGE_STEPS": "40",
        "OMP_NUM_THREADS": "1",
    }


@pytest.mark.parametrize(
    "name", ["API_KEY", "hf_token", "Db_Password", "GOOGLE_APPLICATION_CREDENTIALS", "X_SECRET"]
)
def test_secret_names(name):
    assert is_secret_name(name)


def test_secrets_never_reach_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-very-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-very-secret")
    res, out = _run("import os; print(sorted(os.environ.items()))", tmp_path)
    assert res.returncode == 0
    assert "very-secret" not in out and "PATH" in out


# ------------------------------------------------------------------------------------------ limits


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_timeout_kills_child_and_grandchild(tmp_path, isolation):
    token = f"grandchild-{uuid.uuid4().hex}"
    code = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1000)', '{token}'])\n"
        "print('started', flush=True)\n"
        "time.sleep(1000)\n"
    )
    t = time.monotonic()
    res, out = _run(code, tmp_path, wall_s=1.0, grace_s=0.5)
    assert res.timed_out and res.returncode != 0
    assert "started" in out
    assert time.monotonic() - t < 6
    time.sleep(0.2)
    assert _alive_with(token) == []


def test_setsid_grandchild_dies_with_the_sandbox(tmp_path):
    token = f"escaper-{uuid.uuid4().hex}"
    code = (
        "import subprocess, sys\n"
        f"subprocess.Popen(['setsid', sys.executable, '-c', 'import time; time.sleep(1000)', '{token}'])\n"
        "import time; time.sleep(0.3)\n"
    )
    res, _ = _run(code, tmp_path, wall_s=10)
    assert res.returncode == 0 and res.isolation == "bwrap"
    time.sleep(0.2)
    assert _alive_with(token) == []


def test_output_flood_is_cut(tmp_path, isolation):
    code = "import sys\nwhile True:\n    sys.stdout.write('x' * 1000 + '\\n')\n"
    t = time.monotonic()
    res, out = _run(code, tmp_path, output_bytes=100_000, wall_s=30, grace_s=0.5)
    assert res.output_limited and not res.timed_out
    assert time.monotonic() - t < 10
    assert 100_000 <= len(out) < 100_300
    assert "output limit" in out


def test_cancel_event_stops_promptly(tmp_path, isolation):
    ev = threading.Event()
    threading.Timer(0.3, ev.set).start()
    t = time.monotonic()
    res, _ = _run("import time; time.sleep(1000)", tmp_path, cancel_event=ev, grace_s=0.5)
    assert res.cancelled and not res.timed_out
    assert time.monotonic() - t < 3


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_cpu_time_limit_of_one_process(tmp_path, isolation):
    res, _ = _run("while True: pass", tmp_path, cpu_s=1, wall_s=30)
    assert res.returncode == -signal.SIGXCPU or res.cpu_limited
    assert not res.timed_out and not res.ok


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_cpu_time_limit_of_the_whole_tree(tmp_path):
    """Two busy processes of 1.5 s each stay under a per-process limit of 2 s but not under the tree's."""
    code = (
        "import multiprocessing as mp, time\n"
        "def spin():\n"
        "    t = time.process_time()\n"
        "    while time.process_time() - t < 1.5: pass\n"
        "ps = [mp.Process(target=spin) for _ in range(2)]\n"
        "[p.start() for p in ps]; [p.join() for p in ps]\n"
        "t = time.process_time()\n"
        "while time.process_time() - t < 1.5: pass\n"
        "print('survived', flush=True)\n"
    )
    res, out = _run(code, tmp_path, cpu_s=2, wall_s=60)
    assert res.cpu_limited and "survived" not in out, out


def test_core_dumps_disabled_and_limits_set(tmp_path):
    code = (
        "import resource; print(resource.getrlimit(resource.RLIMIT_CORE), "
        "resource.getrlimit(resource.RLIMIT_NPROC), resource.getrlimit(resource.RLIMIT_FSIZE))"
    )
    res, out = _run(code, tmp_path, max_pids=64, file_bytes=10**9)
    assert res.returncode == 0
    assert f"(0, 0) (64, 64) ({10**9}, {10**9})" in out


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_sigterm_reaches_the_command(tmp_path, isolation):
    """On timeout the command gets SIGTERM first (a chance to clean up), then SIGKILL."""
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('got term', flush=True), sys.exit(3)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(1000)\n"
    )
    res, out = _run(code, tmp_path, wall_s=1.0, grace_s=5)
    assert res.timed_out and res.returncode == 3
    assert "got term" in out


def test_lines_are_streamed(tmp_path):
    lines: list[str] = []
    res, _ = _run(
        "print('a'); print('b\\r'); import sys; sys.stdout.write('tail-no-newline')",
        tmp_path,
        on_line=lines.append,
    )
    assert res.ok
    assert lines == ["a", "b", "tail-no-newline"]


def test_long_lines_skip_on_line_but_reach_the_log(tmp_path):
    lines: list[str] = []
    code = "import sys; sys.stdout.write('a' * 3_000_000 + '\\nshort\\n' + 'b' * 10)"
    t = time.monotonic()
    res, out = _run(code, tmp_path, on_line=lines.append)
    assert res.ok and time.monotonic() - t < 5
    assert lines == ["short", "b" * 10]
    assert len(out) == 3_000_000 + 6 + 1 + 10


def test_no_network(tmp_path):
    res, out = _run("import socket; print(sorted(n for _, n in socket.if_nameindex()))", tmp_path)
    assert res.returncode == 0 and res.isolation == "bwrap"
    assert "['lo']" in out


def test_network_allowed_for_prepare(tmp_path):
    res, out = _run("import socket; print(sorted(n for _, n in socket.if_nameindex()))", tmp_path, network=True)
    assert res.ok and out.strip() != "['lo']"


def test_missing_executable(tmp_path, isolation):
    log = tmp_path / "x.log"
    res = run_sandboxed(["/nonexistent/python"], Box(cwd=tmp_path), scrubbed_env({}), Limits(wall_s=5), log_path=log)
    assert res.returncode != 0 and not res.ok


def test_empty_argv_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="empty argv"):
        run_sandboxed([], Box(cwd=tmp_path), {}, Limits(wall_s=5))


def test_no_orphans_after_normal_exit(tmp_path, isolation):
    """A command that exits 0 while its child still runs: the child is killed too."""
    token = f"leftover-{uuid.uuid4().hex}"
    code = f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1000)', '{token}'])"
    res, _ = _run(code, tmp_path, wall_s=10)
    assert res.returncode == 0
    time.sleep(0.2)
    assert _alive_with(token) == []
    assert os.getpgid(0)  # we are untouched


def test_budget_variables_are_not_mistaken_for_secrets():
    """Whole-word matching: a profile's token budget passes, credentials with TOKEN/KEY words do not."""
    from ideaforge.run.sandbox import scrubbed_env

    env = scrubbed_env({"IDEAFORGE_TRAIN_TOKENS": "200000", "HF_TOKEN": "hf_x", "MY_API_KEY": "k"}, base={})
    assert env.get("IDEAFORGE_TRAIN_TOKENS") == "200000"
    assert "HF_TOKEN" not in env and "MY_API_KEY" not in env


def test_loopback_works_inside_the_network_namespace(tmp_path):
    """Isolated from the network, but 127.0.0.1 is up: torchrun's rendezvous and local servers need it."""
    code = (
        "import socket; a = socket.socket(); a.bind(('127.0.0.1', 0)); a.listen(); "
        "b = socket.create_connection(a.getsockname(), timeout=5); print('loopback ok')"
    )
    res, out = _run(code, tmp_path)
    assert res.ok and res.isolation == "bwrap", out
    assert "loopback ok" in out


def test_runs_as_its_own_unprivileged_uid_without_capabilities(tmp_path):
    code = (
        "import os; s = open('/proc/self/status').read()\n"
        "print(os.getuid(), os.getgid(), os.getgroups(), [ln for ln in s.splitlines() if ln.startswith('CapEff')])"
    )
    res, out = _run(code, tmp_path)
    uid = int(out.split()[0])
    assert res.ok and uid >= sandbox_identity.UID_BASE and f"{uid} {uid} []" in out
    assert "0000000000000000" in out


def test_refuses_to_run_when_the_sandbox_is_missing(tmp_path, monkeypatch):
    """No silent fallback: without bubblewrap a command is refused with the cause and the fix."""
    sandbox.check_sandbox.cache_clear()
    monkeypatch.delenv("IDEAFORGE_UNSAFE_NO_SANDBOX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on PATH
    try:
        with pytest.raises(sandbox.SandboxUnavailable, match="apt-get install -y bubblewrap.*IDEAFORGE_UNSAFE"):
            _run("print('ran')", tmp_path)
    finally:
        sandbox.check_sandbox.cache_clear()


def test_refuses_without_root(monkeypatch):
    sandbox.check_sandbox.cache_clear()
    monkeypatch.delenv("IDEAFORGE_UNSAFE_NO_SANDBOX", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    try:
        with pytest.raises(sandbox.SandboxUnavailable, match="must run as root"):
            sandbox.check_sandbox()
    finally:
        sandbox.check_sandbox.cache_clear()


def test_unsafe_opt_out_is_tagged(tmp_path, monkeypatch):
    sandbox.check_sandbox.cache_clear()
    monkeypatch.setenv("IDEAFORGE_UNSAFE_NO_SANDBOX", "1")
    try:
        res, _ = _run("print('ran')", tmp_path)
        assert res.ok and res.unsafe and res.isolation == "unsafe"
    finally:
        sandbox.check_sandbox.cache_clear()


def test_training_worker_refuses_to_start_without_a_sandbox(monkeypatch):
    """workers/main.py: serving a training queue where the sandbox is missing is a startup error (cause + fix)."""
    from ideaforge.workers import main as worker_main

    def unavailable() -> str:
        raise sandbox.SandboxUnavailable("bwrap is not installed: apt-get install -y bubblewrap")

    monkeypatch.setattr(worker_main, "check_sandbox", unavailable)
    with pytest.raises(SystemExit, match="refusing to serve training queue cpu-train.*apt-get install -y bubblewrap"):
        worker_main.require_sandbox("cpu-train")
