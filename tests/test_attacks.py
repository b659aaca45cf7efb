"""Attacks by generated training code, run through the real runner: each must be blocked, and an honest run
beside it must still score exactly the honest metric (issue 11).

Every attack is a ``train.py`` of the toy env whose ``main()`` first runs the attack and prints what it achieved
(``ATTACK {...}``), then trains honestly. The env is a copy of ``toy_quad`` with small limits for the whole
process tree. A missing mechanism (no bubblewrap, no cgroup, not root) makes these tests fail, never skip.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from ideaforge.config import Settings
from ideaforge.models import ArtifactRef, Progress, RunRequest, RunResult
from ideaforge.patch.package import pack_tree
from ideaforge.research_envs.registry import EnvError, load_env
from ideaforge.run import runner as runner_module
from ideaforge.run.runner import ExperimentRunner
from ideaforge.run.sandbox import check_sandbox
from ideaforge.store.artifacts import ArtifactCorrupt, LocalStore

ENVS = Path(__file__).resolve().parent / "fixtures" / "envs"
TOY = load_env("toy_quad", [ENVS])
BASELINE_METRIC = 0.2108264968077948  # seed 0, default profile (as in test_runner.py)
LIMITS = """time_limit_s = 60
max_processes = 64
memory_limit_mb = 400
max_write_mb = 100
max_checkpoint_mb = 50
"""


@dataclass
class Rig:
    settings: Settings
    store: LocalStore
    runner: ExperimentRunner
    tmp: Path
    env_root: Path

    def code(self, attack: str = "", files: dict[str, str] | None = None) -> ArtifactRef:
        """The toy baseline whose main() first runs ``attack`` (a function body), plus extra files."""
        tree = self.tmp / f"tree-{uuid.uuid4().hex[:8]}"
        shutil.copytree(self.env_root / "baseline", tree, ignore=shutil.ignore_patterns("__pycache__"))
        if attack:
            train = (tree / "train.py").read_text()
            body = "".join(f"    {ln}\n" for ln in attack.strip("\n").splitlines())
            train = train.replace(
                "def main() -> None:\n",
                "def attack() -> dict:\n    import json, os, sys, glob, socket, time\n    found = {}\n"
                + body
                + "    return found\n\n\ndef main() -> None:\n"
                + "    print('ATTACK ' + json.dumps(attack(), default=str), flush=True)\n",
            )
            (tree / "train.py").write_text(train)
        for rel, content in (files or {}).items():
            (tree / rel).write_text(content)
        return self.store.put_bytes(pack_tree(tree), "code")

    def request(self, code: ArtifactRef, profile: str = "default") -> RunRequest:
        return RunRequest(campaign="t", idea_id=f"campaign-t/e000/i{uuid.uuid4().hex[:4]}", env="toy_quad",
                          code=code, profile=profile)

    def run(self, code: ArtifactRef, profile: str = "default", **kw) -> RunResult:
        return asyncio.run(self.runner.run(self.request(code, profile), **kw))

    def found(self, res: RunResult) -> dict:
        """What the attack reported (from the stored log)."""
        log = self.store.get_text(res.log)
        line = next(ln for ln in log.splitlines() if ln.startswith("ATTACK "))
        return json.loads(line[len("ATTACK ") :])


@pytest.fixture
def rig(tmp_path, monkeypatch) -> Rig:
    monkeypatch.delenv("IDEAFORGE_UNSAFE_NO_SANDBOX", raising=False)
    check_sandbox.cache_clear()
    envs = tmp_path / "envs"
    shutil.copytree(TOY.root, envs / "toy_quad", ignore=shutil.ignore_patterns("__pycache__"))
    toml = envs / "toy_quad" / "env.toml"
    toml.write_text(toml.read_text().replace("time_limit_s = 5\n", LIMITS))
    home = tmp_path / "home"
    settings = Settings(home=home, env_paths=[envs], train_slots=1)
    store = LocalStore(home / "artifacts")
    rig = Rig(settings, store, ExperimentRunner(settings, store, grace_s=0.5), tmp_path, envs / "toy_quad")
    yield rig
    check_sandbox.cache_clear()


def _honest(rig: Rig, res: RunResult) -> None:
    """The attack run itself still trained honestly and got exactly the honest score."""
    assert res.status == "ok", res.error
    assert res.metric == pytest.approx(BASELINE_METRIC, rel=1e-9)
    assert not res.unsafe


def _alive_with(token: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if token.encode() in (d / "cmdline").read_bytes() and "State:\tZ" not in (d / "status").read_text():
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def test_honest_control_run_scores_correctly(rig):
    res = rig.run(rig.code())
    _honest(rig, res)


# ------------------------------------------------------------------------------------------ secrets


def test_secrets_in_env_and_proc_environ_are_not_readable(rig, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-attack-secret-1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-attack-secret-2")
    attack = """
