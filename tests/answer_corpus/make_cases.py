"""Regenerate tests/answer_corpus: whole implementer replies, written the way LLMs answer, over the real baselines.

    python tests/answer_corpus/make_cases.py

``base/<env>/<file>`` snapshots the editable files of the four research envs. ``cases/<NN>_<category>_<what>/``
holds ``answer.md`` (the complete reply text), ``case.json`` (env, category, expect "apply" or "refuse", why) and
for "apply" ``expected/<file>``: the intended result, computed here from plain string edits of the base file
(never by the repair code). A case expects "refuse" when no careful human would apply the reply as it stands.
"""

from __future__ import annotations

import difflib
import json
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ENVS = {
    "tiny_gpt": ["model.py", "train.py"],
    "tiny_grpo": ["grpo.py"],
    "nanogpt_speedrun": ["model.py", "train_gpt.py"],
    "grpo_math": ["grpo.py"],
}


def snapshot() -> None:
    """Copy the editable baseline files once: regenerating never silently follows later baseline edits."""
    for env, files in ENVS.items():
        for f in files:
            dst = HERE / "base" / env / f
            if not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(REPO / "research_envs" / env / "baseline" / f, dst)


snapshot()


def base(env: str, f: str) -> str:
    return (HERE / "base" / env / f).read_text()


