"""Artifact store: content-addressed blobs (zips, diffs, logs, checkpoints) plus a few named objects.

Two backends behind one interface: a local directory (``file://``, the embedded default) and S3/MinIO
(``s3://bucket/prefix``) through the ``minio`` client. Every read verifies sha256.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import unquote, urlparse

from ideaforge.config import Settings
from ideaforge.models import ArtifactRef


class StorageError(RuntimeError):
    """An artifact could not be written or read intact; the message names the object."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cas_key(kind: str, sha: str) -> str:
    return f"cas/{kind}/{sha[:2]}/{sha}"


class ObjectStore(ABC):
    """Blob store. Content-addressed puts are idempotent: the same bytes give the same ref."""

    root: str

    @abstractmethod
    def _write(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def _read(self, key: str) -> bytes | None: ...

    @abstractmethod
    def _exists(self, key: str) -> bool: ...

    @abstractmethod
    def uri_for(self, key: str) -> str: ...

    @abstractmethod
    def key_of(self, uri: str) -> str: ...

    def put_bytes(self, data: bytes, kind: str = "blob") -> ArtifactRef:
        sha = sha256_bytes(data)
        key = cas_key(kind, sha)
        if not self._exists(key):
            self._write(key, data)
        return ArtifactRef(uri=self.uri_for(key), sha256=sha, size=len(data))

    def put_text(self, text: str, kind: str = "text") -> ArtifactRef:
        return self.put_bytes(text.encode(), kind)

    def put_file(self, path: Path, kind: str = "blob") -> ArtifactRef:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise StorageError(f"cannot read {path} to store it: {e.strerror or e}") from e
        return self.put_bytes(data, kind)

    def get_bytes(self, ref: ArtifactRef) -> bytes:
        data = self._read(self.key_of(ref.uri))
        if data is None:
            raise StorageError(f"artifact missing: {ref.uri}")
        if sha256_bytes(data) != ref.sha256:
            raise StorageError(f"artifact corrupt (sha256 mismatch): {ref.uri}")
        return data

    def get_text(self, ref: ArtifactRef) -> str:
        return self.get_bytes(ref).decode()

    def get_file(self, ref: ArtifactRef, dest: Path) -> Path:
        dest = Path(dest)
        data = self.get_bytes(ref)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        except OSError as e:
            raise StorageError(f"cannot write {ref.uri} to {dest}: {e.strerror or e}") from e
        return dest

    def put_named(self, key: str, data: bytes) -> ArtifactRef:
        """Write a mutable object under a fixed key (e.g. a campaign's saved state)."""
        self._write(f"named/{key}", data)
        return ArtifactRef(uri=self.uri_for(f"named/{key}"), sha256=sha256_bytes(data), size=len(data))

    def get_named(self, key: str) -> bytes | None:
        return self._read(f"named/{key}")


class LocalStore(ObjectStore):
    """A directory on local disk. Writes are atomic (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.base = Path(root).resolve()
        self.base.mkdir(parents=True, exist_ok=True)
        self.root = self.base.as_uri()

    def _path(self, key: str) -> Path:
        p = (self.base / key).resolve()
        if self.base not in p.parents:
            raise StorageError(f"key escapes the store: {key!r}")
        return p

    def _write(self, key: str, data: bytes) -> None:
        p = self._path(key)
        tmp: str | None = None
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except OSError as e:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise StorageError(f"cannot write artifact {key} under {self.base}: {e.strerror or e}") from e

    def _read(self, key: str) -> bytes | None:
        p = self._path(key)
        try:
            return p.read_bytes() if p.is_file() else None
        except OSError as e:
            raise StorageError(f"cannot read artifact {key} under {self.base}: {e.strerror or e}") from e

    def _exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def uri_for(self, key: str) -> str:
        return (self.base / key).as_uri()

    def key_of(self, uri: str) -> str:
        path = Path(unquote(urlparse(uri).path))  # as_uri() percent-encodes spaces etc.
        try:
            return str(path.relative_to(self.base))
        except ValueError as e:
            raise StorageError(f"{uri} is not in the local store at {self.base}") from e


class S3Store(ObjectStore):
    """S3 or MinIO through the ``minio`` client. Credentials: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
    (or ``MINIO_ROOT_USER``/``MINIO_ROOT_PASSWORD``) from the environment, never from config files."""

    def __init__(self, endpoint: str, bucket: str, prefix: str = "", secure: bool = False) -> None:
        from minio import Minio

        access = os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("MINIO_ROOT_USER")
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY") or os.environ.get("MINIO_ROOT_PASSWORD")
        if not access or not secret:
            raise StorageError(
                "S3 artifact store needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment"
            )
        region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
        try:
            self.client = Minio(endpoint, access_key=access, secret_key=secret, secure=secure, region=region)
        except ValueError as e:
            raise StorageError(
                f"bad S3 endpoint {endpoint!r} ({e}): IDEAFORGE_S3_ENDPOINT is host:port"
            ) from e
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.root = f"s3://{bucket}/{self.prefix}".rstrip("/")
        try:
            if not self.client.bucket_exists(bucket):
                self.client.make_bucket(bucket)
        except Exception as e:  # noqa: BLE001 - surface any connection/auth problem with context
            raise StorageError(f"cannot reach S3 bucket {bucket!r} at {endpoint}: {e}") from e

    def _obj(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _write(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(self.bucket, self._obj(key), io.BytesIO(data), len(data))
        except Exception as e:  # noqa: BLE001
            raise StorageError(f"cannot write s3://{self.bucket}/{self._obj(key)}: {e}") from e

    def _read(self, key: str) -> bytes | None:
        from minio.error import S3Error

        try:
            resp = self.client.get_object(self.bucket, self._obj(key))
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchObject"):
                return None
            raise StorageError(f"cannot read s3://{self.bucket}/{self._obj(key)}: {e}") from e
        except Exception as e:  # noqa: BLE001 - connection errors come as urllib3 exceptions
            raise StorageError(f"cannot read s3://{self.bucket}/{self._obj(key)}: {e}") from e
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    def _exists(self, key: str) -> bool:
        from minio.error import S3Error

        try:
            self.client.stat_object(self.bucket, self._obj(key))
            return True
        except S3Error:
            return False

    def uri_for(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._obj(key)}"

    def key_of(self, uri: str) -> str:
        u = urlparse(uri)
        if u.scheme != "s3" or u.netloc != self.bucket:
            raise StorageError(f"{uri} is not in bucket {self.bucket!r}")
        obj = u.path.lstrip("/")
        if self.prefix:
            if not obj.startswith(self.prefix + "/"):
                raise StorageError(f"{uri} is not under prefix {self.prefix!r}")
            obj = obj[len(self.prefix) + 1 :]
        return obj


def open_store(settings: Settings) -> ObjectStore:
    """The store named by ``settings.artifact_root`` (``file://`` dir or ``s3://bucket/prefix``)."""
    u = urlparse(settings.artifact_root)
    if u.scheme == "file":
        return LocalStore(Path(u.path))
    if u.scheme == "s3":
        if not settings.s3_endpoint:
            raise StorageError("artifact URI is s3:// but IDEAFORGE_S3_ENDPOINT (host:port) is not set")
        if not u.netloc:
            raise StorageError(
                f"artifact URI {settings.artifact_root!r} names no bucket: use s3://bucket/prefix"
            )
        return S3Store(settings.s3_endpoint, u.netloc, u.path, secure=settings.s3_secure)
    raise StorageError(f"unsupported artifact URI {settings.artifact_root!r}: use file:// or s3://")