found['env'] = dict(os.environ)
for pid in ['1', str(os.getppid()), 'self', *[p for p in os.listdir('/proc') if p.isdigit()]]:
    try:
        found['proc_' + pid] = open(f'/proc/{pid}/environ', 'rb').read().decode(errors='replace')
    except OSError as e:
        found['proc_' + pid] = repr(e)
found['pids'] = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
"""
    res = rig.run(rig.code(attack))
    _honest(rig, res)
    text = json.dumps(rig.found(res))
    assert "attack-secret" not in text
    assert os.getpid() not in rig.found(res)["pids"]  # the worker is not even visible


# ------------------------------------------------------------------------------------------ network


def test_loopback_tcp_unix_sockets_and_outside_network_are_unreachable(rig, tmp_path):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    path_sock = Path("/tmp") / f"ideaforge-attack-{uuid.uuid4().hex[:8]}.sock"
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(path_sock))
    unix.listen()
    abstract_name = f"\0ideaforge-attack-{uuid.uuid4().hex[:8]}"
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(abstract_name)
    abstract.listen()
    attack = f"""
def try_connect(family, addr):
    s = socket.socket(family)
    s.settimeout(2)
    try:
        s.connect(addr)
        return 'CONNECTED'
    except OSError as e:
        return repr(e)
found['tcp_loopback'] = try_connect(socket.AF_INET, ('127.0.0.1', {port}))
found['unix_tmp'] = try_connect(socket.AF_UNIX, {str(path_sock)!r})
found['unix_abstract'] = try_connect(socket.AF_UNIX, {abstract_name!r})
found['outside'] = try_connect(socket.AF_INET, ('1.1.1.1', 53))
try:
    found['dns'] = socket.getaddrinfo('pypi.org', 443)
except OSError as e:
    found['dns'] = repr(e)
"""
    try:
        res = rig.run(rig.code(attack))
        accepted = []
        for s in (srv, unix, abstract):
            s.settimeout(0.2)
            try:
                accepted.append(s.accept())
            except OSError:
                pass
    finally:
        for s in (srv, unix, abstract):
            s.close()
        path_sock.unlink(missing_ok=True)
    _honest(rig, res)
    found = rig.found(res)
    assert not accepted
    assert all("CONNECTED" not in str(v) for v in found.values()), found
    assert "ConnectionRefused" in found["tcp_loopback"]  # its own loopback, which is up and empty


# ------------------------------------------------------------------------------------------ stores and other attempts


def test_stores_home_and_other_attempts_are_neither_visible_nor_writable(rig):
    home = rig.settings.home
    targets = {
        "mlflow": home / "mlflow.db",
        "temporal": home / "temporal.db",
        "state": home / "artifacts" / "named" / "campaigns" / "c" / "state.json",
        "other_attempt": home / "work" / "other-attempt" / "train" / "out" / "weights.json",
        "other_metric": home / "work" / "other-attempt" / "eval" / "metric" / "metric.json",
    }
    for p in targets.values():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("original")
    paths = {k: str(v) for k, v in targets.items()}
    attack = f"""
