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

from ideaforge.run import sandbox
from ideaforge.run.sandbox import is_secret_name, run_sandboxed, scrubbed_env

PY = sys.executable


@pytest.fixture(params=["namespaces", "plain"])
def isolation(request, monkeypatch) -> str:
    """Run a test with the strongest isolation available and again with namespaces switched off."""
    sandbox.isolation_prefix.cache_clear()
    if request.param == "plain":
        monkeypatch.setenv("IDEAFORGE_NO_NAMESPACES", "1")
    else:
        monkeypatch.delenv("IDEAFORGE_NO_NAMESPACES", raising=False)
    name = sandbox.isolation_prefix()[0]
    if request.param == "namespaces" and name == "none":
        pytest.skip("no Linux namespaces on this machine")
    yield name
    sandbox.isolation_prefix.cache_clear()


def _alive_with(token: str) -> list[int]:
    """Pids of live (non-zombie) processes whose command line contains ``token``."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if token.encode() in (d / "cmdline").read_bytes():
                pids.append(int(d.name))
        except OSError:
            continue
    return pids


def _run(code: str, tmp_path: Path, **kw) -> tuple[sandbox.SandboxResult, str]:
    log = tmp_path / f"{uuid.uuid4().hex}.log"
    kw.setdefault("timeout_s", 20)
    res = run_sandboxed([PY, "-c", code], tmp_path, scrubbed_env({}), log_path=log, **kw)
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


def test_timeout_kills_child_and_grandchild(tmp_path, isolation):
    token = f"grandchild-{uuid.uuid4().hex}"
    code = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1000)', '{token}'])\n"
        "print('started', flush=True)\n"
        "time.sleep(1000)\n"
    )
    t = time.monotonic()
    res, out = _run(code, tmp_path, timeout_s=1.0, grace_s=0.5)
    assert res.timed_out and res.returncode != 0
    assert "started" in out
    assert time.monotonic() - t < 6
    time.sleep(0.2)
    assert _alive_with(token) == []


def test_setsid_grandchild_dies_in_pid_namespace(tmp_path, isolation):
    if "pidns" not in isolation:
        pytest.skip("a process that leaves the session is only caught by a PID namespace")
    token = f"escaper-{uuid.uuid4().hex}"
    code = (
        "import subprocess, sys\n"
        f"subprocess.Popen(['setsid', sys.executable, '-c', 'import time; time.sleep(1000)', '{token}'])\n"
        "import time; time.sleep(0.3)\n"
    )
    res, _ = _run(code, tmp_path, timeout_s=10)
    assert res.returncode == 0
    time.sleep(0.2)
    assert _alive_with(token) == []


def test_output_flood_is_cut(tmp_path, isolation):
    code = "import sys\nwhile True:\n    sys.stdout.write('x' * 1000 + '\\n')\n"
    t = time.monotonic()
    res, out = _run(code, tmp_path, max_output_bytes=100_000, timeout_s=30, grace_s=0.5)
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


def test_cpu_time_limit(tmp_path, isolation):
    res, _ = _run("while True: pass", tmp_path, cpu_time_s=1, timeout_s=30)
    assert res.returncode == -signal.SIGXCPU
    assert not res.timed_out


def test_core_dumps_disabled_and_limits_set(tmp_path):
    code = "import resource; print(resource.getrlimit(resource.RLIMIT_CORE), resource.getrlimit(resource.RLIMIT_AS))"
    res, out = _run(code, tmp_path, memory_mb=4096)
    assert res.returncode == 0
    assert f"(0, 0) ({4096 * 1024 * 1024}, {4096 * 1024 * 1024})" in out


def test_sigterm_reaches_the_command(tmp_path, isolation):
    """On timeout the command gets SIGTERM first (a chance to clean up), then SIGKILL."""
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('got term', flush=True), sys.exit(3)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(1000)\n"
    )
    res, out = _run(code, tmp_path, timeout_s=1.0, grace_s=5)
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


def test_no_network(tmp_path, isolation):
    res, out = _run("import socket; print(sorted(n for _, n in socket.if_nameindex()))", tmp_path)
    assert res.returncode == 0
    if isolation == "none":
        assert not res.net_isolated
    else:
        assert res.net_isolated
        assert "['lo']" in out


def test_network_allowed_for_prepare(tmp_path, isolation):
    res, _ = _run("pass", tmp_path, network=True)
    assert res.ok and not res.net_isolated


def test_missing_executable(tmp_path, isolation):
    log = tmp_path / "x.log"
    res = run_sandboxed(["/nonexistent/python"], tmp_path, scrubbed_env({}), 5, log_path=log)
    assert res.returncode == 127 and "cannot start" in log.read_text()


def test_empty_argv_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="empty argv"):
        run_sandboxed([], tmp_path, {}, 5)


def test_no_orphans_after_normal_exit(tmp_path, isolation):
    """A command that exits 0 while its child still runs: the child is killed too."""
    token = f"leftover-{uuid.uuid4().hex}"
    code = f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1000)', '{token}'])"
    res, _ = _run(code, tmp_path, timeout_s=10)
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
    from ideaforge.run.sandbox import run_sandboxed, scrubbed_env

    code = (
        "import socket; a = socket.socket(); a.bind(('127.0.0.1', 0)); a.listen(); "
        "b = socket.create_connection(a.getsockname(), timeout=5); print('loopback ok')"
    )
    log = tmp_path / "log"
    res = run_sandboxed([sys.executable, "-c", code], tmp_path, scrubbed_env(), 30, log_path=log)
    assert res.ok, log.read_text()
    assert "loopback ok" in log.read_text()
