"""The paper's GPU envs (nanogpt_speedrun, grpo_math) on CPU, through the code the GPU profiles run.

Tiny sizes only: a tiny GPT and the locked single-token evaluator, data prep from a tiny local shard with
checksums, the r1_zero grader on a table of answer pairs, a tiny random-init Qwen2 (built from a config, with
a chat-template tokenizer) through rollout -> reward -> update -> evaluation, and GPU profiles refusing to run
without CUDA.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from ideaforge.research_envs.registry import load_env

ENV_MODULES = ("data", "model", "prepare", "evaluate", "launch", "problems", "answer", "engine", "grpo")


@contextmanager
def env_modules(name: str, monkeypatch: pytest.MonkeyPatch, **env: str) -> Iterator[dict]:
    """Import an env's baseline modules by their plain names (as its scripts do), then forget them."""
    base = str(load_env(name).baseline)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    saved = {m: sys.modules.pop(m) for m in ENV_MODULES if m in sys.modules}
    sys.path.insert(0, base)
    try:
        yield {m: importlib.import_module(m) for m in ENV_MODULES if Path(base, f"{m}.py").is_file()}
    finally:
        sys.path.remove(base)
        for m in ENV_MODULES:
            sys.modules.pop(m, None)
        sys.modules.update(saved)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------- grader


EQUIVALENT = [
    ("5", "5"),
    ("\\dfrac{3}{4}", "\\frac{3}{4}"),
    ("0.75", "\\frac34"),
    ("3/4", "\\frac{3}{4}"),
    ("1,000", "1000"),
    ("10\\text{ cm}", "10"),
    ("x^{2} + 1", "x^2+1"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
    ("2\\sqrt{2}", "\\sqrt{8}"),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}"),
    ("x=5", "5"),
    ("90^\\circ", "90"),
    ("50\\%", "50"),
    ("\\{1, 2\\}", "\\{2, 1\\}"),
    ("[1, 3)", "[1,3)"),
    ("\\pi/2", "\\frac{\\pi}{2}"),
    ("(x+1)^2", "x^2+2x+1"),
    ("-\\frac{1}{2}", "-0.5"),
]
NOT_EQUIVALENT = [
    ("-2", "2"),
    ("6", "5"),
    ("\\frac{3}{5}", "\\frac{3}{4}"),
    ("0.7", "\\frac{3}{4}"),
    ("[1, 3]", "[1,3)"),
    ("x^2-1", "x^2+1"),
    ("\\sqrt{2}", "2"),
    ("(3, 4)", "(4, 3)"),
    ("", "5"),
    ("\\pi", "3.14"),
]


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_grader_agrees_with_the_answer_table(monkeypatch: pytest.MonkeyPatch) -> None:
    with env_modules("grpo_math", monkeypatch) as m:
        eq = m["answer"].equivalent
        wrong_accepts = [(a, b) for a, b in EQUIVALENT if not eq(a, b)]
        wrong_rejects = [(a, b) for a, b in NOT_EQUIVALENT if eq(a, b)]
    assert wrong_accepts == [] and wrong_rejects == []


@pytest.mark.parametrize(
    ("response", "reference", "expected"),
    [
        ("2+3 is 5 </think> <answer>5</answer>", "5", (1.0, 1.0)),
        ("... </think> <answer>\\boxed{\\dfrac{1}{2}}</answer>", "0.5", (1.0, 1.0)),
        ("... </think> <answer>6</answer>", "5", (1.0, 0.0)),  # formatted but wrong: no reward
        ("... </think><answer>5</answer>", "5", (0.0, 0.0)),  # the paper's format needs "</think> <answer>"
        ("... </think> <answer>5", "5", (0.0, 0.0)),  # no closing tag
        ("the answer is \\boxed{5}", "5", (0.0, 0.0)),  # right answer, wrong format
        ("... </think> <answer>\\boxed{5</answer>", "5", (1.0, 0.0)),  # unbalanced box
    ],
)
def test_r1_zero_reward(monkeypatch: pytest.MonkeyPatch, response: str, reference: str, expected) -> None:
    with env_modules("grpo_math", monkeypatch) as m:
        got = m["answer"].r1_zero_reward(response, reference)
    assert (got["format_reward"], got["reward"]) == expected