for name, path in {paths!r}.items():
    try:
        with open(path, 'a') as f:
            f.write('FORGED')
        found[name] = 'WROTE'
    except OSError as e:
        found[name] = repr(e)
found['home_listing'] = os.listdir({str(home)!r}) if os.path.isdir({str(home)!r}) else None
found['work_listing'] = os.listdir({str(home / "work")!r})
found['store_visible'] = os.path.exists({str(home / "artifacts")!r})
"""
    res = rig.run(rig.code(attack))
    _honest(rig, res)
    found = rig.found(res)
    assert all(p.read_text() == "original" for p in targets.values())
    assert "WROTE" not in json.dumps(found)
    assert len(found["work_listing"]) == 1 and "other-attempt" not in found["work_listing"]  # only its own
    assert found["store_visible"] is False, found


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_concurrent_attempt_cannot_overwrite_another_attempts_metric(rig):
    honest = rig.run(rig.code(), profile="slow")
    attack = """
work = os.path.dirname(os.path.dirname(os.path.dirname(os.environ['IDEAFORGE_OUT'])))
hits = set()
t = time.time()
while time.time() - t < 4:
    for p in glob.glob(work + '/*/eval/metric/*') + glob.glob(work + '/*/train/out/weights.json'):
        try:
            open(p, 'w').write('{"loss": 0.0}' if p.endswith('metric.json') else '{"w": [3.0, -2.0, 1.0, 0.5]}')
            hits.add(p)
        except OSError:
            pass
    time.sleep(0.01)
found['hits'] = sorted(hits)
"""

    async def both() -> tuple[RunResult, RunResult]:
        r = rig.runner
        return await asyncio.gather(
            r.run(rig.request(rig.code(attack), "slow")), r.run(rig.request(rig.code(), "slow"))
        )

    attacked, victim = asyncio.run(both())
    assert victim.status == "ok" and victim.metric == pytest.approx(honest.metric, rel=1e-12)
    assert attacked.status == "ok" and rig.found(attacked)["hits"] == []


# ------------------------------------------------------------------------------------------ evaluator


def test_rewriting_the_pristine_evaluator_is_impossible_and_detected(rig):
    pristine = rig.env_root / "baseline" / "evaluate.py"
    before = pristine.read_text()
    attack = f"""
try:
    open({str(pristine)!r}, 'w').write('import json, os\\nopen(os.environ["IDEAFORGE_METRIC_FILE"], "w").write(json.dumps({{"loss": 1e-9}}))\\n')
    found['pristine'] = 'WROTE'
except OSError as e:
    found['pristine'] = repr(e)
try:
    open('evaluate.py', 'w').write('raise SystemExit(0)\\n')  # its own copy: restored before evaluation
    found['own_copy'] = 'wrote'
except OSError as e:
    found['own_copy'] = repr(e)
"""
    res = rig.run(rig.code(attack))
    _honest(rig, res)
    assert rig.found(res)["pristine"] != "WROTE" and pristine.read_text() == before
    _honest(rig, rig.run(rig.code()))  # and the next unmodified run too
    # a host-side change of the pristine evaluator (not through a run) is caught by the committed lock
    pristine.write_text(before + "\n# changed\n")
    with pytest.raises(EnvError, match="protected.lock"):
        rig.run(rig.code())


def test_a_file_shadowing_a_module_the_evaluator_imports_is_refused(rig):
    forged = "def dumps(*a, **k):\n    return '{\"loss\": 1e-9}'\ndef loads(s):\n    return {'w': [3.0, -2.0, 1.0, 0.5]}\n"
    for name in ("json.py", "math.py", "sitecustomize.py"):
        res = rig.run(rig.code(files={name: forged}))
        assert res.status == "failed" and res.category == "protected_file_touched", (name, res)
        assert name in res.error and "shadow" in res.error
    _honest(rig, rig.run(rig.code()))


def test_evaluator_runs_isolated_even_if_a_shadow_slipped_through(rig, monkeypatch):
    """Defence in depth: with the refusal switched off, `python -I` and the cwd at the end of sys.path still
    make the stdlib's json win over a json.py in the evaluation tree."""
    monkeypatch.setattr(runner_module, "shadowing_files", lambda tree, baseline: [])
    forged = (  # honest enough for training; forges the metric if the evaluator ever imports it
        "import os\n"
        "def loads(s):\n    return eval(s)\n"
        "def dumps(obj, *a, **k):\n"
        "    if os.environ.get('IDEAFORGE_METRIC_FILE'):\n        return '{\"loss\": 1e-9}'\n"
        "    return repr(obj).replace(\"'\", '\"')\n"
    )
    res = rig.run(rig.code(files={"json.py": forged}))
    _honest(rig, res)