def edited(env: str, edits: list[tuple[str, str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for f, old, new in edits:
        cur = out.get(f, base(env, f))
        assert cur.count(old) == 1, (env, f, old)
        out[f] = cur.replace(old, new, 1)
    return out


def udiff(env: str, edits: list[tuple[str, str, str]], n: int = 3, prefix: bool = True) -> str:
    new = edited(env, edits)
    chunks = []
    for f in sorted(new):
        a, b = (f"a/{f}", f"b/{f}") if prefix else (f, f)
        chunks.append(
            "".join(difflib.unified_diff(base(env, f).splitlines(True), new[f].splitlines(True), a, b, n=n))
        )
    return "".join(chunks)


# --------------------------------------------------------------------------- the intended edits

GPT_RMS = [("model.py", "def make_norm(dim: int) -> nn.Module:\n    return nn.LayerNorm(dim)\n",
            "def make_norm(dim: int) -> nn.Module:\n    return nn.RMSNorm(dim)\n")]
GPT_COS = [("train.py", '    """Learning rate for ``step`` of ``total``: constant."""\n    return LEARNING_RATE\n',
            '    """Learning rate for ``step`` of ``total``: cosine decay to zero."""\n'
            "    return LEARNING_RATE * 0.5 * (1 + math.cos(math.pi * step / total))\n")]
GPT_LR = [("train.py", "LEARNING_RATE = 1e-3\n", "LEARNING_RATE = 2e-3\n")]
GPT_SWIGLU = [("model.py", "        return self.out(F.gelu(self.fc(x)))\n",
               "        h = self.fc(x)\n        return self.out(F.silu(h) * h)\n")]
GPT_TIE = [("model.py", "        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)\n        self.apply",
            "        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)\n"
            "        self.lm_head.weight = self.wte.weight\n        self.apply")]
GPT_OPT = [("train.py", "    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=(0.9, BETA2), "
            "weight_decay=WEIGHT_DECAY)\n",
            "    opt = torch.optim.AdamW(\n        model.parameters(), lr=LEARNING_RATE, betas=(0.9, BETA2), "
            "weight_decay=WEIGHT_DECAY, eps=1e-10\n    )\n")]
GPT_CFG = [("train.py", "        n_embd=N_EMBD,\n        dropout=DROPOUT,\n    )\n",
            "        n_embd=N_EMBD,\n        dropout=0.1,\n    )\n")]
GRPO_KL = [("grpo.py", "KL_COEF = 0.0\n", "KL_COEF = 0.1\n")]
GRPO_ADV = [("grpo.py", "    std = rewards.std(dim=1, keepdim=True)\n    return (rewards - mean) / (std + 1e-4)\n",
             "    return rewards - mean\n")]
GRPO_EPOCHS = [("grpo.py", "PPO_EPOCHS = 2\n", "PPO_EPOCHS = 3\n"), ("grpo.py", "CLIP_EPS = 0.2\n", "CLIP_EPS = 0.1\n")]
GRPO_TEMP = [("grpo.py", "        seq = decode(policy, prompts, temperature=TEMPERATURE, gen=gen)\n",
              "        temp = TEMPERATURE * (1.0 - 0.5 * it / max(1, iterations - 1))\n"
              "        seq = decode(policy, prompts, temperature=temp, gen=gen)\n")]
NANO_RELU2 = [("model.py", '        return self.out(F.gelu(self.fc(x), approximate="tanh"))\n',
               "        return self.out(F.relu(self.fc(x)).square())\n")]
NANO_RMS = [("model.py", "        self.ln1 = nn.LayerNorm(cfg.n_embd)\n", "        self.ln1 = nn.RMSNorm(cfg.n_embd)\n"),
            ("model.py", "        self.ln2 = nn.LayerNorm(cfg.n_embd)\n", "        self.ln2 = nn.RMSNorm(cfg.n_embd)\n")]
NANO_UNTIE = [("model.py", "        self.lm_head.weight = self.wte.weight\n", "")]
NANO_WARM = [("train_gpt.py", "WARMUP_FRACTION = 0.05\n", "WARMUP_FRACTION = 0.02\n"),
             ("train_gpt.py", "MIN_LR_FRACTION = 0.1\n", "MIN_LR_FRACTION = 0.0\n")]
NANO_BETAS = [("train_gpt.py", "        raw.parameters(), lr=LEARNING_RATE, betas=(BETA1, BETA2), weight_decay=WEIGHT_DECAY, "
               "fused=cuda\n", "        raw.parameters(), lr=LEARNING_RATE, betas=(BETA1, BETA2), weight_decay=0.0, "
               "fused=cuda\n")]
NANO_INIT = [("model.py", "            nn.init.normal_(module.weight, mean=0.0, std=0.02)\n            if module.bias",
              "            nn.init.normal_(module.weight, mean=0.0, std=0.02 / (2 * self.cfg.n_layer) ** 0.5)\n"
              "            if module.bias")]
MATH_LR = [("grpo.py", "LEARNING_RATE = 1e-6\n", "LEARNING_RATE = 2e-6\n")]
MATH_TOKEN_MEAN = [("grpo.py", "    lengths = cmask.sum(1).clamp(min=1)\n    return -((per_token * cmask).sum(1) / lengths).mean()\n",
                    "    return -(per_token * cmask).sum() / cmask.sum().clamp(min=1)\n")]
MATH_GROUP = [("grpo.py", "PROMPTS_PER_STEP = 16\nGROUP_SIZE = 8\n", "PROMPTS_PER_STEP = 8\nGROUP_SIZE = 16\n")]
MATH_KL = [("grpo.py", "KL_COEF = 0.0\n", "KL_COEF = 0.02\n")]

CASES: list[dict] = []


def case(category: str, what: str, env: str, answer: str, edits=None, why: str = "") -> None:
    CASES.append({"category": category, "what": what, "env": env, "answer": answer, "edits": edits, "why": why})


# --------------------------------------------------------------------------- clean
case("clean", "rmsnorm", "tiny_gpt",
     "Swap LayerNorm for RMSNorm in every block.\n\n```diff\n" + udiff("tiny_gpt", GPT_RMS) + "```\n", GPT_RMS)
case("clean", "kl_penalty", "tiny_grpo",
     "I'll add a KL penalty towards the SFT reference.\n\n```diff\n" + udiff("tiny_grpo", GRPO_KL) + "```\n\n"
     "The penalty code path already exists, so only the coefficient changes.", GRPO_KL)
case("clean", "relu_squared", "nanogpt_speedrun",
     "```diff\n" + udiff("nanogpt_speedrun", NANO_RELU2) + "```", NANO_RELU2)
case("clean", "two_constants", "tiny_grpo",
     "Summary: three PPO epochs with a tighter clip.\n```diff\n" + udiff("tiny_grpo", GRPO_EPOCHS) + "```\n",
     GRPO_EPOCHS)

# --------------------------------------------------------------------------- fences and chatter
case("fences_chatter", "python_fence_prose", "grpo_math",
     "Sure! A larger group gives a less noisy baseline for the advantage. Here's the change:\n\n```python\n"
     + udiff("grpo_math", MATH_GROUP) + "```\n\n**Why this helps:** with 16 samples per prompt, the group mean "
     "is a better baseline.\n\nLet me know if you want me to also tune the learning rate!", MATH_GROUP)
case("fences_chatter", "no_fence_chatter_after", "tiny_gpt",
     "Here is the diff:\n\n" + udiff("tiny_gpt", GPT_COS) + "\nThis makes the learning rate decay smoothly to 0 "
     "over the run, which usually helps small models.\n", GPT_COS)
case("fences_chatter", "patch_fence_bold_header", "nanogpt_speedrun",
     "### Implementation\n\n**File: `train_gpt.py`**\n\n```patch\n" + udiff("nanogpt_speedrun", NANO_WARM) + "```\n",
     NANO_WARM)

# --------------------------------------------------------------------------- wrong line numbers
_d = udiff("tiny_grpo", GRPO_TEMP).replace("@@ -67,", "@@ -58,").replace("+67,", "+58,")
case("wrong_line_numbers", "off_by_nine", "tiny_grpo", "Anneal the sampling temperature.\n```diff\n" + _d + "```\n",
     GRPO_TEMP)
_d = udiff("tiny_gpt", GPT_SWIGLU)
_d = _d[: _d.index("@@")] + "@@ -1,6 +1,7 @@\n" + _d[_d.index("\n", _d.index("@@")) + 1 :]
case("wrong_line_numbers", "all_ones", "tiny_gpt", "```diff\n" + _d + "```\nSwiGLU-style gating, no extra params.",
     GPT_SWIGLU)
case("wrong_line_numbers", "no_numbers", "grpo_math",
     "```diff\n--- a/grpo.py\n+++ b/grpo.py\n@@ ... @@\n     log_ratio = ref_logp - logp\n"
     "         per_token = per_token - KL_COEF * (torch.exp(log_ratio) - log_ratio - 1)\n"
     "-    lengths = cmask.sum(1).clamp(min=1)\n-    return -((per_token * cmask).sum(1) / lengths).mean()\n"
     "+    return -(per_token * cmask).sum() / cmask.sum().clamp(min=1)\n\n\n def main() -> None:\n```\n",
     MATH_TOKEN_MEAN)

# --------------------------------------------------------------------------- missing context
case("missing_context", "bare_change", "tiny_gpt",
     "```diff\n--- a/train.py\n+++ b/train.py\n@@ -21 +21 @@\n-LEARNING_RATE = 1e-3\n+LEARNING_RATE = 2e-3\n```\n",
     GPT_LR)
case("missing_context", "bare_change_wrong_number", "grpo_math",
     "Doubling the LR:\n```diff\n--- grpo.py\n+++ grpo.py\n@@ -12,1 +12,1 @@\n-LEARNING_RATE = 1e-6\n"
     "+LEARNING_RATE = 2e-6\n```", MATH_LR)

# --------------------------------------------------------------------------- CRLF
case("crlf", "crlf_reply", "tiny_grpo",
     ("Set KL to 0.1.\n```diff\n" + udiff("tiny_grpo", GRPO_KL) + "```\n").replace("\n", "\r\n"), GRPO_KL)
case("crlf", "crlf_diff_only", "nanogpt_speedrun", udiff("nanogpt_speedrun", NANO_BETAS).replace("\n", "\r\n"),
     NANO_BETAS)

# --------------------------------------------------------------------------- SEARCH/REPLACE
case("search_replace", "plain", "tiny_gpt",
     "Use RMSNorm.\n\nmodel.py\n```python\n<<<<<<< SEARCH\n    return nn.LayerNorm(dim)\n=======\n"
     "    return nn.RMSNorm(dim)\n>>>>>>> REPLACE\n```\n", GPT_RMS)
case("search_replace", "two_blocks_bold_path", "tiny_grpo",
     "**grpo.py**\n```\n<<<<<<< SEARCH\nPPO_EPOCHS = 2\nCLIP_EPS = 0.2\n=======\nPPO_EPOCHS = 3\nCLIP_EPS = 0.1\n"
     ">>>>>>> REPLACE\n```\n", GRPO_EPOCHS)
case("search_replace", "dedented_search", "grpo_math",
     "grpo.py\n<<<<<<< SEARCH\nlengths = cmask.sum(1).clamp(min=1)\nreturn -((per_token * cmask).sum(1) / lengths).mean()\n"
     "=======\n    return -(per_token * cmask).sum() / cmask.sum().clamp(min=1)\n>>>>>>> REPLACE\n",
     MATH_TOKEN_MEAN)
case("search_replace", "ambiguous_search", "nanogpt_speedrun",
     "model.py\n```python\n<<<<<<< SEARCH\n            nn.init.normal_(module.weight, mean=0.0, std=0.02)\n=======\n"
     "            nn.init.normal_(module.weight, mean=0.0, std=0.01)\n>>>>>>> REPLACE\n```\n", None,
     "the SEARCH line occurs twice (Linear and Embedding init) and nothing says which")

# --------------------------------------------------------------------------- truncated
_d = udiff("tiny_gpt", GPT_COS + GPT_CFG)
case("truncated", "stops_inside_last_hunk", "tiny_gpt",
     "Cosine schedule plus a little dropout:\n\n" + _d[: _d.index("-        dropout=DROPOUT,")], None,
     "the reply stops inside the second hunk: the dropout change never arrives")
_d = udiff("nanogpt_speedrun", NANO_RMS, n=3)
case("truncated", "unclosed_fence", "nanogpt_speedrun",
     "Replace both LayerNorms in Block with RMSNorm.\n```diff\n" + _d[: _d.index("+        self.ln2")] , None,
     "the fence never closes: the second replacement is missing")
case("truncated", "ends_after_header", "grpo_math",
     "```diff\n" + udiff("grpo_math", MATH_LR) + "```\n\nAnd the KL term:\n\n```diff\n--- a/grpo.py\n+++ b/grpo.py\n"
     "@@ -23,7 +23,7 @@", None, "the second diff stops right after its header")
_d = udiff("tiny_grpo", GRPO_TEMP)
case("truncated", "stops_after_removed_line", "tiny_grpo", _d[: _d.index("+        temp")], None,
     "the reply stops after the removed line: the replacement never arrives")

# --------------------------------------------------------------------------- truncated mid-line
_d = udiff("tiny_gpt", GPT_OPT)
case("truncated_midline", "half_call", "tiny_gpt", "Lower AdamW eps.\n\n" + _d[: _d.index("eps=1e-10") + 5], None,
     "the last added line is cut in the middle of a call")
_d = udiff("grpo_math", MATH_TOKEN_MEAN)
case("truncated_midline", "half_expression_fenced", "grpo_math",
     "Token-level mean instead of per-sequence mean:\n```diff\n" + _d[: _d.index("cmask.sum().clamp")], None,
     "unclosed fence and a half expression")

# --------------------------------------------------------------------------- ambiguous hunks
case("ambiguous", "dup_line_no_context", "nanogpt_speedrun",
     "Smaller init std.\n```diff\n--- a/model.py\n+++ b/model.py\n@@ -70,1 +70,1 @@\n"
     "-            nn.init.normal_(module.weight, mean=0.0, std=0.02)\n"
     "+            nn.init.normal_(module.weight, mean=0.0, std=0.01)\n```\n", None,
     "the removed line occurs twice, no context, the line number points at neither")
case("ambiguous", "dup_forward_signature", "tiny_gpt",
     "Add a residual scale.\n```diff\n--- a/model.py\n+++ b/model.py\n@@ -41,2 +41,3 @@\n"
     "     def forward(self, x: torch.Tensor) -> torch.Tensor:\n+        x = x * 0.5\n```\n", None,
     "the only context line is a forward() signature that occurs three times")
case("ambiguous", "dup_super_init", "nanogpt_speedrun",
     "```diff\n--- a/model.py\n+++ b/model.py\n@@ -1,3 +1,4 @@\n         super().__init__()\n"
     "+        self.scale = nn.Parameter(torch.ones(1))\n         self.n_head = cfg.n_head\n```\n",
     [("model.py", "        super().__init__()\n        self.n_head = cfg.n_head\n",
       "        super().__init__()\n        self.scale = nn.Parameter(torch.ones(1))\n        self.n_head = cfg.n_head\n")],
     "super().__init__() occurs four times but the next context line makes it unique: applies")
case("ambiguous", "dup_line_exact_number", "nanogpt_speedrun",
     "```diff\n--- a/model.py\n+++ b/model.py\n@@ -79,1 +79,1 @@\n"
     "-            nn.init.normal_(module.weight, mean=0.0, std=0.02)\n"
     "+            nn.init.normal_(module.weight, mean=0.0, std=0.01)\n```\n",
     [("model.py", "        elif isinstance(module, nn.Embedding):\n            nn.init.normal_(module.weight, mean=0.0, std=0.02)\n",
       "        elif isinstance(module, nn.Embedding):\n            nn.init.normal_(module.weight, mean=0.0, std=0.01)\n")],
     "the removed line occurs twice but the header's line number is exactly the second copy (as git apply reads it)")

# --------------------------------------------------------------------------- elision
case("elision", "rest_of_init_unchanged", "nanogpt_speedrun",
     "Use RMSNorm in the transformer blocks:\n\n```diff\n--- a/model.py\n+++ b/model.py\n@@ -47,10 +47,10 @@ class Block(nn.Module):\n"
     "     def __init__(self, cfg: GPTConfig) -> None:\n         super().__init__()\n"
     "-        self.ln1 = nn.LayerNorm(cfg.n_embd)\n+        self.ln1 = nn.RMSNorm(cfg.n_embd)\n"
     "         # ... rest of __init__ unchanged ...\n-        self.ln2 = nn.LayerNorm(cfg.n_embd)\n"
     "+        self.ln2 = nn.RMSNorm(cfg.n_embd)\n         self.mlp = MLP(cfg)\n```\n", NANO_RMS)
case("elision", "existing_code_marker", "tiny_grpo",
     "```diff\n--- a/grpo.py\n+++ b/grpo.py\n@@ -68,8 +68,9 @@ def main() -> None:\n"
     "     for it in range(iterations):\n         # ... existing code ...\n         policy.eval()\n"
     "-        seq = decode(policy, prompts, temperature=TEMPERATURE, gen=gen)\n"
     "+        temp = TEMPERATURE * (1.0 - 0.5 * it / max(1, iterations - 1))\n"
     "+        seq = decode(policy, prompts, temperature=temp, gen=gen)\n"
     "         rewards = task.reward(seq[:, task.PROMPT_LEN :], answers)\n```\n", GRPO_TEMP)
case("elision", "whole_file_with_elisions", "tiny_grpo",
     "Here's the updated `grpo.py`:\n\n```python\n" + base("tiny_grpo", "grpo.py").split("def advantages")[0]
     + "def advantages(rewards: torch.Tensor) -> torch.Tensor:\n"
     '    """Group-relative advantages: (r - group mean) / (group std + eps), rewards shaped (prompts, group)."""\n'
     "    mean = rewards.mean(dim=1, keepdim=True)\n    return rewards - mean\n\n\n"
     "# ... rest of the file unchanged ...\n```\n", GRPO_ADV)
case("elision", "elided_removed_lines", "tiny_gpt",
     "```diff\n--- a/model.py\n+++ b/model.py\n@@ -48,8 +48,6 @@\n class MLP(nn.Module):\n"
     "-    def __init__(self, cfg: GPTConfig) -> None:\n-        # ...\n+    def __init__(self, cfg: GPTConfig) -> None:\n"
     "+        super().__init__()\n+        self.fc = nn.Linear(cfg.n_embd, 2 * cfg.n_embd)\n```\n", None,
     "an elision stands for removed lines: what exactly is removed is unknown")

# --------------------------------------------------------------------------- whole file
_f = base("tiny_gpt", "train.py").replace("LEARNING_RATE = 1e-3\n", "LEARNING_RATE = 2e-3\n")
case("whole_file", "named_in_prose", "tiny_gpt",
     "I doubled the learning rate. Full updated `train.py`:\n\n```python\n" + _f + "```\n", GPT_LR)
_f = edited("grpo_math", MATH_KL)["grpo.py"]
case("whole_file", "identified_by_content", "grpo_math",
     "Here is the complete file with a small KL penalty:\n\n```python\n" + _f + "```\n", MATH_KL)
case("whole_file", "fragment_only", "tiny_gpt",
     "Replace the MLP with this:\n\n```python\nclass MLP(nn.Module):\n    def __init__(self, cfg: GPTConfig) -> None:\n"
     "        super().__init__()\n        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)\n"
     "        self.out = nn.Linear(4 * cfg.n_embd, cfg.n_embd)\n\n"
     "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n        h = self.fc(x)\n"
     "        return self.out(F.silu(h) * h)\n```\n", GPT_SWIGLU,
     "a fragment of whole definitions: the file has one class MLP, which it replaces")
_f = edited("nanogpt_speedrun", NANO_UNTIE)["model.py"]
case("whole_file", "filename_in_fence", "nanogpt_speedrun", "```python model.py\n" + _f + "```\n", NANO_UNTIE)

# --------------------------------------------------------------------------- self-correction
_bad = ("```diff\n--- a/train.py\n+++ b/train.py\n@@ -33,3 +33,3 @@\n def lr_at(step: int, total: int) -> float:\n"
        '     """Learning rate for ``step`` of ``total``: constant."""\n-    return LEARNING_RATE\n'
        "+    return LEARNING_RATE * 0.5 * (1 + cos(pi * step / total))\n```\n")
case("self_correction", "wait_corrected", "tiny_gpt",
     "Cosine decay:\n\n" + _bad + "\nWait, `cos` and `pi` aren't imported and I forgot the docstring. Here is the "
     "corrected diff:\n\n```diff\n" + udiff("tiny_gpt", GPT_COS) + "```\n", GPT_COS)
case("self_correction", "actually_other_value", "tiny_grpo",
     "```diff\n--- a/grpo.py\n+++ b/grpo.py\n@@ -23,3 +23,3 @@\n CLIP_EPS = 0.2\n-KL_COEF = 0.0\n+KL_COEF = 0.5\n TEMPERATURE = 1.0\n```\n"
     "Actually, 0.5 is far too strong for this task; the measured sweet spot is around 0.1. Use this instead:\n"
     "```diff\n--- a/grpo.py\n+++ b/grpo.py\n@@ -23,3 +23,3 @@\n CLIP_EPS = 0.2\n-KL_COEF = 0.0\n+KL_COEF = 0.1\n TEMPERATURE = 1.0\n```\n",
     GRPO_KL)
case("self_correction", "forgot_import_supplement", "nanogpt_speedrun",
     "```diff\n" + udiff("nanogpt_speedrun", NANO_WARM) + "```\n\nOh, I also forgot to lower the weight decay "
     "in the optimizer:\n\n```diff\n" + udiff("nanogpt_speedrun", NANO_BETAS) + "```\n", NANO_WARM + NANO_BETAS)

# --------------------------------------------------------------------------- alternatives
case("alternatives", "alternatively_same_line", "grpo_math",
     "```diff\n" + udiff("grpo_math", MATH_LR) + "```\n\nAlternatively, if that turns out unstable, a more "
     "conservative bump:\n\n```diff\n--- a/grpo.py\n+++ b/grpo.py\n@@ -19,1 +19,1 @@\n-LEARNING_RATE = 1e-6\n"
     "+LEARNING_RATE = 1.5e-6\n```\n", MATH_LR)
case("alternatives", "option_two_other_file", "tiny_gpt",
     "**Option 1 (recommended):** RMSNorm.\n```diff\n" + udiff("tiny_gpt", GPT_RMS) + "```\n\n**Option 2:** keep "
     "LayerNorm but raise the learning rate:\n```diff\n" + udiff("tiny_gpt", GPT_LR) + "```\n", GPT_RMS)

# --------------------------------------------------------------------------- joined / reflowed lines
case("joined_lines", "three_line_call_joined", "tiny_gpt",
     "```diff\n--- a/train.py\n+++ b/train.py\n@@ -86,3 +86,3 @@\n"
     "-    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=(0.9, BETA2), weight_decay=WEIGHT_DECAY)\n"
     "+    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.95), weight_decay=WEIGHT_DECAY)\n"
     "     batches = data.Batches(data.load_split(\"train\"), BATCH_SIZE, seed)\n```\n",
     [("train.py", "betas=(0.9, BETA2)", "betas=(0.9, 0.95)")])
case("joined_lines", "multiline_call_context_joined", "nanogpt_speedrun",
     "```diff\n--- a/train_gpt.py\n+++ b/train_gpt.py\n@@ -70,4 +70,4 @@\n"
     "     opt = torch.optim.AdamW(raw.parameters(), lr=LEARNING_RATE, betas=(BETA1, BETA2), weight_decay=WEIGHT_DECAY, fused=cuda)\n"
     "-    accum = max(1, TOTAL_BATCH_TOKENS // (MICRO_BATCH * SEQ_LEN * world))\n"
     "+    accum = max(2, TOTAL_BATCH_TOKENS // (MICRO_BATCH * SEQ_LEN * world))\n```\n",
     [("train_gpt.py", "    accum = max(1, TOTAL", "    accum = max(2, TOTAL")])
case("joined_lines", "long_line_reflowed", "grpo_math",
     "```diff\n--- a/grpo.py\n+++ b/grpo.py\n@@ -73,2 +73,2 @@\n             chunks.append((ids, mask, comp, cmask, old))\n"
     "-            rewards += [score(t, a) for t, a in zip(texts(pol, comp, cmask),\n"
     "-                                                    answers[i : i + MICRO_BATCH], strict=True)]\n"
     "+            rewards += [2.0 * score(t, a) - 1.0 for t, a in zip(texts(pol, comp, cmask), answers[i : i + MICRO_BATCH], strict=True)]\n```\n",
     [("grpo.py", "            rewards += [score(t, a) for t, a in", "            rewards += [2.0 * score(t, a) - 1.0 for t, a in")])

# --------------------------------------------------------------------------- misc defects (recoverable)
_d = udiff("tiny_gpt", GPT_TIE)
_d = "\n".join(ln[1:] if ln.startswith(" ") and ln.strip() else ln for ln in _d.split("\n"))
case("indentation", "context_lost_prefix", "tiny_gpt", "```diff\n" + _d + "```\n", GPT_TIE)
_d = udiff("tiny_grpo", GRPO_ADV).replace("\n     ", "\n \t").replace("\n+    ", "\n+\t").replace("\n-    ", "\n-\t")
case("indentation", "tabs_for_spaces", "tiny_grpo", "```diff\n" + _d + "```\n", GRPO_ADV)
case("multi_file", "model_and_train", "tiny_gpt",
     "RMSNorm plus a higher LR.\n\n```diff\n" + udiff("tiny_gpt", GPT_RMS + GPT_LR) + "```\n", GPT_RMS + GPT_LR)
case("multi_file", "two_fences_two_files", "nanogpt_speedrun",
     "`model.py`:\n```diff\n" + udiff("nanogpt_speedrun", NANO_RELU2) + "```\n`train_gpt.py`:\n```diff\n"
     + udiff("nanogpt_speedrun", NANO_WARM) + "```\n", NANO_RELU2 + NANO_WARM)

# --------------------------------------------------------------------------- OpenAI apply_patch format
case("apply_patch_format", "anchored", "tiny_gpt",
     "I'll tie the embedding and output weights.\n\n*** Begin Patch\n*** Update File: model.py\n@@ class GPT(nn.Module):\n"
     "         self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)\n"
     "+        self.lm_head.weight = self.wte.weight\n         self.apply(self._init_weights)\n*** End Patch\n", GPT_TIE)
case("apply_patch_format", "two_anchors_fenced", "nanogpt_speedrun",
     "```\n*** Begin Patch\n*** Update File: model.py\n@@ class GPT(nn.Module):\n@@     def _init_weights(self, module: nn.Module) -> None:\n"
     "         if isinstance(module, nn.Linear):\n-            nn.init.normal_(module.weight, mean=0.0, std=0.02)\n"
     "+            nn.init.normal_(module.weight, mean=0.0, std=0.02 / (2 * self.cfg.n_layer) ** 0.5)\n"
     "*** End Patch\n```\n", NANO_INIT)
case("apply_patch_format", "anchor_in_wrong_place", "nanogpt_speedrun",
     "*** Begin Patch\n*** Update File: model.py\n@@ class Block(nn.Module):\n"
     "-            nn.init.normal_(module.weight, mean=0.0, std=0.02)\n"
     "+            nn.init.normal_(module.weight, mean=0.0, std=0.01)\n*** End Patch\n", None,
     "the removed line occurs twice after the anchor (Linear and Embedding init): which one is unclear")

# --------------------------------------------------------------------------- more replies in the styles models use
_d = udiff("tiny_gpt", GPT_LR).replace("@@ -18,7 +18,7 @@", "@@ -18,7 +18,7 @@ from model import GPT, GPTConfig, count_params")
case("clean", "git_section_heading", "tiny_gpt",
     "I'll double the learning rate; small char-level models tolerate it.\n\nHere's the change to `train.py`:\n\n```diff\n"
     + _d + "```\n\n- `LEARNING_RATE`: 1e-3 -> 2e-3\n- nothing else changes\n", GPT_LR)
_f = edited("grpo_math", MATH_TOKEN_MEAN + MATH_KL)["grpo.py"]
_head, _rest = _f.split("def policy_loss", 1)
_pl = "def policy_loss" + _rest.split("def main", 1)[0]
case("elision", "two_elisions_whole_file", "grpo_math",
     "Token-level loss normalisation (DAPO-style) plus a small KL:\n\n```python\n"
     + _head.split("TEMPERATURE = 1.0")[0] + "TEMPERATURE = 1.0\n# ... (unchanged) ...\n\n\n" + _pl
     + "# ... rest of the file unchanged ...\n```\n", MATH_TOKEN_MEAN + MATH_KL)
case("search_replace", "heading_path_python_fence", "tiny_grpo",
     "### grpo.py\n\n```python\n<<<<<<< SEARCH\n        seq = decode(policy, prompts, temperature=TEMPERATURE, gen=gen)\n=======\n"
     "        temp = TEMPERATURE * (1.0 - 0.5 * it / max(1, iterations - 1))\n"
     "        seq = decode(policy, prompts, temperature=temp, gen=gen)\n>>>>>>> REPLACE\n```\n", GRPO_TEMP)
_d = udiff("nanogpt_speedrun", NANO_RELU2 + NANO_WARM)
_parts = _d.split("--- a/train_gpt.py")
_d = "--- a/train_gpt.py" + _parts[1].replace("@@ -25,", "@@ -31,").replace("+25,", "+31,") + _parts[0].replace("@@ -42,", "@@ -40,").replace("+42,", "+40,")
case("wrong_line_numbers", "files_swapped_numbers_off", "nanogpt_speedrun", "```diff\n" + _d + "```\n",
     NANO_RELU2 + NANO_WARM)
case("truncated", "whole_file_cut", "tiny_gpt",
     "Full updated model.py:\n\n```python\n" + edited("tiny_gpt", GPT_RMS)["model.py"][:1500], None,
     "the whole-file answer stops in the middle of the file")
case("fences_chatter", "trailing_whitespace_stripped_context", "tiny_grpo",
     "```diff\n" + "\n".join(ln.rstrip() for ln in udiff("tiny_grpo", GRPO_ADV).split("\n")) + "```\n", GRPO_ADV)
case("unrecoverable", "misquoted_removed_value", "tiny_grpo",
     "```diff\n--- a/grpo.py\n+++ b/grpo.py\n@@ -19,4 +19,4 @@\n LEARNING_RATE = 3e-4\n-PROMPTS_PER_STEP = 64\n+PROMPTS_PER_STEP = 16\n GROUP_SIZE = 8\n```\n",
     None, "the removed line says 64, the file says 32: the model edits code it misremembers")

# --------------------------------------------------------------------------- unrecoverable
case("unrecoverable", "misremembered_code", "tiny_gpt",
     "```diff\n--- a/train.py\n+++ b/train.py\n@@ -30,4 +30,4 @@\n def get_lr(it):\n-    return max_lr\n"
     "+    return max_lr * 0.5 * (1 + math.cos(math.pi * it / max_iters))\n```\n", None,
     "the quoted code (get_lr, max_lr) is not in the file")
case("unrecoverable", "protected_file", "tiny_grpo",
     "The evaluator is too strict; relax it:\n```diff\n--- a/evaluate.py\n+++ b/evaluate.py\n@@ -1,1 +1,1 @@\n-x\n+y\n```\n",
     None, "touches a protected file")
case("unrecoverable", "prose_only", "grpo_math",
     "To implement this idea, increase GROUP_SIZE to 16 and halve PROMPTS_PER_STEP so the batch stays the same.",
     None, "no change at all, only a description")
case("unrecoverable", "syntax_error", "nanogpt_speedrun",
     "```diff\n--- a/model.py\n+++ b/model.py\n@@ -45,2 +45,2 @@\n     def forward(self, x: torch.Tensor) -> torch.Tensor:\n"
     '-        return self.out(F.gelu(self.fc(x), approximate="tanh"))\n'
     "+        return self.out(F.relu(self.fc(x)).square()\n```\n", None,
     "the added line has an unbalanced parenthesis: the file would not compile")

# --------------------------------------------------------------------------- fragments of whole definitions
case("whole_file", "fragment_method_of_class", "tiny_gpt",
     "Only the MLP's forward changes (SwiGLU-style gating):\n\n```python\nclass MLP(nn.Module):\n"
     "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n        h = self.fc(x)\n"
     "        return self.out(F.silu(h) * h)\n```\n", GPT_SWIGLU,
     "a class given with one of its methods: that method is replaced, __init__ stays")
case("whole_file", "fragment_function_other_file", "tiny_gpt",
     "Replace `lr_at` with a cosine decay:\n\n```python\ndef lr_at(step: int, total: int) -> float:\n"
     '    """Learning rate for ``step`` of ``total``: cosine decay to zero."""\n'
     "    return LEARNING_RATE * 0.5 * (1 + math.cos(math.pi * step / total))\n```\n", GPT_COS,
     "one function that only train.py defines: it is replaced there")
case("unrecoverable", "fragment_method_defined_four_times", "tiny_gpt",
     "Use SiLU in forward:\n\n```python\n    def forward(self, x: torch.Tensor) -> torch.Tensor:\n"
     "        return self.out(F.silu(self.fc(x)))\n```\n", None,
     "model.py has four forward methods: which one it replaces is a guess")
case("unrecoverable", "fragment_definition_and_statement", "tiny_gpt",
     "```python\nLEARNING_RATE = 2e-3\n\ndef lr_at(step: int, total: int) -> float:\n    return LEARNING_RATE * 0.5\n```\n",
     None, "a module-level statement beside a definition: where it goes is a guess")

case("search_replace", "no_file_named", "tiny_gpt",
     "Swap the norm:\n\n```\n<<<<<<< SEARCH\ndef make_norm(dim: int) -> nn.Module:\n    return nn.LayerNorm(dim)\n"
     "=======\ndef make_norm(dim: int) -> nn.Module:\n    return nn.RMSNorm(dim)\n>>>>>>> REPLACE\n```\n", GPT_RMS,
     "a SEARCH block that names no file, whose text only model.py holds")


def main() -> None:
    shutil.rmtree(HERE / "cases", ignore_errors=True)
    for i, c in enumerate(CASES, 1):
        d = HERE / "cases" / f"{i:02d}_{c['category']}_{c['what']}"
        d.mkdir(parents=True)
        (d / "answer.md").write_bytes(c["answer"].encode())
        expect = "apply" if c["edits"] is not None else "refuse"
        meta = {"env": c["env"], "category": c["category"], "expect": expect, "why": c["why"]}
        (d / "case.json").write_text(json.dumps(meta, indent=1) + "\n")
        if c["edits"] is not None:
            for f, content in edited(c["env"], c["edits"]).items():
                (d / "expected" / f).parent.mkdir(parents=True, exist_ok=True)
                (d / "expected" / f).write_bytes(content.encode())
    print(len(CASES), "cases")


if __name__ == "__main__":
    main()
