"""ops/bucket_backup.py against a real S3 server (moto): back up a deployment's prefix, lose the bucket's
objects, restore, and read every artifact and the campaign state back through the store (digest-checked)."""

from __future__ import annotations

import io
import json

import pytest

from ideaforge.store.artifacts import S3Store
from ops import bucket_backup

pytestmark = pytest.mark.integration


def _lose_everything(store: S3Store) -> None:
    for obj in list(store.client.list_objects(store.bucket, prefix=store.prefix + "/", recursive=True)):
        store.client.remove_object(store.bucket, obj.object_name)


def test_backup_then_restore_brings_every_object_back(s3_server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IDEAFORGE_S3_ENDPOINT", s3_server)
    url = "s3://deploy/ideaforge"
    store = bucket_backup.bucket_of(url)
    refs = [store.put_bytes(f"object {k}".encode() * 100, "log") for k in range(5)]
    store.put_named("campaigns/c1/state.json", b'{"epoch": 3}')
    store.client.put_object(store.bucket, "ideaforge/mlflow/1/run/artifacts/train.log", io.BytesIO(b"x"), 1)
    store.client.put_object(store.bucket, "elsewhere/other.txt", io.BytesIO(b"y"), 1)  # not ours
    dest = tmp_path / "backup"

    assert bucket_backup.main(["backup", url, str(dest)]) == 0
    manifest = json.loads((dest / "MANIFEST.json").read_text())
    assert len(manifest) == 5 + 2 + 1 and not any(k.startswith("elsewhere") for k in manifest)
    assert "8 copied, 0 already there" in capsys.readouterr().out
    # incremental: nothing changed, nothing copied; rewritten campaign state (same size) is copied again
    store.put_named("campaigns/c1/state.json", b'{"epoch": 4}')
    assert bucket_backup.main(["backup", url, str(dest)]) == 0
    assert "copied, 6 already there" in capsys.readouterr().out

    _lose_everything(store)
    assert store.get_named("campaigns/c1/state.json") is None
    assert bucket_backup.main(["restore", str(dest), url]) == 0
    assert "8 uploaded, 0 already there" in capsys.readouterr().out
    fresh = S3Store(s3_server, "deploy", "ideaforge")
    assert [fresh.get_bytes(r) for r in refs] == [f"object {k}".encode() * 100 for k in range(5)]  # digests checked
    assert fresh.get_named("campaigns/c1/state.json") == b'{"epoch": 4}'
    # restoring again uploads only what is not content-addressed (the state may have moved on)
    assert bucket_backup.main(["restore", str(dest), url]) == 0
    assert "5 already there" in capsys.readouterr().out


def test_a_damaged_backup_object_is_named_and_never_uploaded(s3_server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IDEAFORGE_S3_ENDPOINT", s3_server)
    url = "s3://damaged/ideaforge"
    store = bucket_backup.bucket_of(url)
    good, bad = store.put_bytes(b"good" * 50, "zip"), store.put_bytes(b"bad" * 50, "zip")
    dest = tmp_path / "backup"
    assert bucket_backup.main(["backup", url, str(dest)]) == 0
    bad_key = store.key_of(bad.uri)
    (dest / bad_key).write_bytes(b"bit rot" * 20)
    _lose_everything(store)
    assert bucket_backup.main(["restore", str(dest), url]) == 1
    out = capsys.readouterr().out
    assert "1 uploaded" in out and f"1 damaged (not uploaded): {bad_key}" in out
    assert store.get_bytes(good) == b"good" * 50
    assert not store._exists(bad_key)


def test_bad_arguments_are_refused_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("IDEAFORGE_S3_ENDPOINT", raising=False)
    with pytest.raises(SystemExit, match="IDEAFORGE_S3_ENDPOINT"):
        bucket_backup.main(["backup", "s3://b/p", str(tmp_path)])
    with pytest.raises(SystemExit, match="want s3://BUCKET/PREFIX"):
        bucket_backup.main(["backup", "/not/a/bucket", str(tmp_path)])
    monkeypatch.setenv("IDEAFORGE_S3_ENDPOINT", "127.0.0.1:1")
    with pytest.raises(SystemExit, match="no readable MANIFEST.json"):
        bucket_backup.main(["restore", str(tmp_path), "s3://b/p"])