def test_sitecustomize_in_site_packages_cannot_be_planted(rig):
    targets = [p for p in sys.path if p.endswith("-packages")]
    attack = f"""
for d in {targets!r}:
    try:
        open(os.path.join(d, 'sitecustomize.py'), 'w').write('import os\\nos.environ["PWNED"] = "1"\\n')
        found[d] = 'WROTE'
    except OSError as e:
        found[d] = repr(e)
"""
    before = {d for d in targets if (Path(d) / "sitecustomize.py").exists()}
    try:
        res = rig.run(rig.code(attack))
        _honest(rig, res)
        assert "WROTE" not in json.dumps(rig.found(res))
        assert {d for d in targets if (Path(d) / "sitecustomize.py").exists()} == before
    finally:
        for d in targets:
            if d not in before:
                (Path(d) / "sitecustomize.py").unlink(missing_ok=True)


def test_prepared_data_and_its_marker_cannot_be_poisoned_and_eval_data_is_invisible(rig):
    attack = """
data = os.environ['IDEAFORGE_DATA']
for name, text in (('problem.json', '{"target": [0, 0, 0, 0], "start": [0, 0, 0, 0]}'), ('../.prepared', '{}')):
    try:
        open(os.path.join(data, name), 'w').write(text)
        found[name] = 'WROTE'
    except OSError as e:
        found[name] = repr(e)
root = os.path.dirname(data)
found['eval_dir'] = os.path.exists(os.path.join(root, 'eval'))
found['eval_var'] = os.environ.get('IDEAFORGE_EVAL_DATA')
found['data_listing'] = os.listdir(data)
"""
    res = rig.run(rig.code(attack))
    _honest(rig, res)
    found = rig.found(res)
    assert "WROTE" not in json.dumps(found)
    assert found["eval_dir"] is False and found["eval_var"] is None and found["data_listing"] == ["problem.json"]
    _honest(rig, rig.run(rig.code()))  # the next honest run is unaffected


@pytest.mark.slow
def test_pickled_checkpoint_cannot_run_code_in_the_evaluator(tmp_path, monkeypatch):
    """tiny_gpt's evaluator loads model.pt with weights_only=True: a pickle that would forge the metric fails."""
    monkeypatch.delenv("IDEAFORGE_UNSAFE_NO_SANDBOX", raising=False)
    settings = Settings(home=tmp_path / "home", train_slots=1)
    store = LocalStore(tmp_path / "artifacts")
    gpt = load_env("tiny_gpt")
    tree = tmp_path / "tree"
    shutil.copytree(gpt.baseline, tree, ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "train.py").write_text(
        "import os, torch\n"
        "class Evil:\n"
        "    def __reduce__(self):\n"
        "        code = \"open(os.environ['IDEAFORGE_METRIC_FILE'], 'w').write('{\\\"val_loss\\\": 0.9}') or exit(0)\"\n"
        "        return (exec, (code,))\n"
        "torch.save({'config': {}, 'state_dict': Evil()}, os.path.join(os.environ['IDEAFORGE_OUT'], 'model.pt'))\n"
    )
    code = store.put_bytes(pack_tree(tree), "code")
    runner = ExperimentRunner(settings, store, grace_s=0.5)
    req = RunRequest(campaign="t", idea_id="pickle", env="tiny_gpt", code=code, profile="smoke")
    res = asyncio.run(runner.run(req))
    assert res.status == "failed" and res.category == "eval_failed", res
    assert "weights_only" in store.get_text(res.log) or "Unsupported" in store.get_text(res.log)


