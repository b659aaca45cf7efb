"""PROTECTED. Policy backends behind one small interface, and sampling / log-probability helpers.

IDEAFORGE_POLICY = ``tiny``: a built-in randomly initialised character-level transformer (CPU smoke profile,
no ``transformers`` needed). Anything else is a Hugging Face model id or path (default
Qwen/Qwen2.5-Math-1.5B) loaded with ``transformers`` (an optional dependency).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import problems

DEFAULT_MODEL = "Qwen/Qwen2.5-Math-1.5B"


class CharTokenizer:
    """Printable ASCII plus newline; id 0 = pad, 1 = end of sequence."""

    pad_id, eos_id = 0, 1
    chars = "\n" + "".join(chr(i) for i in range(32, 127))

    def encode(self, text: str) -> list[int]:
        return [self.chars.index(c) + 2 if c in self.chars else self.chars.index("?") + 2 for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i - 2] for i in ids if i >= 2)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 2


class TinyLM(nn.Module):
    """A small causal transformer used by the smoke profile."""

    def __init__(self, vocab_size: int, n_embd: int = 64, n_layer: int = 2, n_head: int = 2, max_len: int = 1024):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, n_embd)
        self.pos = nn.Embedding(max_len, n_embd)
        layer = nn.TransformerEncoderLayer(n_embd, n_head, 4 * n_embd, 0.0, "gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, n_layer, enable_nested_tensor=False)
        self.head = nn.Linear(n_embd, vocab_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        T = input_ids.shape[1]
        x = self.tok(input_ids) + self.pos(torch.arange(T, device=input_ids.device))
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=input_ids.device)
        return self.head(self.blocks(x, mask=mask, is_causal=True))


@dataclass
class Backend:
    """A policy: the trainable model plus how to turn text into ids and back."""

    kind: str  # "tiny" or "hf"
    model: nn.Module
    tokenizer: object
    pad_id: int
    eos_id: int
    device: torch.device

    def encode_prompt(self, problem: str) -> list[int]:
        text = problems.prompt_text(problem)
        if self.kind == "hf" and getattr(self.tokenizer, "chat_template", None):
            msgs = [{"role": "user", "content": text}]
            return self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True)
        return self.tokenizer.encode(text)

    def decode(self, ids: list[int]) -> str:
        if self.kind == "hf":
            return self.tokenizer.decode(ids, skip_special_tokens=True)
        return self.tokenizer.decode(ids)

    def logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids, attention_mask=mask)
        return (out.logits if hasattr(out, "logits") else out).float()

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if self.kind == "hf":
            self.model.save_pretrained(path)
            self.tokenizer.save_pretrained(path)
        else:
            torch.save(self.model.state_dict(), path / "tiny.pt")
        (path / "policy.json").write_text(json.dumps({"kind": self.kind}))


def device() -> torch.device:
    wants_cuda = os.environ.get("IDEAFORGE_DEVICE", "cuda") == "cuda"
    return torch.device("cuda" if wants_cuda and torch.cuda.is_available() else "cpu")


def load_policy(path: str | Path | None = None) -> Backend:
    """The initial policy (``path`` None) or a saved one (a directory written by Backend.save)."""
    dev = device()
    name = os.environ.get("IDEAFORGE_POLICY", DEFAULT_MODEL)
    kind = json.loads((Path(path) / "policy.json").read_text())["kind"] if path else ("tiny" if name == "tiny" else "hf")
    if kind == "tiny":
        tok = CharTokenizer()
        torch.manual_seed(0)  # the same random initial policy for every run
        model = TinyLM(tok.vocab_size)
        if path:
            model.load_state_dict(torch.load(Path(path) / "tiny.pt", map_location="cpu", weights_only=True))
        return Backend("tiny", model.to(dev), tok, tok.pad_id, tok.eos_id, dev)
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise SystemExit(
            f"policy {name!r} needs the 'transformers' package (pip install transformers accelerate); "
            "the smoke profile uses IDEAFORGE_POLICY=tiny instead"
        ) from e
    source = str(path) if path else name
    tok = AutoTokenizer.from_pretrained(source)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(source, torch_dtype=dtype).to(dev)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return Backend("hf", model, tok, pad, tok.eos_token_id, dev)


def left_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s)
            mask[i, width - len(s) :] = 1
    return ids, mask


@torch.no_grad()
def generate(
    pol: Backend, prompts: list[list[int]], max_new: int, temperature: float = 1.0, greedy: bool = False, gen=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample completions. Returns prompt ids/mask (left-padded) and completion ids/mask (cut after <eos>)."""
    ids, mask = left_pad(prompts, pol.pad_id)
    ids, mask = ids.to(pol.device), mask.to(pol.device)
    was_training = pol.model.training
    pol.model.eval()
    if pol.kind == "hf":
        kwargs = {"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature, "top_k": 0}
        out = pol.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new, pad_token_id=pol.pad_id, **kwargs
        )
        completion = out[:, ids.shape[1] :]
    else:
        seq, m = ids, mask
        for _ in range(max_new):
            logits = pol.logits(seq, m)[:, -1]
            if greedy:
                nxt = logits.argmax(-1)
            else:
                probs = F.softmax(logits / temperature, dim=-1).cpu()
                nxt = torch.multinomial(probs, 1, generator=gen)[:, 0].to(pol.device)
            seq, m = torch.cat([seq, nxt[:, None]], 1), torch.cat([m, torch.ones_like(nxt)[:, None]], 1)
        completion = seq[:, ids.shape[1] :]
    pol.model.train(was_training)
    is_eos = completion == pol.eos_id
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0  # keep the <eos> itself, drop what follows
    comp_mask = (~after_eos).long()
    completion = completion.masked_fill(after_eos, pol.pad_id)
    return ids, mask, completion, comp_mask


def completion_logprobs(
    pol: Backend, ids: torch.Tensor, mask: torch.Tensor, completion: torch.Tensor, comp_mask: torch.Tensor
) -> torch.Tensor:
    """Log-probabilities (B, L) of the completion tokens given their prompts (0 where comp_mask is 0)."""
    full = torch.cat([ids, completion], 1)
    full_mask = torch.cat([mask, comp_mask], 1)
    logits = pol.logits(full, full_mask)[:, ids.shape[1] - 1 : -1]
    logp = torch.gather(F.log_softmax(logits, dim=-1), 2, completion[..., None])[..., 0]
    return logp * comp_mask


def texts(pol: Backend, completion: torch.Tensor, comp_mask: torch.Tensor) -> list[str]:
    return [pol.decode(c[m.bool()].tolist()) for c, m in zip(completion.cpu(), comp_mask.cpu(), strict=True)]
