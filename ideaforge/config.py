"""Where things live: data directory, server addresses, artifact store. Read from the environment.

Every setting has an ``IDEAFORGE_*`` environment variable; defaults give the embedded local stack.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


class Settings(BaseModel):
    """Process-wide settings. Secrets are never fields here: S3 keys are read from the env at use."""

    home: Path = Field(description="data directory: temporal db, mlflow db, artifacts, logs, pid files")
    temporal_address: str = "127.0.0.1:7233"
    temporal_ui_port: int = 8233
    temporal_namespace: str = "default"
    mlflow_uri: str = "http://127.0.0.1:5000"
    artifact_uri: str = ""  # file:///abs/dir or s3://bucket/prefix ; empty = <home>/artifacts
    s3_endpoint: str | None = None  # host:port of MinIO/S3 when artifact_uri is s3://
    s3_secure: bool = False
    env_paths: list[Path] = Field(default_factory=list)  # extra folders holding research envs
    train_slots: int = 2
    worker_identity: str | None = None

    @property
    def artifact_root(self) -> str:
        return self.artifact_uri or (self.home / "artifacts").resolve().as_uri()

    @property
    def mlflow_port(self) -> int:
        return int(self.mlflow_uri.rstrip("/").rsplit(":", 1)[1])

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(_env("IDEAFORGE_HOME", str(Path.home() / ".ideaforge"))).expanduser().resolve()
        paths = [Path(p) for p in _env("IDEAFORGE_ENV_PATH", "").split(os.pathsep) if p]
        return cls(
            home=home,
            temporal_address=_env("IDEAFORGE_TEMPORAL_ADDRESS", "127.0.0.1:7233"),
            temporal_ui_port=int(_env("IDEAFORGE_TEMPORAL_UI_PORT", "8233")),
            temporal_namespace=_env("IDEAFORGE_TEMPORAL_NAMESPACE", "default"),
            mlflow_uri=_env("IDEAFORGE_MLFLOW_URI", "http://127.0.0.1:5000"),
            artifact_uri=_env("IDEAFORGE_ARTIFACT_URI", ""),
            s3_endpoint=os.environ.get("IDEAFORGE_S3_ENDPOINT") or None,
            s3_secure=_env("IDEAFORGE_S3_SECURE", "0") in ("1", "true", "yes"),
            env_paths=paths,
            train_slots=int(_env("IDEAFORGE_TRAIN_SLOTS", "2")),
            worker_identity=os.environ.get("IDEAFORGE_WORKER_IDENTITY") or None,
        )
