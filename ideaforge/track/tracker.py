"""MLflow recording: an experiment per campaign, a run per epoch, and a run per idea (flat, not nested).

Everything goes through ``MlflowClient`` with explicit run ids (the module-level API is thread-local).
Runs are found again by the tag ``ideaforge.key`` so Temporal activity retries never create duplicates:

- a run that exists and is terminated (FINISHED/FAILED/KILLED) is returned untouched;
- a run that exists but is still RUNNING (an earlier attempt crashed mid-way) is completed in place:
  params already there are skipped, and metric points whose (key, step) already exist in the run's
  history are skipped, so a curve is never doubled. All points of a run carry the run's start time as
  timestamp, so a re-log of the same point is also identical byte for byte.
- two attempts racing to create the same run: the oldest run with the key (start time, then run id) wins;
  a younger duplicate deletes itself, checked right after creating and again before finishing. The
  oldest is never deleted, so one run always survives.

Errors: :class:`TrackingUnavailable` (server down, 5xx: retry) and :class:`TrackingError` (MLflow rejected
the request: retrying will not help).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import requests
from mlflow.entities import Metric, Param, Run, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ideaforge.models import ArtifactRef, RecordEpochRequest, RecordIdeaRequest, RecordResult
from ideaforge.names import experiment_name
from ideaforge.store.artifacts import ObjectStore, StorageError

log = logging.getLogger(__name__)

KEY_TAG = "ideaforge.key"
KIND_TAG = "ideaforge.kind"
PARENT_TAG = "mlflow.parentRunId"
EPOCH_RUN_TAG = "ideaforge.epoch_run_id"
# the MLflow UI opens a "custom model development" experiment on its runs table, not on an empty traces view
EXPERIMENT_TAGS = {KIND_TAG: "campaign", "mlflow.experimentKind": "custom_model_development"}
TERMINAL = frozenset({"FINISHED", "FAILED", "KILLED"})
PARAM_MAX = 6000  # MLflow's limit on a param value
TAG_MAX = 8000  # MLflow's limit on a tag value
KEY_MAX = 250  # MLflow's limit on a param/metric/tag key
RUN_NAME_MAX = 120
PREVIEW_DIFF = "patch.diff.txt"  # the same diff under a name the MLflow UI shows inline
_BATCH_METRICS = 1000
_BATCH_PARAMS = 100
# MLflow error codes that mean "the request itself is wrong": retrying cannot help
_PERMANENT_CODES = frozenset(
    {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "INVALID_STATE", "PERMISSION_DENIED", "UNAUTHENTICATED"}
)
_METRIC_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")
_CLIENT_ENV_DEFAULTS = {
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}


class TrackingError(RuntimeError):
    """MLflow rejected a request (bad key, bad value, ...): retrying the same request will not help."""


class TrackingUnavailable(RuntimeError):
    """The MLflow server cannot be reached or failed (5xx): retry later (Temporal's retry policy does)."""


def epoch_key(campaign: str, epoch: int) -> str:
    return f"{campaign}/epoch-{epoch:03d}"


def report_key(campaign: str) -> str:
    return f"{campaign}/report"


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dict -> ``{"a.b": "value"}`` with string values (lists/None as JSON)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        elif isinstance(v, str):
            out[key] = v
        else:
            out[key] = json.dumps(v, default=str, sort_keys=True)
    return out


def metric_key(key: str) -> str:
    """A metric name MLflow accepts (letters, digits, ``_-. /``)."""
    return _METRIC_KEY_BAD.sub("_", key)[:KEY_MAX] or "_"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Tracker:
    """Records campaigns in MLflow. ``store`` is where diffs and logs referenced by outcomes live."""

    def __init__(
        self, tracking_uri: str, store: ObjectStore | None = None, ping_timeout_s: float = 5.0
    ) -> None:
        if not tracking_uri:
            raise ValueError("tracking_uri is empty: give the MLflow server URL, e.g. http://127.0.0.1:5000")
        # Defaults for this process (a user's own settings win): no run URLs printed to stdout, and a short
        # client-side retry loop (~7 s instead of minutes): Temporal's retry policy owns long outages.
        for k, v in _CLIENT_ENV_DEFAULTS.items():
            os.environ.setdefault(k, v)
        self.uri = tracking_uri.rstrip("/")
        self.store = store
        self.client = MlflowClient(tracking_uri=self.uri)
        self.ping_timeout_s = ping_timeout_s

    # ------------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn MLflow/HTTP exceptions into TrackingError (permanent) or TrackingUnavailable (retry)."""
        try:
            yield
        except (TrackingError, TrackingUnavailable):
            raise
        except MlflowException as e:
            if e.error_code in _PERMANENT_CODES:
                raise TrackingError(f"MLflow at {self.uri} rejected {what}: {e.message}") from e
            raise TrackingUnavailable(
                f"MLflow at {self.uri} failed while {what} (retryable): {e.message}"
            ) from e
        except (requests.RequestException, ConnectionError, TimeoutError) as e:
            raise TrackingUnavailable(
                f"MLflow at {self.uri} unreachable while {what} (retryable): {e}"
            ) from e

    def ping(self) -> None:
        """Fail fast (no client-side retry loop) when an HTTP tracking server is down."""
        if not self.uri.startswith(("http://", "https://")):
            return
        try:
            resp = requests.get(f"{self.uri}/health", timeout=self.ping_timeout_s)
        except requests.RequestException as e:
            raise TrackingUnavailable(f"MLflow server {self.uri} is unreachable (retryable): {e}") from e
        if resp.status_code != 200:
            raise TrackingUnavailable(
                f"MLflow server {self.uri} is unhealthy: HTTP {resp.status_code} on /health"
            )

    def experiment_id(self, name: str) -> str:
        """Id of experiment ``name``, created (or restored) if needed; safe when several workers race.

        Looked up each time (one ~10 ms call): a campaign deleted and started again under the same name gets
        a new experiment, and a cached id would point at the deleted one."""
        with self._errors(f"getting experiment {name!r}"):
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                try:
                    eid = self.client.create_experiment(name, tags=EXPERIMENT_TAGS)
                except MlflowException as e:
                    if e.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                    exp = self.client.get_experiment_by_name(name)
                    if exp is None:
                        raise TrackingUnavailable(f"experiment {name!r} exists but cannot be read yet") from e
            if exp is not None:
                eid = exp.experiment_id
                if exp.lifecycle_stage == "deleted":
                    log.warning("restoring deleted MLflow experiment %s", name)
                    self.client.restore_experiment(eid)
        return eid

    def runs_by_key(self, experiment_id: str, key: str) -> list[Run]:
        """Active runs tagged ``ideaforge.key = key``, oldest first (ties by run id)."""
        if "'" in key or "\\" in key:
            raise TrackingError(f"run key {key!r} must not contain quotes or backslashes")
        with self._errors(f"searching runs with key {key!r}"):
            runs = self.client.search_runs(
                [experiment_id],
                filter_string=f"tags.`{KEY_TAG}` = '{key}'",
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=50,
            )
        return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))

    def ensure_run(
        self,
        experiment_id: str,
        key: str,
        run_name: str,
        tags: Mapping[str, str],
        start_time_ms: int | None = None,
    ) -> tuple[Run, bool]:
        """The run with ``key``, created with ``tags`` (and ``start_time_ms``: when the work it records began)
        when missing. Returns (run, created_by_this_call)."""
        found = self.runs_by_key(experiment_id, key)
        if found:
            return found[0], False
        all_tags = {k: _clip(str(v), TAG_MAX) for k, v in tags.items()} | {KEY_TAG: key}
        with self._errors(f"creating run {key!r}"):
            run = self.client.create_run(
                experiment_id, start_time=start_time_ms, run_name=_clip(run_name, RUN_NAME_MAX), tags=all_tags
            )
        winner = self.runs_by_key(experiment_id, key)
        if winner and winner[0].info.run_id != run.info.run_id:
            log.info(
                "run %s lost a creation race for %s to %s; deleting it",
                run.info.run_id,
                key,
                winner[0].info.run_id,
            )
            with self._errors(f"deleting duplicate run {run.info.run_id}"):
                self.client.delete_run(run.info.run_id)
            return winner[0], False
        return run, True

    def log_params(self, run: Run, params: Mapping[str, str], skip_existing: bool = True) -> None:
        """Log params (values clipped to MLflow's limit); with ``skip_existing`` keys already there are kept."""
        have = run.data.params if skip_existing else {}
        todo = [
            Param(k[:KEY_MAX], _clip(str(v), PARAM_MAX)) for k, v in params.items() if k[:KEY_MAX] not in have
        ]
        for i in range(0, len(todo), _BATCH_PARAMS):
            self._log_param_batch(run.info.run_id, todo[i : i + _BATCH_PARAMS])

    def _log_param_batch(self, run_id: str, batch: list[Param]) -> None:
        """One batch of params. Two attempts logging the same params at once collide in MLflow's SQL store
        (a unique-key violation it reports as BAD_REQUEST, unlike tags and metrics, which it retries): on a
        rejection, params the other writer logged with the same value are done, and the rest are sent once
        more; a param logged with another value stays an error."""
        try:
            with self._errors(f"logging params of run {run_id}"):
                self.client.log_batch(run_id, params=batch)
            return
        except TrackingError:
            with self._errors(f"reading params of run {run_id}"):
                logged = self.client.get_run(run_id).data.params
            rest = [p for p in batch if p.key not in logged]
            if any(logged[p.key] != p.value for p in batch if p.key in logged) or len(rest) == len(batch):
                raise
        if rest:
            log.info("params of run %s raced another attempt; logging the %d still missing", run_id, len(rest))
            with self._errors(f"logging params of run {run_id}"):
                self.client.log_batch(run_id, params=rest)

    def log_metrics(self, run: Run, points: list[tuple[str, float, int]], skip_existing: bool = True) -> int:
        """Log (key, value, step) points with the run's start time as timestamp; non-finite values dropped.

        With ``skip_existing``, points whose (key, step) already are in the run's history are skipped.
        Returns how many points were written.
        """
        ts = int(run.info.start_time or 0)
        uniq: dict[tuple[str, int], float] = {}
        for key, value, step in points:
            if value is None or not math.isfinite(float(value)):
                continue
            uniq[(metric_key(key), int(step))] = float(value)  # a repeated (key, step) keeps the last value
        if skip_existing and uniq:
            for key in {k for k, _ in uniq} & set(run.data.metrics):
                with self._errors(f"reading history of {key!r} in run {run.info.run_id}"):
                    steps = {m.step for m in self.client.get_metric_history(run.info.run_id, key)}
                for s in steps:
                    uniq.pop((key, s), None)
        todo = [
            Metric(k, v, ts, s) for (k, s), v in sorted(uniq.items(), key=lambda kv: (kv[0][0], kv[0][1]))
        ]
        with self._errors(f"logging metrics of run {run.info.run_id}"):
            for i in range(0, len(todo), _BATCH_METRICS):
                self.client.log_batch(run.info.run_id, metrics=todo[i : i + _BATCH_METRICS])
        return len(todo)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        items = [RunTag(k[:KEY_MAX], _clip(str(v), TAG_MAX)) for k, v in tags.items()]
        with self._errors(f"tagging run {run_id}"):
            for i in range(0, len(items), _BATCH_PARAMS):
                self.client.log_batch(run_id, tags=items[i : i + _BATCH_PARAMS])

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        with self._errors(f"uploading {artifact_file} to run {run_id}"):
            self.client.log_text(run_id, text, artifact_file)

    def log_file(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        with self._errors(f"uploading {Path(path).name} to run {run_id}"):
            self.client.log_artifact(run_id, str(path), artifact_path)

    def finish(self, run_id: str, status: str = "FINISHED", end_time_ms: int | None = None) -> None:
        if status not in TERMINAL:
            raise ValueError(f"terminal status must be one of {sorted(TERMINAL)}, got {status!r}")
        with self._errors(f"terminating run {run_id}"):
            self.client.set_terminated(run_id, status, end_time=end_time_ms)

    # ------------------------------------------------------------------ epochs

    def record_epoch(self, req: RecordEpochRequest) -> RecordResult:
        """Open (or find) the epoch's parent run; with ``req.summary``, log it and finish the run."""
        self.ping()
        eid = self.experiment_id(req.experiment)
        tags = {
            "ideaforge.campaign": req.campaign,
            "ideaforge.epoch": str(req.epoch),
            KIND_TAG: "epoch",
            "ideaforge.env": req.env,
            "temporal.workflow_id": req.workflow_id,
        }
        run, created = self.ensure_run(
            eid, epoch_key(req.campaign, req.epoch), f"epoch-{req.epoch:03d}", tags
        )
        if run.info.status in TERMINAL:
            return RecordResult(run_id=run.info.run_id, experiment_id=eid)
        if req.config and (created or not run.data.params):  # params only once (or after a crashed first try)
            self.log_params(run, flatten(req.config), skip_existing=not created)
        if req.summary is not None:
            points = [(k, v, req.epoch) for k, v in req.summary.items()]
            self.log_metrics(run, points, skip_existing=not created)
            self.finish(run.info.run_id, "FINISHED")
        return RecordResult(run_id=run.info.run_id, experiment_id=eid)

    # ------------------------------------------------------------------ ideas

    def record_idea(self, req: RecordIdeaRequest) -> RecordResult:
        """One run per idea (linked to its epoch run by a tag): params, metrics, curve, artifacts, status."""
        self.ping()
        eid = self.experiment_id(req.experiment)
        start_ms, end_ms = _idea_times(req)
        run, created = self.ensure_run(eid, req.idea.idea_id, idea_run_name(req), _idea_tags(req), start_ms)
        run_id = run.info.run_id
        if run.info.status in TERMINAL:
            log.info("idea %s already recorded as run %s (%s)", req.idea.idea_id, run_id, run.info.status)
            return RecordResult(run_id=run_id, experiment_id=eid)
        try:
            return self._complete_idea_run(eid, run, created, req, end_ms)
        except TrackingError:
            # a concurrent attempt that created this run deleted it meanwhile, yielding to an older one (at any
            # step: params, metrics, artifacts or the finish): the older run owns the key and its attempt completes it
            owner = self.runs_by_key(eid, req.idea.idea_id)
            if not owner or owner[0].info.run_id == run_id:
                raise
            log.info("run %s of %s was deleted meanwhile; %s owns the key", run_id, req.idea.idea_id, owner[0].info.run_id)
            return RecordResult(run_id=owner[0].info.run_id, experiment_id=eid)

    def _complete_idea_run(
        self, eid: str, run: Run, created: bool, req: RecordIdeaRequest, end_ms: int | None
    ) -> RecordResult:
        run_id = run.info.run_id
        if not created:
            log.info("completing unfinished run %s of idea %s", run_id, req.idea.idea_id)
            self.set_tags(run_id, _idea_tags(req))
        self.log_params(run, _idea_params(req), skip_existing=not created)
        self.log_metrics(run, _idea_metrics(req), skip_existing=not created)
        missing = self._idea_artifacts(run_id, req)
        if missing:
            self.set_tags(run_id, {"ideaforge.missing_artifacts": ",".join(missing)})
        oldest = self.runs_by_key(eid, req.idea.idea_id)
        if oldest and oldest[0].info.run_id != run_id:
            # an attempt that committed later but started earlier owns the key: it completes that run
            log.info("run %s of %s yields to older run %s", run_id, req.idea.idea_id, oldest[0].info.run_id)
            if created:
                with self._errors(f"deleting duplicate run {run_id}"):
                    self.client.delete_run(run_id)
            return RecordResult(run_id=oldest[0].info.run_id, experiment_id=eid)
        self.finish(run_id, "FINISHED" if req.outcome.summary.status == "ok" else "FAILED", end_ms)
        return RecordResult(run_id=run_id, experiment_id=eid)

    def _idea_artifacts(self, run_id: str, req: RecordIdeaRequest) -> list[str]:
        """Upload idea.md, patch.diff, train.log, transcript, error.txt; returns names whose blob was gone."""
        out = req.outcome
        self.log_text(run_id, idea_markdown(req), "idea.md")
        missing: list[str] = []
        blobs: list[tuple[str, ArtifactRef | None]] = [
            ("patch.diff", out.summary.diff),
            ("train.log", out.run.log if out.run else None),
            ("implement_transcript.txt", req.transcript),
        ]
        for name, ref in blobs:
            if ref is None:
                continue
            text = self._fetch(ref, name, missing)
            if text is not None:
                self.log_text(run_id, text, name)
                if name == "patch.diff":  # the MLflow UI previews .txt, not .diff
                    self.log_text(run_id, text, PREVIEW_DIFF)
        if out.error:
            self.log_text(run_id, out.error, "error.txt")
        return missing

    def _fetch(self, ref: ArtifactRef, name: str, missing: list[str]) -> str | None:
        if self.store is None:
            raise TrackingError(f"cannot upload {name} ({ref.uri}): the Tracker was given no artifact store")
        try:
            return self.store.get_bytes(ref).decode(errors="replace")
        except StorageError as e:
            if str(e).startswith(("artifact missing", "artifact corrupt")):
                log.warning("not uploading %s: %s", name, e)  # permanent: record the rest, flag it
                missing.append(name)
                return None
            raise  # a store outage: let the activity retry

    def delete_campaign(self, campaign: str) -> bool:
        """Delete the campaign's experiment, renamed first so that its name is free for a new campaign
        (MLflow keeps a deleted experiment's name). Returns False when there was none."""
        name = experiment_name(campaign)
        with self._errors(f"deleting experiment {name!r}"):
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                return False
            self.client.rename_experiment(exp.experiment_id, f"{name} (deleted {exp.experiment_id})")
            if exp.lifecycle_stage != "deleted":
                self.client.delete_experiment(exp.experiment_id)
        return True

# ---------------------------------------------------------------------- idea run content


def _idea_tags(req: RecordIdeaRequest) -> dict[str, str]:
    s, idea = req.outcome.summary, req.idea
    tags = {
        "ideaforge.campaign": req.campaign,
        "ideaforge.epoch": str(idea.epoch),
        KIND_TAG: "idea",
        "ideaforge.idea_id": idea.idea_id,
        "ideaforge.env": req.env,
        "ideaforge.status": s.status,
        "ideaforge.category": s.category or "",
        "ideaforge.origin": idea.origin,
        "ideaforge.parent_ids": ",".join(idea.parent_ids),
        "temporal.workflow_id": req.workflow_id,
        "temporal.run_id": req.run_id,
    }
    if req.outcome.preflight is not None and req.outcome.preflight.saved_basis:
        tags["ideaforge.preflight_saved_basis"] = req.outcome.preflight.saved_basis
    if req.epoch_run_id:  # a link, not nesting: nested runs hide under collapsed epoch rows in the UI
        tags[EPOCH_RUN_TAG] = req.epoch_run_id
    if s.code is not None:
        tags["ideaforge.code_sha256"] = s.code.sha256
    if idea.code_from:
        tags["ideaforge.code_from"] = idea.code_from
    if req.outcome.run is not None:
        for k in ("worker", "device"):
            v = getattr(req.outcome.run, k)
            if v:
                tags[f"ideaforge.{k}"] = v
        if req.outcome.run.unsafe:  # trained without the sandbox (IDEAFORGE_UNSAFE_NO_SANDBOX=1)
            tags["ideaforge.unsafe"] = "true"
    return tags


def idea_run_name(req: RecordIdeaRequest) -> str:
    """``e000/i03 Rotary position embeddings``: sortable, and says which idea at a glance."""
    short = req.idea.idea_id.split("/", 1)[-1]
    return f"{short} {req.idea.title}".strip() if req.idea.title else short


def _idea_times(req: RecordIdeaRequest) -> tuple[int | None, int | None]:
    """(start, end) in ms of what the run records: the training run when there was one, so the UI's
    duration is the training time, not the few ms of recording."""
    run = req.outcome.run
    if run is None or not run.started_at:
        return None, None
    end = run.finished_at or run.started_at
    return int(run.started_at * 1000), int(end * 1000)


def _idea_params(req: RecordIdeaRequest) -> dict[str, str]:
    idea = req.idea
    recipe = [m.model_dump() for m in idea.recipe] if idea.recipe is not None else None
    return {
        "title": idea.title,
        "seed": str(idea.seed),
        "profile": req.profile,
        "revisions": str(req.outcome.revisions),
        "recipe": json.dumps(recipe, sort_keys=True),
        "text": _clip(idea.text, PARAM_MAX),
        "env": req.env,
    }


def _idea_metrics(req: RecordIdeaRequest) -> list[tuple[str, float, int]]:
    out, s = req.outcome, req.outcome.summary
    pts: list[tuple[str, float, int]] = []
    run = out.run
    if run is not None:
        pts += [(k, v, 0) for k, v in run.metrics.items()]
        pts += [("train_s", run.train_s, 0), ("eval_s", run.eval_s, 0), ("wall_s", run.wall_s, 0)]
        pts.append(("devices", float(run.devices), 0))
        pts += [(p.key, p.value, p.step) for p in run.curve]
    if s.metric is not None:
        pts.append(("metric", s.metric, 0))
    if s.reward is not None:
        pts.append(("reward", s.reward, 0))
    if s.confirmed_metrics:
        pts += [("confirmed_metric", v, i) for i, v in enumerate(s.confirmed_metrics)]
    u = out.usage
    pts.append(("orchestration_s", out.orchestration_s, 0))
    pts += [(k, v, 0) for k, v in u.metrics().items()]  # cached, reasoning, cancelled tokens included
    pts += [(k, v, 0) for k, v in s.device_time.metrics().items()]  # every training attempt, failed ones too
    pf = out.preflight
    if pf is not None:  # the CPU check before training: its cost and the slot time it kept free
        pts += [
            ("preflight_runs", float(pf.runs), 0),
            ("preflight_failures", float(pf.failures), 0),
            ("preflight_wall_s", pf.wall_s, 0),
            ("preflight_cpu_s", pf.cpu_s, 0),
            ("preflight_saved_train_s", pf.saved_train_s, 0),
            ("preflight_saved_device_s", pf.saved_device_s, 0),
        ]
    return pts


def idea_markdown(req: RecordIdeaRequest) -> str:
    idea, s = req.idea, req.outcome.summary
    lines = [
        f"# {idea.title}",
        "",
        f"- id: `{idea.idea_id}`",
        f"- epoch: {idea.epoch}, origin: {idea.origin}, seed: {idea.seed}",
        f"- parents: {', '.join(f'`{p}`' for p in idea.parent_ids) or 'none (baseline code)'}",
        f"- status: {s.status}" + (f" ({s.category})" if s.category else ""),
        f"- metric: {s.metric if s.metric is not None else 'n/a'}, reward: {s.reward if s.reward is not None else 'n/a'}",
    ]
    if idea.recipe:
        lines.append(f"- recipe: `{json.dumps([m.model_dump() for m in idea.recipe], sort_keys=True)}`")
    lines += ["", idea.text, ""]
    return "\n".join(lines)
