"""PROTECTED. The verifiable task of tiny_grpo: 3-digit addition, its tokens, reward, held-out set, budget.

A prompt is ``<bos> a a a + b b b =`` (zero-padded digits) and the answer is the 4-digit zero-padded sum
written least-significant digit first, followed by ``<eos>`` (so 123+456= is answered 9750<eos>).
Reward 1 for an exact answer, else 0.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

DIGITS = "0123456789"
PLUS, EQUALS, EOS, BOS = 10, 11, 12, 13
VOCAB_SIZE = 14
PROMPT_LEN = 9
ANSWER_LEN = 5  # four digits and <eos>
SEQ_LEN = PROMPT_LEN + ANSWER_LEN
SFT_SEED = 1234


def env_path(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"environment variable {name} is not set (the runner sets it; see PROTOCOL.md)")
    return Path(value)


def data_dir() -> Path:
    path = env_path("IDEAFORGE_DATA")
    path.mkdir(parents=True, exist_ok=True)
    return path


def out_dir() -> Path:
    path = env_path("IDEAFORGE_OUT")
    path.mkdir(parents=True, exist_ok=True)
    return path


def seed() -> int:
    return int(os.environ.get("IDEAFORGE_SEED", "0"))


def budget_iterations() -> int:
    """GRPO iterations (policy-update rounds) this run may take."""
    return int(os.environ.get("IDEAFORGE_STEPS", "150"))


def sft_steps() -> int:
    return int(os.environ.get("IDEAFORGE_SFT_STEPS", "400"))


def val_size() -> int:
    return int(os.environ.get("IDEAFORGE_VAL_SIZE", "500"))


def setup_threads() -> None:
    torch.set_num_threads(int(os.environ.get("IDEAFORGE_THREADS", "1")))


def _digits(values: torch.Tensor, width: int) -> torch.Tensor:
    powers = 10 ** torch.arange(width - 1, -1, -1)
    return (values[:, None] // powers[None, :]) % 10


def sample_problems(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random problems: prompts (n, PROMPT_LEN) and answers (n, ANSWER_LEN) as token ids."""
    a = torch.randint(0, 1000, (n,), generator=gen)
    b = torch.randint(0, 1000, (n,), generator=gen)
    col = lambda v: torch.full((n, 1), v, dtype=torch.long)  # noqa: E731
    prompts = torch.cat([col(BOS), _digits(a, 3), col(PLUS), _digits(b, 3), col(EQUALS)], dim=1)
    answers = torch.cat([_digits(a + b, 4), col(EOS)], dim=1)
    return prompts, answers


def eval_data_dir() -> Path:
    """Held-out data, visible to prepare and the evaluator only (never to training)."""
    return env_path("IDEAFORGE_EVAL_DATA")


def val_path() -> Path:
    return eval_data_dir() / f"val-{val_size()}.pt"


def val_problems() -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed held-out problems (same for every run of a profile), drawn by prepare.py."""
    path = val_path()
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run prepare.py first (the runner's prepare_command)")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    return saved["prompts"], saved["answers"]


def reward(completions: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """1.0 where the completion equals the answer (4 digits then <eos>), else 0.0."""
    return (completions[:, :ANSWER_LEN] == answers).all(dim=1).float()


def render(tokens: torch.Tensor) -> str:
    names = {PLUS: "+", EQUALS: "=", EOS: "<eos>", BOS: "<bos>"}
    return "".join(names.get(t, DIGITS[t] if t < 10 else "?") for t in tokens.tolist())
