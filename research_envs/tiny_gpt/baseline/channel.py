"""PROTECTED. The pipe between the evaluator and the model server (serve.py), each in its own sandbox.

The runner gives both processes two pipe ends in IDEAFORGE_MODEL_CHANNEL ("<read fd>,<write fd>"). The editable
model code only ever runs in the server, which cannot see the held-out targets beyond the inputs it is sent
and cannot write the metric: it answers token windows with logits, and the evaluator scores them.

Frames (little-endian):
- hello, server -> evaluator: MAGIC, then int64 parameter count (reported by the server, informational);
- request, evaluator -> server: int64 B, int64 T, then B*T int64 tokens; end of stream = the evaluator is done;
- reply, server -> evaluator: B*T*VOCAB_SIZE float32 logits.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

import torch

MAGIC = b"IFMODEL1"
MAX_BATCH, MAX_LEN = 4096, 4096


class ChannelClosed(Exception):
    """The other side closed the channel (or sent a malformed frame)."""


def endpoints() -> tuple[BinaryIO, BinaryIO]:
    """(reader, writer) of this process's end of the channel."""
    value = os.environ.get("IDEAFORGE_MODEL_CHANNEL", "")
    try:
        r, w = (int(x) for x in value.split(","))
    except ValueError:
        raise SystemExit(
            f"IDEAFORGE_MODEL_CHANNEL={value!r}: the runner starts the evaluator and serve.py joined by a channel"
        ) from None
    return os.fdopen(r, "rb"), os.fdopen(w, "wb")


def read_exact(f: BinaryIO, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            raise ChannelClosed(f"channel closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def send_hello(f: BinaryIO, params: int) -> None:
    f.write(MAGIC + struct.pack("<q", params))
    f.flush()


def recv_hello(f: BinaryIO) -> int:
    head = read_exact(f, 16)
    if head[:8] != MAGIC:
        raise ChannelClosed("the model server did not start with the channel's hello")
    return struct.unpack("<q", head[8:])[0]


def send_tokens(f: BinaryIO, x: torch.Tensor) -> None:
    b, t = x.shape
    f.write(struct.pack("<qq", b, t) + x.to(torch.int64).contiguous().numpy().tobytes())
    f.flush()


def recv_tokens(f: BinaryIO) -> torch.Tensor | None:
    """The next request, or None at the end of the stream."""
    head = f.read(16)
    if not head:
        return None
    if len(head) < 16:
        head += read_exact(f, 16 - len(head))
    b, t = struct.unpack("<qq", head)
    if not (0 < b <= MAX_BATCH and 0 < t <= MAX_LEN):
        raise ChannelClosed(f"bad request shape ({b}, {t})")
    raw = bytearray(read_exact(f, b * t * 8))
    return torch.frombuffer(raw, dtype=torch.int64).view(b, t)


def send_logits(f: BinaryIO, logits: torch.Tensor) -> None:
    f.write(logits.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    f.flush()


def recv_logits(f: BinaryIO, shape: tuple[int, int, int]) -> torch.Tensor:
    b, t, v = shape
    raw = bytearray(read_exact(f, b * t * v * 4))
    return torch.frombuffer(raw, dtype=torch.float32).view(b, t, v)
