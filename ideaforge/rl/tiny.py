"""A tiny causal LM and a word-level tokenizer built locally (no hub download), for CPU tests and benchmarks."""

from __future__ import annotations

import re
from collections.abc import Iterable

SPECIALS = ["<pad>", "<unk>", "<eos>"]
_WORD = re.compile(r"[A-Za-z0-9_\-]+|[^\sA-Za-z0-9_\-]")


def words(text: str) -> list[str]:
    """The tokens the tiny tokenizer splits ``text`` into (lower-cased words and single punctuation marks)."""
    return _WORD.findall(text.lower())


def build_tokenizer(corpus: Iterable[str], max_vocab: int = 4000):
    """A ``PreTrainedTokenizerFast`` with a word-level vocabulary of the most frequent words of ``corpus``.

    Unknown words map to ``<unk>``; ``<eos>`` ends a completion and ``<pad>`` pads batches (left, as GRPO
    generation needs).
    """
    from collections import Counter

    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    counts: Counter[str] = Counter()
    for text in corpus:
        counts.update(words(text))
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for w, _ in counts.most_common(max_vocab):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_WORD.pattern), behavior="isolated")
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), tok.pre_tokenizer])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>", padding_side="left"
    )
    return fast


def build_model(tokenizer, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0):
    """A randomly initialised Llama-architecture causal LM sized for ``tokenizer`` (about 0.1-0.5 M params)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)
