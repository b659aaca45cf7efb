"""MLflow recording against a real ``mlflow server``: runs per epoch and idea, idempotent under retries."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST

from ideaforge.cli import stack
from ideaforge.cli.procs import free_port
from ideaforge.config import Settings
from ideaforge.models import (
    ArtifactRef,
    CurvePoint,
    DeviceTime,
    Idea,
    IdeaOutcome,
    IdeaSummary,
    RecordEpochRequest,
    RecordIdeaRequest,
    RunResult,
    Usage,
)
from ideaforge.names import campaign_workflow_id, experiment_name, idea_id
from ideaforge.store.artifacts import LocalStore
from ideaforge.track.tracker import (
    PARAM_MAX,
    Tracker,
    TrackingError,
    TrackingUnavailable,
    epoch_key,
    flatten,
    metric_key,
)
from tests.mlflow_rows import campaign_runs

CURVE = [CurvePoint(step=s, value=3.0 - 0.01 * s) for s in range(0, 200, 10)]
DIFF = (
    "diff --git a/train.py b/train.py\n--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-lr = 1e-3\n+lr = 3e-3\n"
)
LOG = "step 0 loss 3.0\nstep 190 loss 1.1\n"
RUN_START = 1_790_000_000.0  # a fixed unix time: the training run began here


def _campaign() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def _epoch_req(
    campaign: str, epoch: int, summary: dict[str, float] | None = None, config=None
) -> RecordEpochRequest:
    return RecordEpochRequest(
        experiment=experiment_name(campaign),
        campaign=campaign,
        env="toy",
        epoch=epoch,
        workflow_id=campaign_workflow_id(campaign),
        config=config or {},
        summary=summary,
    )


def _idea_req(
    store: LocalStore,
    campaign: str,
    epoch: int,
    index: int,
    epoch_run_id: str | None,
    ok: bool = True,
    text: str = "Raise the learning rate to 3e-3.",
    diff: ArtifactRef | None = None,
) -> RecordIdeaRequest:
    iid = idea_id(campaign, epoch, index)
    parents = [idea_id(campaign, epoch - 1, 0)] if epoch > 0 else []
    idea = Idea(
        idea_id=iid, epoch=epoch, index=index, title=f"idea {index}", text=text, parent_ids=parents, seed=7
    )
    run = (
        RunResult(
            status="ok",
            metric=1.5 + index,
            metrics={"val_loss": 1.5 + index},
            curve=CURVE,
            log=store.put_text(LOG, "log"),
            wall_s=12.0,
            train_s=10.0,
            eval_s=1.5,
            started_at=RUN_START,
            finished_at=RUN_START + 180.0,
            devices=2,
            device_time=DeviceTime.held("gpu", 2, 200.0, attempts=2),
        )
        if ok
        else RunResult(
            status="failed", category="crashed", error="Traceback: boom", log=store.put_text(LOG, "log")
        )
    )
    summary = IdeaSummary(
        idea_id=iid,
        epoch=epoch,
        title=idea.title,
        text=text,
        origin="explore",
        parent_ids=parents,
        status="ok" if ok else "failed",
        category=None if ok else "crashed",
        metric=run.metric,
        reward=0.25 if ok else -1.0,
        diff=diff if diff is not None else store.put_text(DIFF, "diff"),
        device_time=run.device_time,
    )
    outcome = IdeaOutcome(
        summary=summary,
        revisions=1,
        run=run,
        usage=Usage(
            calls=2,
            input_tokens=1000,
            output_tokens=300,
            cached_input_tokens=600,
            cache_write_tokens=200,
            reasoning_tokens=120,
            cancelled_calls=1,
            cancelled_tokens=400,
            truncated_calls=1,
            cost_usd=0.01,
        ),
        orchestration_s=0.5,
        error=None if ok else "Traceback: boom",
    )
    return RecordIdeaRequest(
        experiment=experiment_name(campaign),
        campaign=campaign,
        epoch_run_id=epoch_run_id,
        idea=idea,
        outcome=outcome,
        workflow_id=iid,
        run_id="temporal-run-1",
        env="toy",
        profile="smoke",
    )


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture
def tracker(mlflow_server: str, store: LocalStore) -> Tracker:
    return Tracker(mlflow_server, store)


def _history(tracker: Tracker, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in tracker.client.get_metric_history(run_id, key))


# ---------------------------------------------------------------------- pure helpers


def test_flatten_and_metric_keys() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2], "f": None, "g": {}}) == {
        "a.b": "1",
        "a.c.d": "x",
        "e": "[1, 2]",
        "f": "null",
        "g": "{}",
    }
    assert metric_key("val/loss (ema)") == "val/loss _ema_"
    assert metric_key("acc@1") == "acc_1"


def test_bad_arguments_are_clear_errors(store: LocalStore) -> None:
    with pytest.raises(ValueError, match="tracking_uri is empty"):
        Tracker("", store)
    t = Tracker(f"http://127.0.0.1:{free_port()}", store)
    with pytest.raises(ValueError, match="terminal status"):
        t.finish("abc", "RUNNING")
    with pytest.raises(TrackingError, match="must not contain quotes"):
        t.runs_by_key("0", "it's")


def test_unreachable_server_is_a_fast_retryable_error(store: LocalStore) -> None:
    port = free_port()
    t = Tracker(f"http://127.0.0.1:{port}", store)
    started = time.monotonic()
    with pytest.raises(TrackingUnavailable, match=f"127.0.0.1:{port}.*unreachable"):
        t.record_epoch(_epoch_req("c", 0))
    assert time.monotonic() - started < 5  # no client-side retry loop of minutes


# ---------------------------------------------------------------------- against the session server


@pytest.mark.integration
def test_record_epoch_and_ideas_then_list(tracker: Tracker, store: LocalStore) -> None:
    c = _campaign()
    ep = tracker.record_epoch(_epoch_req(c, 1, config={"search": {"strategy": "evolution"}, "epochs": 3}))
    long_text = "x" * 7000
    ok = tracker.record_idea(_idea_req(store, c, 1, 0, ep.run_id, text=long_text))
    bad = tracker.record_idea(_idea_req(store, c, 1, 1, ep.run_id, ok=False))
    done = tracker.record_epoch(
        _epoch_req(c, 1, summary={"best_metric": 1.5, "ideas_ok": 1, "execution_rate": 0.5})
    )
    assert done.run_id == ep.run_id and ok.experiment_id == ep.experiment_id

    rows = campaign_runs(tracker.client, c)
    assert [r["idea_id"] for r in rows] == [idea_id(c, 1, 0), idea_id(c, 1, 1)]
    r_ok, r_bad = rows
    assert (r_ok["run_id"], r_ok["status"], r_bad["run_id"], r_bad["status"]) == (
        ok.run_id,
        "FINISHED",
        bad.run_id,
        "FAILED",
    )
    assert r_ok["parent_run_id"] == ep.run_id and r_ok["epoch"] == 1 and r_ok["run_name"] == "e001/i00 idea 0"
    # the UI opens the experiment on its runs table (not an empty GenAI traces view)
    assert tracker.client.get_experiment(ok.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    # not nested: nested runs hide under collapsed epoch rows in the MLflow UI
    assert "mlflow.parentRunId" not in r_ok["tags"] and r_ok["tags"]["ideaforge.epoch_run_id"] == ep.run_id
    # the run lasts as long as the training it records (not the milliseconds of recording)
    info = tracker.client.get_run(ok.run_id).info
    assert (info.start_time, info.end_time) == (int(RUN_START * 1000), int((RUN_START + 180.0) * 1000))
    t = r_ok["tags"]
    assert t["ideaforge.key"] == idea_id(c, 1, 0) and t["ideaforge.status"] == "ok"
    assert t["ideaforge.origin"] == "explore" and t["ideaforge.parent_ids"] == idea_id(c, 0, 0)
    assert t["temporal.workflow_id"] == idea_id(c, 1, 0) and t["temporal.run_id"] == "temporal-run-1"
    assert t["ideaforge.env"] == "toy" and t["ideaforge.campaign"] == c
    assert r_bad["tags"]["ideaforge.category"] == "crashed"
    p = r_ok["params"]
    assert p["title"] == "idea 0" and p["seed"] == "7" and p["profile"] == "smoke" and p["revisions"] == "1"
    assert len(p["text"]) == PARAM_MAX and p["recipe"] == "null"
    m = r_ok["metrics"]
    assert m["val_loss"] == 1.5 and m["metric"] == 1.5 and m["reward"] == 0.25
    assert (m["train_s"], m["eval_s"], m["wall_s"], m["orchestration_s"]) == (10.0, 1.5, 12.0, 0.5)
    assert (m["input_tokens"], m["output_tokens"], m["cost_usd"], m["llm_calls"]) == (1000, 300, 0.01, 2)
    assert (m["cached_input_tokens"], m["cache_write_tokens"], m["reasoning_tokens"]) == (600, 200, 120)
    assert (m["cancelled_calls"], m["cancelled_tokens"], m["truncated_calls"]) == (1, 400, 1)
    assert _history(tracker, ok.run_id, "train_loss") == [(p.step, p.value) for p in CURVE]
    assert "metric" not in r_bad["metrics"] and r_bad["metrics"]["reward"] == -1.0
    assert (m["gpu_seconds"], m["cpu_slot_seconds"], m["train_attempts"], m["devices"]) == (400.0, 0.0, 2.0, 2.0)

    (epoch_row,) = campaign_runs(tracker.client, c, kind="epoch")
    assert epoch_row["run_name"] == "epoch-001" and epoch_row["status"] == "FINISHED"
    assert (
        epoch_row["key"] == epoch_key(c, 1) and epoch_row["tags"]["temporal.workflow_id"] == campaign_workflow_id(c)
    )
    assert epoch_row["params"] == {"search.strategy": "evolution", "epochs": "3"}
    assert epoch_row["metrics"] == {"best_metric": 1.5, "ideas_ok": 1.0, "execution_rate": 0.5}


@pytest.mark.integration
def test_artifacts_are_readable_back(tracker: Tracker, store: LocalStore, tmp_path: Path) -> None:
    c = _campaign()
    text = "y" * 7000
    req = _idea_req(store, c, 0, 0, None, text=text)
    req = req.model_copy(update={"transcript": store.put_text('{"messages": []}', "transcript")})
    rec = tracker.record_idea(req)
    names = sorted(a.path for a in tracker.client.list_artifacts(rec.run_id))
    assert names == ["idea.md", "implement_transcript.txt", "patch.diff", "patch.diff.txt", "train.log"]
    preview = Path(tracker.client.download_artifacts(rec.run_id, "patch.diff.txt", str(tmp_path / "pv")))
    assert preview.read_text() == DIFF  # the MLflow UI previews .txt
    dl = Path(tracker.client.download_artifacts(rec.run_id, "patch.diff", str(tmp_path / "dl")))
    assert dl.read_text() == DIFF
    log = Path(tracker.client.download_artifacts(rec.run_id, "train.log", str(tmp_path / "dl")))
    assert log.read_text() == LOG
    md = Path(tracker.client.download_artifacts(rec.run_id, "idea.md", str(tmp_path / "dl"))).read_text()
    assert text in md  # the full text, not the 6000-char param

    bad = tracker.record_idea(_idea_req(store, c, 0, 1, None, ok=False))
    err = Path(tracker.client.download_artifacts(bad.run_id, "error.txt", str(tmp_path / "dl2")))
    assert err.read_text() == "Traceback: boom"


@pytest.mark.integration
def test_missing_blob_is_flagged_not_fatal(tracker: Tracker, store: LocalStore) -> None:
    c = _campaign()
    gone = ArtifactRef(uri=store.uri_for("cas/diff/00/" + "0" * 64), sha256="0" * 64, size=3)
    rec = tracker.record_idea(_idea_req(store, c, 0, 0, None, diff=gone))
    run = tracker.client.get_run(rec.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["ideaforge.missing_artifacts"] == "patch.diff"
    assert "patch.diff" not in [a.path for a in tracker.client.list_artifacts(rec.run_id)]


@pytest.mark.integration
def test_retry_after_success_returns_the_same_run(tracker: Tracker, store: LocalStore) -> None:
    c = _campaign()
    ep1 = tracker.record_epoch(_epoch_req(c, 0))
    ep2 = tracker.record_epoch(_epoch_req(c, 0))
    assert ep1 == ep2
    req = _idea_req(store, c, 0, 0, ep1.run_id)
    a, b = tracker.record_idea(req), tracker.record_idea(req)
    assert a == b
    rows = campaign_runs(tracker.client, c)
    assert len(rows) == 1
    assert _history(tracker, a.run_id, "train_loss") == [(p.step, p.value) for p in CURVE]
    assert len(tracker.client.get_metric_history(a.run_id, "metric")) == 1
    # a finished epoch run is left alone by a late retry of the epoch's first call
    tracker.record_epoch(_epoch_req(c, 0, summary={"best_metric": 1.5}))
    tracker.record_epoch(_epoch_req(c, 0, summary={"best_metric": 9.9}))
    assert tracker.client.get_run(ep1.run_id).data.metrics == {"best_metric": 1.5}
    assert len(campaign_runs(tracker.client, c, kind="epoch")) == 1


@pytest.mark.integration
def test_crashed_attempt_left_running_is_completed_without_duplicates(
    tracker: Tracker, store: LocalStore
) -> None:
    c = _campaign()
    req = _idea_req(store, c, 0, 3, None)
    # what a first attempt that died mid-way leaves behind: the run, some params, half the curve, RUNNING
    eid = tracker.experiment_id(experiment_name(c))
    run, created = tracker.ensure_run(eid, req.idea.idea_id, req.idea.title, {"ideaforge.kind": "idea"})
    assert created and run.info.status == "RUNNING"
    tracker.log_params(run, {"title": "idea 3", "seed": "7"}, skip_existing=False)
    # wall-clock timestamps, unlike the tracker's: the backend cannot dedupe these, only the history check can
    now = int(time.time() * 1000)
    tracker.client.log_batch(
        run.info.run_id, metrics=[Metric(p.key, p.value, now, p.step) for p in CURVE[:8]]
    )

    rec = tracker.record_idea(req)
    assert rec.run_id == run.info.run_id
    rows = campaign_runs(tracker.client, c)
    assert len(rows) == 1 and rows[0]["status"] == "FINISHED"
    assert rows[0]["tags"]["ideaforge.idea_id"] == req.idea.idea_id  # full tags written on completion
    hist = _history(tracker, rec.run_id, "train_loss")
    assert hist == [(p.step, p.value) for p in CURVE]  # one curve: no step logged twice
    assert len(tracker.client.get_metric_history(rec.run_id, "val_loss")) == 1
    assert rows[0]["params"]["profile"] == "smoke"  # the params the crash never wrote were added


@pytest.mark.integration
def test_concurrent_attempts_leave_one_run(tracker: Tracker, store: LocalStore) -> None:
    c = _campaign()
    req = _idea_req(store, c, 0, 0, None)
    results: list[str] = []
    errors: list[BaseException] = []

    def attempt() -> None:
        try:
            results.append(tracker.record_idea(req).run_id)
        except BaseException as e:  # noqa: BLE001 - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=attempt) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors
    rows = campaign_runs(tracker.client, c)
    assert len(rows) == 1 and set(results) == {rows[0]["run_id"]}
    assert _history(tracker, rows[0]["run_id"], "train_loss") == [(p.step, p.value) for p in CURVE]


def _racing_params(tracker: Tracker, monkeypatch: pytest.MonkeyPatch, other: dict[str, str]) -> None:
    """The first params batch meets another attempt's insert of ``other`` (committed first): what MLflow's
    SQL store answers then, a unique-key violation reported as BAD_REQUEST."""
    real = tracker.client.log_batch
    raced: list[bool] = []

    def log_batch(run_id: str, metrics=(), params=(), tags=(), **kw):  # noqa: ANN001, ANN003, ANN202
        if params and not raced:
            raced.append(True)
            real(run_id, params=[Param(k, v) for k, v in other.items()])
            raise MlflowException(
                "(sqlite3.IntegrityError) UNIQUE constraint failed: params.key, params.run_uuid",
                error_code=BAD_REQUEST,
            )
        return real(run_id, metrics=metrics, params=params, tags=tags, **kw)

    monkeypatch.setattr(tracker.client, "log_batch", log_batch)


@pytest.mark.integration
def test_params_racing_another_attempt_are_completed_not_an_error(
    tracker: Tracker, store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both attempts log the run's params at once (CI saw it 1 in ~25 full runs): the loser keeps the winner's
    params and logs the rest, and the idea is recorded once, whole."""
    c = _campaign()
    req = _idea_req(store, c, 0, 0, None)
    _racing_params(tracker, monkeypatch, {"title": req.idea.title})
    rec = tracker.record_idea(req)
    rows = campaign_runs(tracker.client, c)
    assert len(rows) == 1 and rows[0]["run_id"] == rec.run_id and rows[0]["status"] == "FINISHED"
    assert rows[0]["params"]["title"] == req.idea.title and rows[0]["params"]["profile"] == "smoke"