# ------------------------------------------------------------------------------------------ worker


def test_worker_source_cannot_be_backdoored(rig):
    target = Path(runner_module.__file__)
    before = target.read_bytes()
    attack = f"""
try:
    open({str(target)!r}, 'a').write('\\nimport os; os.system("touch /tmp/pwned")\\n')
    found['append'] = 'WROTE'
except OSError as e:
    found['append'] = repr(e)
"""
    try:
        res = rig.run(rig.code(attack))
        _honest(rig, res)
        assert rig.found(res)["append"] != "WROTE"
        assert target.read_bytes() == before
    finally:
        if target.read_bytes() != before:
            target.write_bytes(before)


def test_worker_cannot_be_killed_or_ptraced(rig):
    worker = os.getpid()
    attack = f"""
import ctypes, signal
for name, fn in (('kill', lambda: os.kill({worker}, signal.SIGKILL)), ('killpg', lambda: os.killpg({worker}, signal.SIGKILL))):
    try:
        fn()
        found[name] = 'SENT'
    except OSError as e:
        found[name] = repr(e)
libc = ctypes.CDLL(None, use_errno=True)
found['ptrace'] = libc.ptrace(16, {worker}, 0, 0)  # PTRACE_ATTACH
found['ptrace_errno'] = ctypes.get_errno()
"""
    res = rig.run(rig.code(attack))
    _honest(rig, res)
    found = rig.found(res)
    assert "SENT" not in json.dumps(found) and found["ptrace"] == -1


# ------------------------------------------------------------------------------------------ resources


def test_fork_bomb_is_capped_for_the_whole_tree(rig):
    attack = """
pids, error = [], None
for _ in range(500):
    try:
        pid = os.fork()
    except OSError as e:
        error = repr(e)
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    pids.append(pid)
found['forked'] = len(pids)
found['error'] = error
for pid in pids:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
"""
    res = rig.run(rig.code(attack))
    _honest(rig, res)
    found = rig.found(res)
    assert found["forked"] < 64 and "Resource temporarily unavailable" in found["error"], found


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_memory_limit_holds_for_the_process_tree(rig):
    attack = """
import multiprocessing as mp
def hold(n):
    b = bytearray(n * 1024 * 1024)
    for i in range(0, len(b), 4096):
        b[i] = 1
    time.sleep(3)
ps = [mp.Process(target=hold, args=(200,)) for _ in range(3)]
[p.start() for p in ps]
[p.join() for p in ps]
found['exitcodes'] = [p.exitcode for p in ps]
"""
    res = rig.run(rig.code(attack))
    # 3 x 200 MB under a 400 MB limit for the tree: the kernel kills within the group
    assert res.status == "failed" or any(c != 0 for c in rig.found(res)["exitcodes"]), res
    if res.status == "ok":
        assert -9 in rig.found(res)["exitcodes"]
    else:
        assert res.category == "crashed" and "memory" in res.error


