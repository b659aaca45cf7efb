"""Artifact store: local directory and S3 (moto server through the minio client), plus MLflow on S3."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from ideaforge.cli import stack
from ideaforge.cli.procs import free_port
from ideaforge.config import Settings
from ideaforge.store import artifacts as storage
from ideaforge.store.artifacts import LocalStore, S3Store, StorageError, open_store


@pytest.fixture(params=["local", "s3"])
def store(request, settings: Settings, tmp_path: Path) -> storage.ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "store with space")
    s3_settings = request.getfixturevalue("s3_settings")
    return open_store(s3_settings)


def _corrupt(store: storage.ObjectStore, uri: str, data: bytes) -> None:
    """Overwrite an object behind the store's back."""
    key = store.key_of(uri)
    if isinstance(store, LocalStore):
        Path(store.base / key).write_bytes(data)
    else:
        assert isinstance(store, S3Store)
        store.client.put_object(store.bucket, store._obj(key), io.BytesIO(data), len(data))


def test_round_trip(store: storage.ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(70_000)
    ref = store.put_bytes(data, kind="zip")
    assert ref.sha256 == storage.sha256_bytes(data) and ref.size == len(data)
    assert ref.uri.startswith(store.root) and "/cas/zip/" in ref.uri
    assert store.get_bytes(ref) == data
    tref = store.put_text("héllo diff\n", kind="diff")
    assert store.get_text(tref) == "héllo diff\n"
    src = tmp_path / "in.bin"
    src.write_bytes(b"file body")
    fref = store.put_file(src)
    out = store.get_file(fref, tmp_path / "out" / "f.bin")
    assert out.read_bytes() == b"file body"


def test_content_addressing_is_idempotent(store: storage.ObjectStore, monkeypatch) -> None:
    first = store.put_bytes(b"same bytes", kind="blob")
    writes: list[str] = []
    real = store._write
    monkeypatch.setattr(store, "_write", lambda key, data: (writes.append(key), real(key, data)))
    second = store.put_bytes(b"same bytes", kind="blob")
    assert second == first
    assert writes == []  # the object was already there: not written again
    other = store.put_bytes(b"other bytes", kind="blob")
    assert other.uri != first.uri and len(writes) == 1


def test_corrupt_object_is_detected(store: storage.ObjectStore) -> None:
    ref = store.put_bytes(b"the real zip", kind="zip")
    _corrupt(store, ref.uri, b"tampered bytes")
    with pytest.raises(StorageError, match=r"corrupt \(sha256 mismatch\)"):
        store.get_bytes(ref)


def test_missing_object_is_an_error(store: storage.ObjectStore) -> None:
    ref = store.put_bytes(b"exists", kind="blob")
    gone = ref.model_copy(update={"uri": ref.uri.replace(ref.sha256, "0" * 64)})
    with pytest.raises(StorageError, match="artifact missing"):
        store.get_bytes(gone)


def test_named_objects(store: storage.ObjectStore) -> None:
    assert store.get_named("campaigns/c1/state.json") is None
    ref = store.put_named("campaigns/c1/state.json", b'{"epoch": 1}')
    assert store.get_named("campaigns/c1/state.json") == b'{"epoch": 1}'
    assert store.get_bytes(ref) == b'{"epoch": 1}'
    store.put_named("campaigns/c1/state.json", b'{"epoch": 2}')  # named objects are mutable
    assert store.get_named("campaigns/c1/state.json") == b'{"epoch": 2}'


def _pause_between_sidecar_and_object(store: storage.ObjectStore, key: str, data: bytes):
    """Start ``put_named(key, data)`` in a thread that stops after its first write until the returned event is set."""
    import threading

    original = store._write
    halfway, go_on = threading.Event(), threading.Event()

    def pausing_write(rel: str, blob: bytes) -> None:
        original(rel, blob)
        if rel.endswith(key) and not halfway.is_set():  # the first of the two writes is done: pause
            halfway.set()
            go_on.wait(5)

    store._write = pausing_write  # type: ignore[method-assign]
    writer = threading.Thread(target=store.put_named, args=(key, data))
    writer.start()
    assert halfway.wait(5)
    return writer, go_on, original


def test_named_object_read_during_its_first_write_is_not_yet_there(store: storage.ObjectStore) -> None:
    """A reader that comes while the first put_named is halfway (CI saw this: a resume read the campaign state
    as the workflow first saved it) gets None, not "no digest record"."""
    key = "campaigns/first/state.json"
    writer, go_on, original = _pause_between_sidecar_and_object(store, key, b'{"epoch": 0}')
    try:
        assert store.get_named(key) is None
    finally:
        go_on.set()
        writer.join()
        store._write = original  # type: ignore[method-assign]
    assert store.get_named(key) == b'{"epoch": 0}'


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_named_object_read_while_its_writer_is_between_sidecar_and_object(store: storage.ObjectStore) -> None:
    """put_named replaces the sidecar, then the object: a read in between retries instead of calling the
    state corrupt; an object that stays inconsistent is still refused."""
    import threading

    key = "campaigns/race/state.json"
    store.put_named(key, b'{"epoch": 1}')
    writer, go_on, original = _pause_between_sidecar_and_object(store, key, b'{"epoch": 2, "more": true}')
    threading.Timer(0.15, go_on.set).start()
    assert store.get_named(key) == b'{"epoch": 2, "more": true}'
    writer.join()
    store._write = original  # type: ignore[method-assign]
    ref = store.put_named(key, b'{"epoch": 3}')
    _corrupt(store, ref.uri, b'{"epoch": 666}')
    with pytest.raises(StorageError, match="corrupt"):
        store.get_named(key)


def test_foreign_uri_is_refused(store: storage.ObjectStore) -> None:
    ref = store.put_bytes(b"x")
    elsewhere = ref.model_copy(update={"uri": "s3://another-bucket/cas/blob/aa/" + ref.sha256})
    if isinstance(store, LocalStore):
        elsewhere = ref.model_copy(update={"uri": "file:///somewhere/else/" + ref.sha256})
    with pytest.raises(StorageError, match="not in"):
        store.get_bytes(elsewhere)


def test_local_key_cannot_escape(tmp_path: Path) -> None:
    s = LocalStore(tmp_path / "st")
    with pytest.raises(StorageError, match="escapes the store"):
        s.put_named("../../outside", b"x")
    assert not (tmp_path / "outside").exists()


def test_local_disk_full_simulated(tmp_path: Path, monkeypatch) -> None:
    s = LocalStore(tmp_path / "st")

    real_write = Path.write_bytes

    def write_bytes(self, data) -> int:  # noqa: ANN001 - a part lands, then the disk is full
        real_write(self, data[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.Path, "write_bytes", write_bytes)
    with pytest.raises(StorageError, match=r"cannot write artifact cas/zip/.*No space left on device"):
        s.put_bytes(b"x" * 1000, kind="zip")
    assert not [p for p in (tmp_path / "st").rglob("*") if p.is_file()]  # no temp file left behind


def test_local_disk_full_on_real_tmpfs(tmp_path: Path) -> None:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        s = LocalStore(mnt / "store")
        small = s.put_bytes(b"fits", kind="blob")
        with pytest.raises(StorageError, match=r"cannot write artifact cas/zip/.*No space left on device"):
            s.put_bytes(os.urandom(256 * 1024), kind="zip")
        assert s.get_bytes(small) == b"fits"  # earlier objects are intact
        leftovers = [p.name for p in (mnt / "store").rglob(".tmp-*")]
        assert leftovers == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_put_file_missing_source_is_storage_error(tmp_path: Path) -> None:
    s = LocalStore(tmp_path / "st")
    with pytest.raises(StorageError, match="cannot read"):
        s.put_file(tmp_path / "nope.zip")


# --------------------------------------------------------------------------- open_store


def test_open_store_default_is_local_under_home(settings: Settings) -> None:
    st = open_store(settings)
    assert isinstance(st, LocalStore) and st.base == (settings.home / "artifacts").resolve()


def test_open_store_file_uri(settings: Settings, tmp_path: Path) -> None:
    st = open_store(settings.model_copy(update={"artifact_uri": (tmp_path / "arts").as_uri()}))
    assert isinstance(st, LocalStore) and st.base == (tmp_path / "arts").resolve()


def test_open_store_s3(s3_settings: Settings) -> None:
    st = open_store(s3_settings)
    assert isinstance(st, S3Store) and st.root == s3_settings.artifact_uri
    assert st.client.bucket_exists(st.bucket)  # created on first open
    ref = st.put_bytes(b"abc")
    assert ref.uri.startswith(s3_settings.artifact_uri + "/cas/")


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"artifact_uri": "ftp://host/x"}, "unsupported artifact URI 'ftp://host/x'"),
        ({"artifact_uri": "s3://bucket/p"}, "IDEAFORGE_S3_ENDPOINT"),
        ({"artifact_uri": "s3://bucket/p", "s3_endpoint": "http://127.0.0.1:9000"}, "host:port"),
        ({"artifact_uri": "s3:///nobucket", "s3_endpoint": "127.0.0.1:9000"}, "names no bucket"),
    ],
)
def test_open_store_bad_config(settings: Settings, update: dict, message: str) -> None:
    with pytest.raises(StorageError, match=message):
        open_store(settings.model_copy(update=update))


