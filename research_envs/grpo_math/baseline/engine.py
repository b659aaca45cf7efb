"""PROTECTED. The policy, its tokenizer, log-probabilities and the rollout engines of grpo_math.

One rollout interface, two engines: ``VLLMEngine`` on a GPU (vLLM in this process, weights pushed from the
training model before each rollout), ``HFEngine`` (transformers ``generate``) on the CPU. Both sample
``n`` responses per prompt at the given temperature/top-p, stop after ``</answer>`` (kept in the text) and
return text; training re-tokenises prompt + response as the paper does. Policies load from safetensors only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

STOP = "</answer>"


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 1024
    seed: int = 0


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_policy(path: Path, device: torch.device) -> torch.nn.Module:
    """The policy with float32 master weights (train it under bf16 autocast on a GPU)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
    return model.to(device)


def chat_prompt(tokenizer, text: str) -> str:
    """``text`` as a user turn in the tokenizer's chat template, as a string (a template-less tokenizer gets the
    text unchanged). ``tokenize=False`` gives a string in transformers 4 and 5 alike, where tokenizing returns
    a BatchEncoding in 5 and a list in 4."""
    if not getattr(tokenizer, "chat_template", None):
        return text
    out = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    if not isinstance(out, str):
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type(out).__name__}, not str")
    return out


def format_prompt(tokenizer, problem: str) -> str:
    """The r1_zero prompt of ``problem`` (the paper's plain-text format for base models), wrapped in the chat
    template when IDEAFORGE_PROMPT_FORMAT=chat (for instruction-tuned policies)."""
    import problems

    style = os.environ.get("IDEAFORGE_PROMPT_FORMAT", "plain")
    if style not in ("plain", "chat"):
        raise SystemExit(f"IDEAFORGE_PROMPT_FORMAT must be 'plain' or 'chat', got {style!r}")
    text = problems.prompt(problem)
    return chat_prompt(tokenizer, text) if style == "chat" else text


def encode(tokenizer, text: str) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return list(ids)


def tokenize_pairs(tokenizer, prompts: list[str], responses: list[str]) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` / ``labels`` (next tokens) / ``response_mask`` (1 on response labels), as the
    paper's tokenize_prompt_and_output."""
    p_ids = [encode(tokenizer, p) for p in prompts]
    r_ids = [encode(tokenizer, r) for r in responses]
    seqs = [p + r for p, r in zip(p_ids, r_ids, strict=True)]
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width - 1), dtype=torch.float32)
    attn = torch.zeros((len(seqs), width - 1), dtype=torch.long)
    for i, (p, r) in enumerate(zip(p_ids, r_ids, strict=True)):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        mask[i, len(p) - 1 : len(p) + len(r) - 1] = 1.0
        attn[i, : len(p) + len(r) - 1] = 1
    return {"input_ids": ids[:, :-1], "labels": ids[:, 1:], "response_mask": mask, "attention_mask": attn}


def token_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """log pi(label_t | prefix) for every position, (B, T), in float32."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    return torch.gather(F.log_softmax(logits, dim=-1), 2, labels.unsqueeze(-1)).squeeze(-1)


def cut_at_stop(text: str) -> str:
    i = text.find(STOP)
    return text if i < 0 else text[: i + len(STOP)]


class HFEngine:
    """Sampling with transformers ``generate`` from the training model itself (CPU tests, small models)."""

    def __init__(self, model: torch.nn.Module, tokenizer, batch: int = 16) -> None:
        self.model, self.tokenizer, self.batch = model, tokenizer, batch

    def sync(self, model: torch.nn.Module) -> None:
        self.model = model

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, sampling: Sampling) -> list[list[str]]:
        tok, model = self.tokenizer, self.model
        was_training = model.training
        model.eval()
        gen = torch.Generator().manual_seed(sampling.seed)
        flat = [p for p in prompts for _ in range(n)]
        texts: list[str] = []
        for i in range(0, len(flat), self.batch):
            chunk = [encode(tok, p) for p in flat[i : i + self.batch]]
            width = max(len(c) for c in chunk)
            ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
            attn = torch.zeros_like(ids)
            for j, c in enumerate(chunk):  # left padding for generation
                ids[j, width - len(c) :] = torch.tensor(c)
                attn[j, width - len(c) :] = 1
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            out = model.generate(
                input_ids=ids.to(model.device),
                attention_mask=attn.to(model.device),
                do_sample=True,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=0,
                max_new_tokens=sampling.max_tokens,
                pad_token_id=tok.pad_token_id,
            )
            for row in out[:, width:]:
                texts.append(cut_at_stop(tok.decode(row.tolist(), skip_special_tokens=True)))
        model.train(was_training)
        return [texts[k * n : (k + 1) * n] for k in range(len(prompts))]


class VLLMEngine:
    """vLLM in this process (V1 engine without a separate core process, so weights can be pushed directly)."""

    def __init__(self, model_dir: Path, tokenizer_dir: Path, gpu_memory_utilization: float, seed: int) -> None:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        self.llm = LLM(
            model=str(model_dir),
            tokenizer=str(tokenizer_dir),
            dtype="bfloat16",
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            enable_prefix_caching=True,
        )

    def sync(self, model: torch.nn.Module) -> None:
        """Push the training model's weights (cast to bf16) into vLLM and drop its prefix cache."""
        weights = [(name, p.detach().to(torch.bfloat16)) for name, p in model.state_dict().items()]
        self.llm.apply_model(lambda m: m.load_weights(iter(weights)))
        self.llm.reset_prefix_cache()

    def generate(self, prompts: list[str], n: int, sampling: Sampling) -> list[list[str]]:
        from vllm import SamplingParams

        params = SamplingParams(
            n=n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            stop=[STOP],
            include_stop_str_in_output=True,
            seed=sampling.seed,
        )
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [[c.text for c in o.outputs] for o in outputs]
