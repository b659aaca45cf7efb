"""Back up and restore the S3 prefix a deployment writes (ideaforge's artifacts and, under it, MLflow's) with
the minio client that ideaforge already uses: no ``mc`` needed.

    python ops/bucket_backup.py backup  s3://BUCKET/PREFIX DIR   # incremental: objects already in DIR are kept
    python ops/bucket_backup.py restore DIR s3://BUCKET/PREFIX   # uploads what the bucket lacks or holds changed

The endpoint and credentials are read as ideaforge reads them: ``IDEAFORGE_S3_ENDPOINT`` (host:port),
``IDEAFORGE_S3_SECURE``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (or ``MINIO_ROOT_USER``/
``MINIO_ROOT_PASSWORD``). DIR holds one file per object under its key, and ``MANIFEST.json`` (key -> size and
sha256). Content-addressed objects (``.../cas/<kind>/<xx>/<sha256>``) are checked against the digest in their key
both ways, and every file against the manifest before it is restored: a damaged object is named and skipped,
never uploaded, and the exit status is 1. Safe while campaigns run: content-addressed objects never change, and
campaign state (``named/``) is small and taken as it is at that moment.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ideaforge.store.artifacts import S3Store, StorageError  # noqa: E402

MANIFEST = "MANIFEST.json"
CAS_KEY = re.compile(r"(^|/)cas/[^/]+/[0-9a-f]{2}/([0-9a-f]{64})$")


@dataclass
class Tally:
    copied: int = 0
    kept: int = 0
    damaged: list[str] = field(default_factory=list)

    def line(self, verb: str) -> str:
        bad = f", {len(self.damaged)} damaged (not {verb}): {', '.join(self.damaged[:10])}" if self.damaged else ""
        return f"{self.copied} {verb}, {self.kept} already there{bad}"


def bucket_of(url: str) -> S3Store:
    """The store of ``s3://bucket/prefix`` on the endpoint ideaforge is configured with."""
    u = urlparse(url)
    if u.scheme != "s3" or not u.netloc:
        raise SystemExit(f"{url!r}: want s3://BUCKET/PREFIX")
    endpoint = os.environ.get("IDEAFORGE_S3_ENDPOINT")
    if not endpoint:
        raise SystemExit("IDEAFORGE_S3_ENDPOINT (host:port of the S3 server) is not set")
    secure = os.environ.get("IDEAFORGE_S3_SECURE", "0").lower() in ("1", "true", "yes")
    try:
        return S3Store(endpoint, u.netloc, u.path, secure=secure)
    except StorageError as e:
        raise SystemExit(str(e)) from e


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest_in_key(key: str) -> str | None:
    m = CAS_KEY.search(key)
    return m.group(2) if m else None


def local_path(root: Path, key: str) -> Path:
    path = (root / key).resolve()
    if root.resolve() not in path.parents:
        raise ValueError(f"object key {key!r} points outside {root}")
    return path


def backup(store: S3Store, root: Path) -> Tally:
    """Copy every object under the store's prefix into ``root`` (kept when already there, same size and digest)."""
    root.mkdir(parents=True, exist_ok=True)
    manifest_path = root / MANIFEST
    manifest: dict[str, dict] = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    tally = Tally()
    base = store.prefix + "/" if store.prefix else ""
    for obj in store.client.list_objects(store.bucket, prefix=base, recursive=True):
        key = obj.object_name[len(base) :]
        dest = local_path(root, key)
        known = manifest.get(key)
        same = known and (known["size"], known.get("etag")) == (obj.size, obj.etag)
        if same and dest.is_file() and dest.stat().st_size == obj.size:
            tally.kept += 1  # the same object as last time (campaign state rewritten in place has a new etag)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp:
            store.client.fget_object(store.bucket, obj.object_name, tmp.name)
        digest = sha256_file(Path(tmp.name))
        if digest_in_key(key) not in (None, digest):
            os.unlink(tmp.name)
            tally.damaged.append(key)
            continue
        os.replace(tmp.name, dest)
        manifest[key] = {"size": dest.stat().st_size, "sha256": digest, "etag": obj.etag}
        tally.copied += 1
    tmp_manifest = root / (MANIFEST + ".tmp")
    tmp_manifest.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp_manifest, manifest_path)
    return tally


def load_manifest(root: Path) -> dict[str, dict]:
    """The backup's manifest (key -> size, sha256, etag); SystemExit when ``root`` is no backup of this script."""
    path = root / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"{root} has no readable {MANIFEST} ({e}): not a backup made by this script") from e


def restore(root: Path, manifest: dict[str, dict], store: S3Store) -> Tally:
    """Upload every object of the backup in ``root`` that the bucket lacks or holds with another size."""
    tally = Tally()
    for key, meta in sorted(manifest.items()):
        path = local_path(root, key)
        if not path.is_file() or sha256_file(path) != meta["sha256"] or digest_in_key(key) not in (None, meta["sha256"]):
            tally.damaged.append(key)
            continue
        name = store.prefix + "/" + key if store.prefix else key
        try:
            if store.client.stat_object(store.bucket, name).size == meta["size"] and digest_in_key(key):
                tally.kept += 1  # content-addressed and the same size: the same bytes
                continue
        except Exception:  # noqa: BLE001 - not there (or unreadable): upload it
            pass
        store.client.fput_object(store.bucket, name, str(path))
        tally.copied += 1
    return tally


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("backup", help="s3://BUCKET/PREFIX -> DIR")
    b.add_argument("source")
    b.add_argument("dest", type=Path)
    r = sub.add_parser("restore", help="DIR -> s3://BUCKET/PREFIX")
    r.add_argument("source", type=Path)
    r.add_argument("dest")
    args = ap.parse_args(argv)
    if args.cmd == "backup":
        tally = backup(bucket_of(args.source), args.dest)
        print(f"backup {args.source} -> {args.dest}: {tally.line('copied')}")
    else:
        manifest = load_manifest(args.source)  # before the bucket: a wrong folder is the likelier mistake
        tally = restore(args.source, manifest, bucket_of(args.dest))
        print(f"restore {args.source} -> {args.dest}: {tally.line('uploaded')}")
    return 1 if tally.damaged else 0


if __name__ == "__main__":
    sys.exit(main())