@pytest.mark.integration
@pytest.mark.parametrize(
    "other",
    [{"title": "another idea"}, {}],
    ids=["a-param-raced-with-another-value", "a-rejection-that-is-no-race"],
)
def test_a_rejection_that_is_not_the_same_params_stays_an_error(
    tracker: Tracker, store: LocalStore, monkeypatch: pytest.MonkeyPatch, other: dict[str, str]
) -> None:
    c = _campaign()
    req = _idea_req(store, c, 0, 0, None)
    _racing_params(tracker, monkeypatch, other)
    with pytest.raises(TrackingError, match="rejected logging params"):
        tracker.record_idea(req)


# ---------------------------------------------------------------------- server outage (own server)


@pytest.mark.integration
@pytest.mark.slow
def test_server_down_then_restarted_records_without_duplicates(settings: Settings, store: LocalStore) -> None:
    """Kill the server mid-campaign: recording fails (retryable) while down, succeeds after, no duplicates."""
    stack.start_mlflow(settings, timeout_s=120)
    try:
        t = Tracker(settings.mlflow_uri, store)
        c = _campaign()
        ep = t.record_epoch(_epoch_req(c, 0))
        first = t.record_idea(_idea_req(store, c, 0, 0, ep.run_id))
        assert stack.down(settings) == ["mlflow"]

        started = time.monotonic()
        with pytest.raises(TrackingUnavailable, match="unreachable"):
            t.record_idea(_idea_req(store, c, 0, 1, ep.run_id))
        with pytest.raises(TrackingUnavailable):
            t.record_epoch(_epoch_req(c, 0, summary={"best_metric": 1.5}))
        assert time.monotonic() - started < 10

        stack.start_mlflow(settings, timeout_s=120)  # same home: same sqlite db and artifact dir
        # the Temporal retries: both ideas again (one was done before the outage) and the epoch end
        again = t.record_idea(_idea_req(store, c, 0, 0, ep.run_id))
        second = t.record_idea(_idea_req(store, c, 0, 1, ep.run_id))
        t.record_epoch(_epoch_req(c, 0, summary={"best_metric": 1.5}))
        assert again == first
        rows = campaign_runs(t.client, c)
        assert [r["run_id"] for r in rows] == [first.run_id, second.run_id]
        assert all(r["status"] == "FINISHED" for r in rows)
        for r in rows:
            assert _history(t, r["run_id"], "train_loss") == [(p.step, p.value) for p in CURVE]
        (e,) = campaign_runs(t.client, c, kind="epoch")
        assert e["status"] == "FINISHED" and e["metrics"] == {"best_metric": 1.5}
    finally:
        stack.down(settings)


@pytest.mark.integration
def test_deleting_a_campaign_frees_its_experiment_name(tracker: Tracker, store: LocalStore) -> None:
    c = _campaign()
    first = tracker.record_idea(_idea_req(store, c, 0, 0, None))
    assert tracker.delete_campaign(c) is True
    assert campaign_runs(tracker.client, c) == []
    again = tracker.record_idea(_idea_req(store, c, 0, 0, None))  # same name: a fresh experiment
    assert again.experiment_id != first.experiment_id
    assert [r["run_id"] for r in campaign_runs(tracker.client, c)] == [again.run_id]
    assert tracker.delete_campaign("never-existed-" + c) is False