def test_writes_outside_the_work_dir_fail_and_private_tmp_is_capped(rig):
    attack = """
chunk = b'x' * (1 << 20)
for path in ('/var/tmp/big', '/big', '/usr/big', os.path.expanduser('~root/big'), '/tmp/big'):
    written = 0
    try:
        with open(path, 'wb') as f:
            for _ in range(5 * 1024):  # 5 GB
                f.write(chunk)
                written += len(chunk)
    except OSError as e:
        found[path] = [written, repr(e)]
    else:
        found[path] = [written, 'complete']
    try:
        os.unlink(path)
    except OSError:
        pass
"""
    res = rig.run(rig.code(attack))
    _honest(rig, res)
    found = rig.found(res)
    outside = {k: v for k, v in found.items() if k != "/tmp/big"}
    assert all(v[0] == 0 and v[1] != "complete" for v in outside.values()), found  # not a byte outside
    assert 0 < found["/tmp/big"][0] <= 512 * 1024**2  # the private /tmp is a capped tmpfs


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_bytes_written_to_the_attempt_dir_are_capped(rig):
    attack = """
chunk = b'x' * (1 << 20)
out = os.environ['IDEAFORGE_OUT']
for i in range(40):  # 40 files of 10 MB = 400 MB > the 100 MB cap
    with open(os.path.join(out, f'junk-{i}'), 'wb') as f:
        for _ in range(10):
            f.write(chunk)
    time.sleep(0.05)
found['done'] = True
"""
    res = rig.run(rig.code(attack))
    assert res.status == "failed" and res.category == "output_limit" and "wrote more than" in res.error, res


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_huge_checkpoint_is_refused_and_never_read_into_worker_memory(rig):
    """A 3 GiB (sparse) checkpoint over the 50 MB cap is streamed, refused at the cap and not stored."""
    toml = rig.env_root / "env.toml"  # room on disk for the file itself: only the checkpoint cap applies
    toml.write_text(toml.read_text().replace("max_write_mb = 100", "max_write_mb = 4096"))
    attack = """
ck = os.path.join(os.environ['IDEAFORGE_OUT'], 'huge.ckpt')
with open(ck, 'wb') as f:
    f.truncate(3 * 1024**3)
print('IDEAFORGE_CHECKPOINT ' + json.dumps({'step': 1, 'path': ck}), flush=True)
time.sleep(2)
os.unlink(ck)
"""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    beats: list[Progress] = []
    res = rig.run(rig.code(attack), heartbeat=beats.append)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100, grown_mb
    assert not any(p.checkpoint is not None and p.checkpoint.size > 50 * 1024**2 for p in beats)
    big = [p for p in (rig.settings.home / "artifacts").rglob("*") if p.is_file() and p.stat().st_size > 50 * 1024**2]
    assert big == []
    _honest(rig, res)


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_checkpoint_symlink_to_a_host_file_is_not_uploaded(rig):
    secret = rig.tmp / "host-secret.txt"
    secret.write_text("host secret")
    attack = f"""
ck = os.path.join(os.environ['IDEAFORGE_OUT'], 'link.ckpt')
os.symlink({str(secret)!r}, ck)
print('IDEAFORGE_CHECKPOINT ' + json.dumps({{'step': 1, 'path': ck}}), flush=True)
time.sleep(1)
"""
    beats: list[Progress] = []
    res = rig.run(rig.code(attack), heartbeat=beats.append)
    _honest(rig, res)
    ckpts = [p.checkpoint for p in beats if p.checkpoint is not None]
    assert all(rig.store.get_bytes(c) != b"host secret" for c in ckpts)


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_daemon_does_not_survive_the_run(rig):
    token = f"daemon-{uuid.uuid4().hex}"
    attack = f"""
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(1000)', {token!r}])
    os._exit(0)
time.sleep(0.3)
"""
    res = rig.run(rig.code(attack))
    _honest(rig, res)
    time.sleep(0.3)
    assert _alive_with(token) == []


# ------------------------------------------------------------------------------------------ integrity on read


def test_forged_store_objects_are_detected_on_read(rig):
    code = rig.code()
    blob = Path(rig.store.key_of(code.uri))
    path = rig.store.base / blob
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    with pytest.raises(ArtifactCorrupt):
        rig.store.get_bytes(code)
    with pytest.raises(ArtifactCorrupt):
        rig.store.get_file(code, rig.tmp / "copy.zip")
    assert not (rig.tmp / "copy.zip").exists()
    rig.store.put_named("campaigns/c/state.json", b'{"next_epoch": 3}')
    (rig.store.base / "named" / "campaigns" / "c" / "state.json").write_bytes(b'{"next_epoch": 99}')
    with pytest.raises(ArtifactCorrupt, match="sha256"):
        rig.store.get_named("campaigns/c/state.json")


