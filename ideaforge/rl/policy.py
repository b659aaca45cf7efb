"""The ideator policy as the trainer and the server both see it: a local model folder, prompts as token ids.

One rendering of a chat prompt for both sides (:func:`prompt_ids`): with a chat template, the template with
the generation prompt; without one (the tiny model), the messages' contents joined by blank lines. The
trainer re-encodes each served reply's text (:func:`completion_ids`), as any trainer does that samples from a
separate server through the OpenAI API.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ideaforge.rl.tiny import build_model, build_tokenizer

log = logging.getLogger(__name__)


def load_policy(model_path: Path | None, corpus: list[str]) -> tuple[Any, Any]:
    """(model, tokenizer): a local model directory (never downloads), or a tiny model fitted on ``corpus``."""
    if model_path is None:
        tok = build_tokenizer(corpus)
        return build_model(tok), tok
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_path = Path(model_path)
    if not (model_path / "config.json").is_file():
        raise FileNotFoundError(f"{model_path}: not a model directory (no config.json)")
    tok = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, local_files_only=True, dtype="auto")
    return model, tok


def save_tiny_model(out_dir: Path, corpus: Sequence[str], seed: int = 0, hidden: int = 64) -> Path:
    """Build the tiny Llama + word-level tokenizer on ``corpus`` and save both as a model folder (CPU RL)."""
    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        raise FileExistsError(f"{out_dir} already holds a model")
    tok = build_tokenizer(list(corpus))
    model = build_model(tok, hidden=hidden, seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_ids(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of a chat prompt, ready for the reply (the server and the trainer both use this)."""
    if not messages:
        raise ValueError("a prompt needs at least one message")
    if has_chat_template(tokenizer):
        text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    text = "\n\n".join(m["content"] for m in messages)
    return list(tokenizer(text)["input_ids"])


def completion_ids(tokenizer: Any, text: str, finished: bool, max_tokens: int) -> list[int]:
    """Token ids of a served reply as the trainer scores it: its text, then EOS if it ended by itself."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])[:max_tokens]
    if (finished and len(ids) < max_tokens) or not ids:
        ids.append(tokenizer.eos_token_id)
    return ids
