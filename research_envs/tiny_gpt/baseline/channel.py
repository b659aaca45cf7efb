"""PROTECTED. The pipe between the evaluator and the model server (serve.py), each in its own sandbox.

The runner starts two model servers, each a fresh process in a sandbox of its own, and gives each one pipe pair
in IDEAFORGE_MODEL_CHANNEL ("<read fd>,<write fd>"); the evaluator gets one pair per server, separated by ";".
The editable model code only ever runs in the servers, which cannot see the held-out targets beyond the inputs
they are sent and cannot write the metric: they answer token windows with logits, and the evaluator scores them.

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


def endpoints(count: int) -> list[tuple[BinaryIO, BinaryIO]]:
    """(reader, writer) of each of the ``count`` channels this process holds."""
    value = os.environ.get("IDEAFORGE_MODEL_CHANNEL", "")
    try:
        pairs = [tuple(int(x) for x in pair.split(",")) for pair in value.split(";")]
        if len(pairs) != count or any(len(p) != 2 for p in pairs):
            raise ValueError(value)
    except ValueError:
        raise SystemExit(
            f"IDEAFORGE_MODEL_CHANNEL={value!r}: want {count} channel(s); the runner joins the evaluator and its "
            "model servers (serve_command, serve_instances = 2)"
        ) from None
    return [(os.fdopen(r, "rb"), os.fdopen(w, "wb")) for r, w in pairs]


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