def test_open_store_s3_needs_credentials(s3_settings: Settings, monkeypatch) -> None:
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(StorageError, match="AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        open_store(s3_settings)


@pytest.mark.slow
def test_open_store_s3_unreachable(settings: Settings, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    port = free_port()
    bad = settings.model_copy(update={"artifact_uri": "s3://bkt/p", "s3_endpoint": f"127.0.0.1:{port}"})
    with pytest.raises(StorageError, match=rf"cannot reach S3 bucket 'bkt' at 127.0.0.1:{port}"):
        open_store(bad)


# --------------------------------------------------------------------------- MLflow with S3 artifacts


@pytest.mark.integration
@pytest.mark.slow
def test_mlflow_server_keeps_artifacts_in_s3(s3_settings: Settings, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    st = open_store(s3_settings)  # creates the bucket; MLflow does not
    assert isinstance(st, S3Store)
    assert stack.start_mlflow(s3_settings, timeout_s=120)
    try:
        client = MlflowClient(tracking_uri=s3_settings.mlflow_uri)
        exp = client.create_experiment(f"s3-{uuid.uuid4().hex[:8]}")
        run = client.create_run(exp)
        note = tmp_path / "notes.txt"
        note.write_text("patched and trained\n")
        client.log_artifact(run.info.run_id, str(note), artifact_path="logs")
        client.log_text(run.info.run_id, "--- a\n+++ b\n", "diff.patch")
        got = Path(client.download_artifacts(run.info.run_id, "logs/notes.txt", str(tmp_path / "dl")))
        assert got.read_text() == "patched and trained\n"
        names = [
            o.object_name
            for o in st.client.list_objects(st.bucket, prefix="ideaforge/mlflow/", recursive=True)
        ]
        assert any(n.endswith("/logs/notes.txt") for n in names)
        assert any(n.endswith("/diff.patch") for n in names)
    finally:
        assert stack.down(s3_settings) == ["mlflow"]
