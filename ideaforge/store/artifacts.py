"""Artifact store: content-addressed blobs (zips, diffs, logs, checkpoints) plus a few named objects.

Two backends behind one interface: a local directory (``file://``, the embedded default) and S3/MinIO
(``s3://bucket/prefix``) through the ``minio`` client. Every read verifies size and sha256 against the ref
(:class:`ArtifactCorrupt`, :class:`ArtifactMissing`); named objects carry a digest sidecar checked on read.
Files go in and out in chunks, so the worker's memory does not grow with a checkpoint's size.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from ideaforge.config import Settings
from ideaforge.models import ArtifactRef

CHUNK = 1024 * 1024
MAX_IN_MEMORY = 256 * 1024**2  # get_bytes refuses larger objects: use get_file
NAMED_READ_ATTEMPTS = 4  # a named object read while its writer is between the sidecar and the object


class StorageError(RuntimeError):
    """An artifact could not be written or read intact; the message names the object."""

    category = "storage"


class ArtifactMissing(StorageError):
    category = "missing"


class ArtifactCorrupt(StorageError):
    """The bytes read back do not match the digest or size they were stored under (tampering or damage)."""

    category = "corrupt"


class ArtifactTooLarge(StorageError):
    category = "too_large"


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
    def _open(self, key: str) -> BinaryIO | None:
        """A readable stream of the object, or None when it does not exist."""

    @abstractmethod
    def _store_file(self, key: str, path: Path) -> None:
        """Put the (verified, private) file ``path`` under ``key``; may move it."""

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

    def put_file(self, path: Path, kind: str = "blob", max_bytes: int | None = None) -> ArtifactRef:
        """Store a file in chunks (symlinks refused); over ``max_bytes`` -> :class:`ArtifactTooLarge`."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise StorageError(f"cannot read {path} to store it: {e.strerror or e}") from e
        with os.fdopen(fd, "rb") as f:
            return self.put_stream(f, kind, max_bytes, name=str(path))

    def put_stream(
        self, f: BinaryIO, kind: str = "blob", max_bytes: int | None = None, name: str = "stream"
    ) -> ArtifactRef:
        """Copy ``f`` to a private spool file while hashing it, then store that copy under its digest."""
        h, size = hashlib.sha256(), 0
        with tempfile.TemporaryDirectory(prefix="ideaforge-put-") as tmp:
            spool = Path(tmp) / "blob"
            try:
                with open(spool, "wb") as out:
                    while chunk := f.read(CHUNK):
                        size += len(chunk)
                        if max_bytes is not None and size > max_bytes:
                            raise ArtifactTooLarge(f"{name} is larger than the limit of {max_bytes} bytes")
                        h.update(chunk)
                        out.write(chunk)
            except OSError as e:
                raise StorageError(f"cannot read {name} to store it: {e.strerror or e}") from e
            sha = h.hexdigest()
            key = cas_key(kind, sha)
            if not self._exists(key):
                self._store_file(key, spool)
        return ArtifactRef(uri=self.uri_for(key), sha256=sha, size=size)

    def get_bytes(self, ref: ArtifactRef) -> bytes:
        """The object's bytes, checked against ``ref.size`` and ``ref.sha256``."""
        if ref.size > MAX_IN_MEMORY:
            raise ArtifactTooLarge(f"{ref.uri} is {ref.size} bytes: read it with get_file")
        data = self._read(self.key_of(ref.uri))
        if data is None:
            raise ArtifactMissing(f"artifact missing: {ref.uri}")
        check_digest(ref, len(data), sha256_bytes(data))
        return data

    def get_text(self, ref: ArtifactRef) -> str:
        return self.get_bytes(ref).decode()

    def get_file(self, ref: ArtifactRef, dest: Path) -> Path:
        """Copy the object to ``dest`` in chunks; ``dest`` appears only once size and digest are verified."""
        dest = Path(dest)
        src = self._open(self.key_of(ref.uri))
        if src is None:
            raise ArtifactMissing(f"artifact missing: {ref.uri}")
        h, size = hashlib.sha256(), 0
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".get-")
            try:
                with os.fdopen(fd, "wb") as out, src:
                    while chunk := src.read(CHUNK):
                        size += len(chunk)
                        if size > ref.size:
                            break
                        h.update(chunk)
                        out.write(chunk)
                check_digest(ref, size, h.hexdigest())
                os.replace(tmp, dest)
            finally:
                Path(tmp).unlink(missing_ok=True)
        except OSError as e:
            raise StorageError(f"cannot write {ref.uri} to {dest}: {e.strerror or e}") from e
        return dest

    def put_named(self, key: str, data: bytes) -> ArtifactRef:
        """Write a mutable object under a fixed key (e.g. a campaign's saved state), with a digest sidecar.

        The sidecar is written first: a reader between the two writes sees either no object yet (first write: None)
        or the old object against the new sidecar (a mismatch that :meth:`get_named` reads again), never an object
        without its sidecar."""
        ref = ArtifactRef(uri=self.uri_for(f"named/{key}"), sha256=sha256_bytes(data), size=len(data))
        self._write(f"named-digest/{key}", ref.model_dump_json().encode())
        self._write(f"named/{key}", data)
        return ref

    def get_named(self, key: str) -> bytes | None:
        """The object under ``key`` (None if never written), checked against its digest sidecar.

        A writer replaces the sidecar, then the object: a read between the two sees a mismatch, so a mismatch
        is read again (a few times) before it is called corruption."""
        for attempt in range(NAMED_READ_ATTEMPTS):
            data = self._read(f"named/{key}")
            if data is None:
                return None
            raw = self._read(f"named-digest/{key}")
            if raw is None:
                raise ArtifactCorrupt(f"named object {key!r} has no digest record: written outside ideaforge?")
            try:
                ref = ArtifactRef.model_validate_json(raw)
            except ValueError as e:
                raise ArtifactCorrupt(f"digest record of named object {key!r} is unreadable: {e}") from e
            try:
                check_digest(ref, len(data), sha256_bytes(data))
                return data
            except ArtifactCorrupt:
                if attempt == NAMED_READ_ATTEMPTS - 1:
                    raise
                time.sleep(0.1 * (attempt + 1))
        return None  # unreachable