# --------------------------------------------------------------------------------------------- nanogpt


def tiny_gpt(m: dict, seed: int = 0):
    torch.manual_seed(seed)
    return m["model"].GPT(m["model"].GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()


@pytest.mark.slow  # over 1 s: in the full suite, not the fast tier
def test_speedrun_model_is_the_paper_d12(monkeypatch: pytest.MonkeyPatch) -> None:
    with env_modules("nanogpt_speedrun", monkeypatch) as m:
        cfg = m["model"].GPTConfig()
        model = m["model"].GPT(cfg)
        assert (cfg.vocab_size, cfg.n_layer, cfg.n_embd, cfg.block_size) == (50257, 12, 768, 1024)
        assert not any(n.endswith("bias") for n, _ in model.named_parameters())
        assert not [mod for mod in model.modules() if isinstance(mod, torch.nn.LayerNorm | torch.nn.RMSNorm)]
        assert model.blocks[0].attn.out_scale == pytest.approx(1 / math.sqrt(24))
        assert model.wte.weight is model.lm_head.weight
        # tied 50257x768 embedding + 1024x768 positions + 12 x (qkv, proj, fc, out) without biases or norm weights
        assert sum(p.numel() for p in model.parameters()) == 50257 * 768 + 1024 * 768 + 12 * 12 * 768 * 768
        t = m["train_gpt"] if "train_gpt" in m else importlib.import_module("train_gpt")
        assert (t.LEARNING_RATE, t.WARMUP_ITERS, t.TOTAL_BATCH_TOKENS, t.NUM_ITERATIONS) == (1.5e-3, 256, 262144, 26880)
        assert t.lr_at(0) == pytest.approx(1.5e-3 / 256) and t.lr_at(255) == pytest.approx(1.5e-3)
        assert t.lr_at(26880) == pytest.approx(1.5e-3 * 0.1 / 1.1)
        sys.modules.pop("train_gpt", None)


def test_single_token_evaluation_equals_the_full_forward_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    with env_modules("nanogpt_speedrun", monkeypatch) as m:
        model = tiny_gpt(m)
        tokens = torch.randint(0, 50257, (3, 2, 16), generator=torch.Generator().manual_seed(0))
        tokens[:, 1, :-1] = tokens[:, 0, 1:]
        total, count = m["evaluate"].window_loss_sum(model, tokens, torch.device("cpu"), batch=2)
        full = model(tokens[:, 0], tokens[:, 1])[1].item()
        assert count == 48 and total / count == pytest.approx(full, rel=1e-5)
        assert m["evaluate"].forward_gap(model, tokens, torch.device("cpu")) < 1e-4


def test_a_model_that_peeks_at_the_next_token_gains_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its full forward reads the target; fed one token at a time it cannot, and scores as uniform."""
    with env_modules("nanogpt_speedrun", monkeypatch) as m:

        class Peek(torch.nn.Module):
            def forward(self, idx, targets=None):
                nxt = torch.roll(idx, -1, dims=1)
                return torch.nn.functional.one_hot(nxt, 50257).float() * 50.0, None

            def forward_with_cache(self, idx, caches):
                return self.forward(idx)[0], caches

        tokens = torch.randint(0, 50257, (2, 2, 8), generator=torch.Generator().manual_seed(1))
        tokens[:, 1, :-1] = tokens[:, 0, 1:]
        total, count = m["evaluate"].window_loss_sum(Peek(), tokens, torch.device("cpu"), batch=2)
        assert total / count > 10.0  # ~ln(50257) or worse; the full forward would give ~0 on these positions
        assert m["evaluate"].forward_gap(Peek(), tokens, torch.device("cpu")) > 5.0


def write_shard(m: dict, path: Path, tokens: np.ndarray) -> None:
    m["data"].write_shard(path, tokens)


def fineweb_dir(m: dict, root: Path, n_val: int = 5000) -> Path:
    src = root / "fineweb10B"
    rng = np.random.default_rng(0)
    write_shard(m, src / "fineweb_val_000000.bin", rng.integers(0, 50257, n_val))
    for i in (1, 2, 3):
        write_shard(m, src / f"fineweb_train_{i:06d}.bin", rng.integers(0, 50257, 20_000))
    (src / "SHA256SUMS").write_text("".join(f"{sha256(p)}  {p.name}\n" for p in sorted(src.glob("*.bin"))))
    return src


def test_prepare_copies_verified_train_shards_and_only_the_validation_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"IDEAFORGE_DATA": str(tmp_path / "data"), "IDEAFORGE_EVAL_DATA": str(tmp_path / "evaldata"),
           "IDEAFORGE_DATASET": "fineweb", "IDEAFORGE_VAL_TOKENS": "4096", "IDEAFORGE_TRAIN_SHARDS": "2"}  # fmt: skip
    with env_modules("nanogpt_speedrun", monkeypatch, **env) as m:
        src = fineweb_dir(m, tmp_path)
        monkeypatch.setenv("IDEAFORGE_FINEWEB_DIR", str(src))
        m["prepare"].main()
        train = sorted(p.name for p in (tmp_path / "data").glob("*.bin"))
        assert train == ["fineweb_train_000001.bin", "fineweb_train_000002.bin"]
        assert not [*(tmp_path / "data").rglob("*val*.bin")], "validation tokens must not reach training's dir"
        val = m["data"].read_shard(tmp_path / "evaldata" / "fineweb_val_000000.bin")
        assert len(val) == 4097 and np.array_equal(val, m["data"].read_shard(src / "fineweb_val_000000.bin")[:4097])
        monkeypatch.setenv("IDEAFORGE_EVAL_SEQ_LEN", "64")
        assert tuple(m["data"].val_windows().shape) == (64, 2, 64)


def test_prepare_refuses_a_corrupt_shard_or_missing_checksums(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"IDEAFORGE_DATA": str(tmp_path / "data"), "IDEAFORGE_EVAL_DATA": str(tmp_path / "evaldata"),
           "IDEAFORGE_DATASET": "fineweb", "IDEAFORGE_VAL_TOKENS": "4096"}  # fmt: skip
    with env_modules("nanogpt_speedrun", monkeypatch, **env) as m:
        src = fineweb_dir(m, tmp_path)
        monkeypatch.setenv("IDEAFORGE_FINEWEB_DIR", str(src))
        shard = src / "fineweb_train_000002.bin"
        raw = bytearray(shard.read_bytes())
        raw[-1] ^= 1
        shard.write_bytes(bytes(raw))
        with pytest.raises(SystemExit, match="does not match SHA256SUMS"):
            m["prepare"].main()
        assert not (tmp_path / "data" / "fineweb_train_000002.bin").exists()
        (src / "SHA256SUMS").unlink()
        with pytest.raises(SystemExit, match="SHA256SUMS is missing"):
            m["prepare"].main()
        monkeypatch.delenv("IDEAFORGE_FINEWEB_DIR")
        with pytest.raises(SystemExit, match="IDEAFORGE_FINEWEB_DIR is not set"):
            m["prepare"].main()


def test_evaluator_refuses_pickled_objects_and_swapped_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with env_modules("nanogpt_speedrun", monkeypatch, IDEAFORGE_OUT=str(tmp_path)) as m:
        ev = m["evaluate"]
        model = tiny_gpt(m)
        path = tmp_path / "model.pt"
        torch.save({"config": {"block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32}, "state_dict": model.state_dict()}, path)  # fmt: skip
        assert isinstance(ev.load_model(path, torch.device("cpu")), torch.nn.Module)
        (tmp_path / "launch.json").write_text(json.dumps({"model_sha256": "0" * 64, "elapsed_s": 1.0}))
        with pytest.raises(SystemExit) as swapped:
            ev.launch_record(tmp_path, path)
        assert swapped.value.code == 2
        cfg = {"block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32}
        torch.save({"config": cfg, "state_dict": model.state_dict(), "payload": Path("x")}, path)  # a pickled object
        with pytest.raises(SystemExit) as pickled:
            ev.load_model(path, torch.device("cpu"))
        assert pickled.value.code == 2


# --------------------------------------------------------------------------------------------- GPU profiles


@pytest.mark.slow  # four fresh interpreters importing torch
@pytest.mark.parametrize(("name", "script"), [("nanogpt_speedrun", "launch.py"), ("nanogpt_speedrun", "evaluate.py"),
                                              ("grpo_math", "launch.py"), ("grpo_math", "evaluate.py")])  # fmt: skip
def test_a_gpu_profile_without_cuda_fails_before_training(tmp_path: Path, name: str, script: str) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal cannot be observed here")
    env = load_env(name)
    profile = "1xh100" if name == "nanogpt_speedrun" else "default"
    penv = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    penv |= env.spec.profiles[profile] | {"IDEAFORGE_DATA": str(tmp_path / "d"), "IDEAFORGE_OUT": str(tmp_path / "o"),
                                          "IDEAFORGE_DEVICE": "cuda", "IDEAFORGE_METRIC_FILE": str(tmp_path / "m.json")}  # fmt: skip
    res = subprocess.run([sys.executable, "-I", str(env.baseline / script)], env=penv, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode != 0
    assert "needs" in res.stderr and "CUDA" in res.stderr and "install.sh --gpu" in res.stderr
    assert not (tmp_path / "o" / "model.pt").exists() and not (tmp_path / "m.json").exists()


# --------------------------------------------------------------------------------------------- grpo_math


@pytest.fixture
def tiny_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[dict, Path]]:
    env = {"IDEAFORGE_DATA": str(tmp_path / "data"), "IDEAFORGE_EVAL_DATA": str(tmp_path / "evaldata"),
           "IDEAFORGE_OUT": str(tmp_path / "out"), "IDEAFORGE_POLICY": "tiny-qwen2",
           "IDEAFORGE_MATH_SOURCE": "builtin", "IDEAFORGE_DEVICE": "cpu", "IDEAFORGE_TINY": "1",
           "IDEAFORGE_MAX_TOKENS": "8", "HF_HUB_OFFLINE": "1"}  # fmt: skip
    with env_modules("grpo_math", monkeypatch, **env) as m:
        m["prepare"].main()
        yield m, tmp_path


@pytest.mark.slow  # builds a tiny Qwen2 with transformers
def test_tiny_qwen2_chat_template_path(tiny_policy) -> None:
    m, _ = tiny_policy
    tok = m["engine"].load_tokenizer(m["problems"].init_policy_dir())
    msgs = [{"role": "user", "content": "What is 2+3?"}]
    assert not isinstance(tok.apply_chat_template(msgs, add_generation_prompt=True), str)  # transformers 5: a BatchEncoding
    text = m["engine"].chat_prompt(tok, "What is 2+3?")
    assert text == "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
    ids = m["engine"].encode(tok, text)
    assert all(isinstance(i, int) for i in ids) and tok.decode(ids) == text


@pytest.mark.slow  # builds a tiny Qwen2 with transformers
def test_rollout_reward_update_evaluate_on_a_tiny_qwen2(tiny_policy, monkeypatch: pytest.MonkeyPatch) -> None:
    m, root = tiny_policy
    eng, grpo = m["engine"], m["grpo"]
    init = m["problems"].init_policy_dir()
    tok, model = eng.load_tokenizer(init), eng.load_policy(init, torch.device("cpu"))
    assert next(model.parameters()).dtype == torch.float32  # master weights
    rows = m["problems"].train_problems()[:2]
    prompts = [eng.format_prompt(tok, r["problem"]) for r in rows]
    assert prompts[0].endswith("Assistant: <think>") and rows[0]["problem"] in prompts[0]
    groups = eng.HFEngine(model, tok).generate(prompts, grpo.GROUP_SIZE, eng.Sampling(1.0, 1.0, 8, seed=0))
    assert [len(g) for g in groups] == [grpo.GROUP_SIZE] * 2 and len({*groups[0]}) > 1
    responses = [r for g in groups for r in g]
    scores = [m["answer"].r1_zero_reward(r, "5") for r in responses]
    assert all(s["reward"] == 0.0 for s in scores)  # a random policy does not follow the format
    rewards = torch.tensor([float(len(r) % 2) for r in responses])  # a stand-in reward that varies in each group
    adv = grpo.group_advantages(rewards)
    batch = eng.tokenize_pairs(tok, [p for p in prompts for _ in range(grpo.GROUP_SIZE)], responses)
    old = eng.token_logprobs(model, batch["input_ids"], batch["labels"], batch["attention_mask"]).detach()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=grpo.BETAS, weight_decay=0.0)
    logp = eng.token_logprobs(model, batch["input_ids"], batch["labels"], batch["attention_mask"])
    grpo.grpo_clip_loss(logp, old, adv, batch["response_mask"]).backward()
    opt.step()
    changed = sum(int((p.detach() != before[n]).sum()) for n, p in model.named_parameters())
    total = sum(p.numel() for p in model.parameters())
    assert changed / total > 0.9  # lr 1e-5 moves float32 weights (bf16 weights would mostly stay put)
    model.save_pretrained(root / "out" / "policy", safe_serialization=True)
    metric = root / "metric.json"
    monkeypatch.setenv("IDEAFORGE_METRIC_FILE", str(metric))
    monkeypatch.setattr(os, "_exit", lambda code: None)
    m["evaluate"].main()
    result = json.loads(metric.read_text())
    assert result["val_problems"] == 12.0 and 0.0 <= result["val_accuracy"] <= 1.0


@pytest.mark.slow  # builds a tiny Qwen2 with transformers
def test_grpo_evaluator_refuses_pickles_and_other_architectures(tiny_policy) -> None:
    m, root = tiny_policy
    init, saved = m["problems"].init_policy_dir(), root / "out" / "policy"
    eng = m["engine"]
    eng.load_policy(init, torch.device("cpu")).save_pretrained(saved, safe_serialization=True)
    m["evaluate"].check_policy(saved, init)
    (saved / "extra.bin").write_bytes(b"pickle")
    with pytest.raises(SystemExit) as e:
        m["evaluate"].check_policy(saved, init)
    assert e.value.code == 2
    (saved / "extra.bin").unlink()
    cfg = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps(cfg | {"num_hidden_layers": 3}))
    with pytest.raises(SystemExit):
        m["evaluate"].check_policy(saved, init)


# --------------------------------------------------------------------------------------------- budget


@pytest.mark.slow  # starts torchrun / a child interpreter
@pytest.mark.parametrize(("name", "trainer"), [("nanogpt_speedrun", "train_gpt.py"), ("grpo_math", "grpo.py")])
def test_the_launcher_kills_training_that_ignores_the_deadline(tmp_path: Path, name: str, trainer: str) -> None:
    env = load_env(name)
    work = tmp_path / "code"
    shutil.copytree(env.baseline, work)
    (work / trainer).write_text("import time\nwhile True:\n    time.sleep(1)\n")  # never stops, never saves
    penv = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    penv |= env.spec.profiles["smoke"] | {"IDEAFORGE_DATA": str(tmp_path / "d"), "IDEAFORGE_OUT": str(tmp_path / "o"),
                                          "IDEAFORGE_TIME_BUDGET_S": "3", "IDEAFORGE_SAVE_GRACE_S": "2"}  # fmt: skip
    res = subprocess.run([sys.executable, "-I", str(work / "launch.py")], env=penv, cwd=work,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode != 0
    assert "ran past the 3s budget plus 2s" in res.stderr