def test_forged_checkpoint_is_not_resumed_from(rig):
    ref = rig.store.put_bytes(json.dumps({"w": [3.0, -2.0, 1.0, 0.5], "v": [0, 0, 0, 0], "step": 19}).encode(),
                              "checkpoint")
    path = rig.store.base / rig.store.key_of(ref.uri)
    path.write_bytes(json.dumps({"w": [3.0, -2.0, 1.0, 0.5], "v": [0, 0, 0, 0], "step": 20}).encode())
    res = rig.run(rig.code(), resume=Progress(step=19, checkpoint=ref, checkpoint_step=19))
    _honest(rig, res)  # started from scratch, not from the forged state
    assert res.resumed_from_step is None


def test_unpinned_env_is_refused(rig):
    (rig.env_root / "protected.lock").unlink()
    with pytest.raises(EnvError, match="no protected.lock"):
        rig.run(rig.code())


def test_unsafe_runs_are_tagged_in_mlflow_tags():
    from ideaforge.models import Idea, IdeaOutcome, IdeaSummary, RecordIdeaRequest
    from ideaforge.track.tracker import _idea_tags

    idea = Idea(idea_id="campaign-c/e000/i00", epoch=0, index=0, title="t", text="t")
    summary = IdeaSummary(idea_id=idea.idea_id, epoch=0, title="t", text="t", origin="explore", status="ok")

    def tags(unsafe: bool) -> dict[str, str]:
        outcome = IdeaOutcome(summary=summary, run=RunResult(status="ok", metric=1.0, unsafe=unsafe))
        req = RecordIdeaRequest(experiment="e", campaign="c", epoch_run_id=None, idea=idea, outcome=outcome,
                                workflow_id="w", run_id="r", env="toy_quad")
        return _idea_tags(req)

    assert tags(True)["ideaforge.unsafe"] == "true"
    assert "ideaforge.unsafe" not in tags(False)


def test_host_paths_are_passed_read_only(rig, tmp_path, monkeypatch):
    """An env's host_paths (e.g. HF_HOME) reach the command with their value, bound read-only."""
    shared = tmp_path / "hf-home"
    shared.mkdir()
    (shared / "weights.bin").write_text("local model")
    monkeypatch.setenv("TOY_HOST_CACHE", str(shared))
    toml = rig.env_root / "env.toml"
    toml.write_text(toml.read_text().replace('checkpointing = true\n', 'checkpointing = true\nhost_paths = ["TOY_HOST_CACHE"]\n'))
    attack = """
base = os.environ['TOY_HOST_CACHE']
found['read'] = open(os.path.join(base, 'weights.bin')).read()
try:
    open(os.path.join(base, 'weights.bin'), 'w').write('forged')
    found['write'] = 'WROTE'
except OSError as e:
    found['write'] = repr(e)
"""
    res = rig.run(rig.code(attack))
    _honest(rig, res)
    assert rig.found(res)["read"] == "local model" and "Read-only file system" in rig.found(res)["write"]
    assert (shared / "weights.bin").read_text() == "local model"


@pytest.mark.slow
def test_tiny_gpt_rejects_a_model_that_looks_at_its_batch(tmp_path):
    """Causal at every batch size, but its logits depend on the batch size: the repeated evaluation in another
    order and batch size disagrees, so the evaluator refuses to score it."""
    from env_harness import run_env

    env = load_env("tiny_gpt")
    model = (env.baseline / "model.py").read_text()
    marker = "        logits = self.lm_head(self.ln_f(x))\n"
    assert marker in model
    cheat = model.replace(marker, marker + "        logits = logits + (3.0 if B >= 16 else 0.0) * F.one_hot(idx, logits.size(-1))\n")
    run = run_env(env, tmp_path, files={"model.py": cheat})
    assert run.train.returncode == 0, run.train.stderr[-2000:]
    assert run.evaluation.returncode == 2 and run.metrics is None
    assert "another batch order" in run.evaluation.stderr