def check_digest(ref: ArtifactRef, size: int, sha: str) -> None:
    """Raise :class:`ArtifactCorrupt` when what was read does not match ``ref``."""
    if sha != ref.sha256:
        raise ArtifactCorrupt(f"artifact corrupt (sha256 mismatch): {ref.uri}")
    if size != ref.size:
        raise ArtifactCorrupt(f"artifact corrupt (size {size} != {ref.size}): {ref.uri}")


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
        self._place(key, lambda tmp: Path(tmp).write_bytes(data))

    def _read(self, key: str) -> bytes | None:
        p = self._path(key)
        try:
            return p.read_bytes() if p.is_file() else None
        except OSError as e:
            raise StorageError(f"cannot read artifact {key} under {self.base}: {e.strerror or e}") from e

    def _exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _open(self, key: str) -> BinaryIO | None:
        try:
            return open(self._path(key), "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StorageError(f"cannot read artifact {key} under {self.base}: {e.strerror or e}") from e

    def _store_file(self, key: str, path: Path) -> None:
        self._place(key, lambda tmp: shutil.move(str(path), tmp))

    def _place(self, key: str, fill: Callable[[str], object]) -> None:
        """Atomically put what ``fill`` writes to a temp file beside the key's path there (fsync, then rename)."""
        p = self._path(key)
        tmp: str | None = None
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp-")
            os.close(fd)
            fill(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except OSError as e:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise StorageError(f"cannot write artifact {key} under {self.base}: {e.strerror or e}") from e

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
        body = self._open(key)
        if body is None:
            return None
        with body:
            return body.read()

    def _exists(self, key: str) -> bool:
        from minio.error import S3Error

        try:
            self.client.stat_object(self.bucket, self._obj(key))
            return True
        except S3Error:
            return False

    def _open(self, key: str) -> BinaryIO | None:
        from minio.error import S3Error

        try:
            resp = self.client.get_object(self.bucket, self._obj(key))
        except S3Error as e:
            if e.code in ("NoSuchKey", "NoSuchObject"):
                return None
            raise StorageError(f"cannot read s3://{self.bucket}/{self._obj(key)}: {e}") from e
        except Exception as e:  # noqa: BLE001 - connection errors come as urllib3 exceptions
            raise StorageError(f"cannot read s3://{self.bucket}/{self._obj(key)}: {e}") from e
        return _S3Body(resp)

    def _store_file(self, key: str, path: Path) -> None:
        try:
            self.client.fput_object(self.bucket, self._obj(key), str(path))
        except Exception as e:  # noqa: BLE001
            raise StorageError(f"cannot write s3://{self.bucket}/{self._obj(key)}: {e}") from e

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


class _S3Body(io.RawIOBase):
    """A minio response as a closeable binary stream (releases the connection on close)."""

    def __init__(self, resp) -> None:  # noqa: ANN001 - urllib3 response
        self.resp = resp

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self.resp.read(None if n < 0 else n)

    def close(self) -> None:
        if not self.closed:
            self.resp.close()
            self.resp.release_conn()
        super().close()


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
