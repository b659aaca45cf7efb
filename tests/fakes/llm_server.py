"""Loopback fake of the Anthropic Messages API and the OpenAI chat-completions API, for tests.

Usage::

    with FakeLLMServer() as srv:                       # starts on 127.0.0.1:<free port> in a thread
        srv.push_text('{"ideas": []}')                 # scripted replies, served in arrival order
        srv.push_error(429, retry_after_ms=10)         # a rate limit with a retry-after-ms header
        srv.push_error(500)
        srv.push_text("...", delay=0.3, input_tokens=100, output_tokens=20)
        srv.push_text("--- a/x.py ...", cut_off=True)   # stop reason max_tokens (Anthropic) / length (OpenAI)
        ProviderConfig(kind="anthropic", base_url=srv.anthropic_base_url, ...)   # no /v1
        ProviderConfig(kind="openai", base_url=srv.openai_base_url, ...)         # ends in /v1
        srv.requests    # list[RecordedRequest]: path, headers (lower-case names), parsed JSON body
        srv.max_inflight  # most requests in flight at once

``write_tiny_env(root)`` writes and loads a two-file research env (``train.py`` editable, ``evaluate.py``
protected) for ideator/implementer tests.

Endpoints: ``POST /v1/messages`` (Anthropic) and ``POST /v1/chat/completions`` (OpenAI and compatible).
Anything else answers 404. Replies use the API's own JSON shape, with ``usage`` token counts (given, or
estimated as characters / 4).

When the script queue is empty the server answers in **smart mode** (``smart=True``, the default; with
``smart=False`` an empty queue answers HTTP 500 "fake script exhausted"):

- an ideation prompt (system prompt mentions ``"ideas"``) gets ``{"ideas": [...]}`` with as many distinct ideas
  as the prompt asks for (``Return exactly N ideas: K that improve`` in ideaforge's prompt), the first K citing
  the parent ids found as ``[id: ...]`` in the prompt;
- an implementation prompt (system prompt mentions ``<<<<<<< SEARCH``) gets one SEARCH/REPLACE block for the
  files shown as ``<file path="...">...</file>`` (system prompt and messages; a later block of a path replaces an
  earlier one): it scales the first float assignment (``NAME = 0.01``, occurring
  once in its file; factor 0.8, 0.5, 1.25, 0.9 or 1.1 by request count), else adds a comment after the first
  unique line of the first file.
  ``implement_fn(path, content, prompt) -> str`` replaces that behaviour (return the whole reply text).

The server never logs request headers; tests read them from ``requests`` to check the key was sent.

Token limits, thinking, reasoning, caching (as the real APIs):

- a reply longer than the token limit is cut (4 characters a token) with ``stop_reason "max_tokens"``
  (Anthropic) / ``finish_reason "length"`` (OpenAI); thinking and reasoning tokens count inside the limit, so a
  reasoning model whose reasoning takes the whole ``max_completion_tokens`` returns empty content;
- Anthropic ``thinking`` ({"type": "enabled", "budget_tokens": N} or {"type": "adaptive"}) spends
  ``thinking_tokens`` (default 1500, at most the budget) and returns a thinking block; OpenAI reasoning models
  (o1/o3/o4/gpt-5) spend ``reasoning_tokens_by_effort[reasoning_effort]``; ``FakeReply.thinking_tokens`` overrides;
- malformed parameters get HTTP 400 ``invalid_request_error`` (``param_problem``): budget_tokens < 1024 or >=
  max_tokens, temperature != 1 with thinking, ``max_tokens`` or temperature != 1 on an OpenAI reasoning model,
  ``reasoning_effort`` on a non-reasoning gpt model, unknown effort values;
- prompt caching: an Anthropic prefix up to the last ``cache_control`` block (>= 1024 tokens) is written on first
  sight and read afterwards (``cache_creation_input_tokens`` / ``cache_read_input_tokens``, excluded from
  ``input_tokens``); an OpenAI system prompt of >= 1024 tokens seen before is reported in
  ``prompt_tokens_details.cached_tokens`` (128-token steps, included in ``prompt_tokens``).
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class FakeReply:
    """One scripted reply: a completion text, or an HTTP error, or a raw body."""

    text: str | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    raw_body: str | None = None
    delay: float = 0.0
    input_tokens: int | None = None
    output_tokens: int | None = None
    cut_off: bool = False  # answer as if the output-token limit was hit (max_tokens / length)
    # API realism (see "Token limits, thinking, reasoning, caching" in the module docstring)
    thinking_tokens: int | None = None  # Anthropic thinking / OpenAI reasoning tokens this reply spends


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict
    api: str  # "anthropic" | "openai"

    @property
    def system(self) -> str:
        if self.api == "anthropic":
            s = self.body.get("system", "")
            return s if isinstance(s, str) else " ".join(b.get("text", "") for b in s)
        return "\n".join(m["content"] for m in self.body.get("messages", []) if m.get("role") == "system")

    @property
    def prompt(self) -> str:
        """All user/assistant message text, joined."""
        out = []
        for m in self.body.get("messages", []):
            if m.get("role") == "system":
                continue
            c = m.get("content", "")
            out.append(c if isinstance(c, str) else " ".join(b.get("text", "") for b in c))
        return "\n".join(out)


_WORDS = (
    "warmup cosine schedule decay momentum dropout residual scaling gating attention heads rotary embedding "
    "normalisation rms layer weight tying gradient clipping batch curriculum label smoothing mixture experts "
    "sparse dense kernel width depth adaptive optimizer adam lion muon nesterov ema averaging init orthogonal "
    "spectral temperature sampling entropy bonus reward shaping baseline variance advantage clipping ratio "
    "tokenizer context window sliding local global memory cache prefix bias alibi relative absolute position"
).split()


class FakeLLMServer:
    """Scripted + smart fake LLM HTTP server on 127.0.0.1 (see module docstring)."""

    def __init__(
        self, smart: bool = True, implement_fn: Callable[[str, str, str], str] | None = None
    ) -> None:
        self.smart = smart
        self.implement_fn = implement_fn
        self.requests: list[RecordedRequest] = []
        self._queue: deque[FakeReply] = deque()
        self._lock = threading.Lock()
        self._counter = 0
        self.inflight = 0
        self.max_inflight = 0  # most requests handled at the same time (to check concurrency limits)
        self.prompt_cache: set[str] = set()  # prefixes seen (cache hits on the next request sharing one)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> FakeLLMServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence stderr
                pass

            def do_POST(self) -> None:  # noqa: N802
                server._handle(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd, "server not started"
        return self._httpd.server_address[1]

    @property
    def anthropic_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def base_url(self, kind: str) -> str:
        """base_url for a ProviderConfig of ``kind`` (anthropic / openai / openai-compatible)."""
        return self.anthropic_base_url if kind == "anthropic" else self.openai_base_url

    # -- script -----------------------------------------------------------------------------------------

    def push(self, reply: FakeReply) -> None:
        with self._lock:
            self._queue.append(reply)

    def push_text(self, text: str, **kw: object) -> None:
        self.push(FakeReply(text=text, **kw))  # type: ignore[arg-type]

    def push_error(
        self,
        status: int,
        retry_after: float | None = None,
        retry_after_ms: int | None = None,
        message: str = "fake error",
        delay: float = 0.0,
    ) -> None:
        headers = {}
        if retry_after is not None:
            headers["retry-after"] = str(retry_after)
        if retry_after_ms is not None:
            headers["retry-after-ms"] = str(retry_after_ms)
        self.push(FakeReply(status=status, headers=headers, raw_body=message, delay=delay))

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    # -- serving ----------------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?", 1)[0]
        length = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(length) if length else b""
        api = {"/v1/messages": "anthropic", "/v1/chat/completions": "openai"}.get(path)
        if api is None:
            self._send(h, 404, {"error": {"message": f"no route {path}"}})
            return
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._send(h, 400, {"error": {"message": "request body is not JSON"}})
            return
        req = RecordedRequest(
            path=path, headers={k.lower(): v for k, v in h.headers.items()}, body=body, api=api
        )
        problem = param_problem(api, body)  # malformed thinking/reasoning/token parameters: HTTP 400
        if problem:
            with self._lock:
                self.requests.append(req)
            self._send(h, 400, self._error_body(api, FakeReply(status=400, raw_body=problem)))
            return
        with self._lock:
            self.requests.append(req)
            reply = self._queue.popleft() if self._queue else None
        if reply is None:
            reply = (
                self._smart(req) if self.smart else FakeReply(status=500, raw_body="fake script exhausted")
            )
        with self._lock:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            time.sleep(max(reply.delay, 0.02))  # let concurrent requests overlap measurably
        finally:
            with self._lock:
                self.inflight -= 1
        if reply.status != 200:
            self._send(h, reply.status, self._error_body(api, reply), reply.headers)
            return
        if reply.raw_body is not None:
            self._send_raw(h, 200, reply.raw_body.encode(), reply.headers)
            return
        out = self._reply_body(api, req, reply)
        self._send(h, 200, out, reply.headers)

    @staticmethod
    def _error_body(api: str, reply: FakeReply) -> dict:
        kind = {429: "rate_limit_error", 401: "authentication_error", 400: "invalid_request_error"}.get(
            reply.status, "api_error"
        )
        msg = reply.raw_body or "fake error"
        if api == "anthropic":
            return {"type": "error", "error": {"type": kind, "message": msg}}
        return {"error": {"message": msg, "type": kind, "code": None}}

    def _send(self, h: BaseHTTPRequestHandler, status: int, obj: dict, headers: dict | None = None) -> None:
        self._send_raw(h, status, json.dumps(obj).encode(), headers, "application/json")

    @staticmethod
    def _send_raw(
        h: BaseHTTPRequestHandler,
        status: int,
        data: bytes,
        headers: dict | None = None,
        ctype: str = "application/json",
    ) -> None:
        h.send_response(status)
        h.send_header("content-type", ctype)
        h.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    # -- API realism: token limits, thinking, reasoning, prompt caching --------------------------------------

    thinking_tokens = 1500  # Anthropic thinking spent per reply (at most budget_tokens / max_tokens - 1)
    reasoning_tokens_by_effort = {"none": 0, "minimal": 0, "low": 300, "medium": 1200, "high": 4000}
    anthropic_min_cache_tokens = 1024  # shorter cache_control prefixes are not cached (as the real API)
    openai_min_cache_tokens = 1024

    def _reply_body(self, api: str, req: RecordedRequest, reply: FakeReply) -> dict:
        """The API's JSON for a 200 reply: text cut at the token limit, thinking/reasoning and cache counts."""
        body = req.body
        model = body.get("model", "fake-model")
        text = reply.text or ""
        if api == "anthropic":
            limit = int(body.get("max_tokens") or 4096)
            think = body.get("thinking") or {}
            spent = 0
            if think.get("type") in ("enabled", "adaptive"):
                cap = think.get("budget_tokens", limit - 1)
                default = self.thinking_tokens if reply.thinking_tokens is None else reply.thinking_tokens
                spent = min(default, cap, limit - 1)
            text, cut = _cut(text, limit - spent)
            tout = spent + (
                reply.output_tokens if reply.output_tokens is not None and not cut else _tokens(text)
            )
            cached, written, tin = self._anthropic_cache(req, reply)
            content = [{"type": "text", "text": text}]
            if spent:
                content.insert(
                    0, {"type": "thinking", "thinking": "Let me think. " * 3, "signature": "fakesig"}
                )
            return {
                "id": f"msg_fake{len(self.requests)}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": "max_tokens" if cut or reply.cut_off else "end_turn",
                "stop_sequence": None,
                "usage": {
                    "input_tokens": tin,
                    "output_tokens": tout,
                    "cache_read_input_tokens": cached,
                    "cache_creation_input_tokens": written,
                    "output_tokens_details": {"thinking_tokens": spent},
                },
            }
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        spent = 0
        if _openai_reasoning(body):
            effort = body.get("reasoning_effort") or "medium"
            default = self.reasoning_tokens_by_effort.get(effort, 6000)
            spent = default if reply.thinking_tokens is None else reply.thinking_tokens
            if limit is not None:
                spent = min(spent, int(limit))
        room = None if limit is None else int(limit) - spent
        text, cut = _cut(text, room)
        tout = spent + (reply.output_tokens if reply.output_tokens is not None and not cut else _tokens(text))
        tin = reply.input_tokens if reply.input_tokens is not None else _tokens(req.system + req.prompt)
        cached = self._openai_cache(req, model)
        return {
            "id": f"chatcmpl-fake{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "length" if cut or reply.cut_off else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": tin,
                "completion_tokens": tout,
                "total_tokens": tin + tout,
                "prompt_tokens_details": {"cached_tokens": min(cached, tin)},
                "completion_tokens_details": {"reasoning_tokens": spent},
            },
        }

    def _anthropic_cache(self, req: RecordedRequest, reply: FakeReply) -> tuple[int, int, int]:
        """(cache read, cache write, uncached input) tokens: the prefix up to the last cache_control block is
        read from the cache when an earlier request of the same model wrote it, else written."""
        blocks: list[tuple[str, bool]] = []
        system = req.body.get("system", "")
        if isinstance(system, str):
            blocks.append((system, False))
        else:
            blocks += [(b.get("text", ""), "cache_control" in b) for b in system]
        for m in req.body.get("messages", []):
            c = m.get("content", "")
            if isinstance(c, str):
                blocks.append((c, False))
            else:
                blocks += [(b.get("text", ""), "cache_control" in b) for b in c]
        total = (
            reply.input_tokens if reply.input_tokens is not None else _tokens("".join(t for t, _ in blocks))
        )
        marks = [i for i, (_, marked) in enumerate(blocks) if marked]
        if not marks:
            return 0, 0, total
        prefix = "".join(t for t, _ in blocks[: marks[-1] + 1])
        n = _tokens(prefix)
        if n < self.anthropic_min_cache_tokens or n > total:
            return 0, 0, total
        key = f"anthropic:{req.body.get('model')}:{hash(prefix)}"
        with self._lock:
            hit = key in self.prompt_cache
            self.prompt_cache.add(key)
        return (n, 0, total - n) if hit else (0, n, total - n)

    def _openai_cache(self, req: RecordedRequest, model: str) -> int:
        """Cached prompt tokens: the system prompt, when at least 1024 tokens and seen before, counted in
        128-token steps (as OpenAI's automatic prefix caching)."""
        n = _tokens(req.system)
        if n < self.openai_min_cache_tokens:
            return 0
        key = f"openai:{model}:{hash(req.system)}"
        with self._lock:
            hit = key in self.prompt_cache
            self.prompt_cache.add(key)
        return (n // 128) * 128 if hit else 0

    # -- smart mode -------------------------------------------------------------------------------------

    def _smart(self, req: RecordedRequest) -> FakeReply:
        with self._lock:
            self._counter += 1
            counter = self._counter
        if "<<<<<<< SEARCH" in req.system:
            return FakeReply(text=self._smart_implement(req.prompt, counter, req.system))
        if '"ideas"' in req.system or '"ideas"' in req.prompt:
            return FakeReply(text=self._smart_ideas(req.prompt, counter))
        return FakeReply(text="I am a fake model.")

    @staticmethod
    def _smart_ideas(prompt: str, counter: int) -> str:
        m = re.search(r"exactly (\d+) ideas?(?:: (\d+) that improve)?", prompt)
        n = int(m.group(1)) if m else 3
        k = int(m.group(2)) if m and m.group(2) else 0
        parents = re.findall(r"\[id: ([^\]]+)\]", prompt)
        rng = random.Random(counter)
        ideas = []
        for i in range(n):
            words = rng.sample(_WORDS, 10)
            tag = f"{counter}-{i}"
            ideas.append(
                {
                    "title": f"Fake idea {tag}: {words[0]} {words[1]}",
                    "description": f"Try {' '.join(words)} (variant {tag}).",
                    "parent_ids": [parents[i % len(parents)]] if parents and i < k else [],
                }
            )
        return json.dumps({"ideas": ideas})

    def _smart_implement(self, prompt: str, counter: int = 0, system: str = "") -> str:
        # files in the system prompt (the baseline) first; a later block of the same path (the editable file
        # as it is now, in the user message) replaces it
        found = re.findall(r'<file path="([^"]+)">\n(.*?)</file>', system + "\n" + prompt, re.S)
        files = list(dict(found).items())
        if not files:
            return "I cannot see any file to edit."
        if self.implement_fn:
            return self.implement_fn(files[0][0], files[0][1], prompt)
        factor = (0.8, 0.5, 1.25, 0.9, 1.1)[counter % 5]
        for path, content in files:
            lines = content.splitlines()
            for line in lines:
                m = _FLOAT_RE.match(line)
                if m and lines.count(line) == 1:
                    new = f"{m.group(1)}{float(m.group(2)) * factor:.6g}{m.group(3)}"
                    return _block(path, line, new)
        path, content = files[0]
        lines = content.splitlines()
        for line in lines:
            if line.strip() and lines.count(line) == 1 and not line.rstrip().endswith("\\"):
                return _block(path, line, line + "\n# fake implementer was here")
        return "No unique line to edit."


_ANTHROPIC_EFFORTS = ("low", "medium", "high", "xhigh", "max")
_OPENAI_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
_OPENAI_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")


def _tokens(text: str) -> int:
    return (len(text) + 3) // 4


def _cut(text: str, room: int | None) -> tuple[str, bool]:
    """``text`` cut to ``room`` tokens (4 characters each); True when it was cut."""
    if room is None or _tokens(text) <= room:
        return text, False
    return text[: max(0, room) * 4], True


def _openai_reasoning(body: dict) -> bool:
    return str(body.get("model", "")).startswith(_OPENAI_REASONING_PREFIXES)


def param_problem(api: str, body: dict) -> str | None:
    """What the real API would reject in ``body`` with HTTP 400 (token limits, thinking, reasoning), or None."""
    if api == "anthropic":
        limit = body.get("max_tokens")
        if not isinstance(limit, int) or limit < 1:
            return "max_tokens: field required (an integer >= 1)"
        think = body.get("thinking")
        if think is not None:
            kind = think.get("type") if isinstance(think, dict) else None
            if kind not in ("enabled", "disabled", "adaptive"):
                return f"thinking.type: unknown value {kind!r}"
            if kind == "enabled":
                budget = think.get("budget_tokens")
                if not isinstance(budget, int) or budget < 1024:
                    return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
                if budget >= limit:
                    return "`max_tokens` must be greater than `thinking.budget_tokens`"
            if kind in ("enabled", "adaptive") and body.get("temperature", 1) != 1:
                return "`temperature` may only be set to 1 when thinking is enabled"
        effort = (body.get("output_config") or {}).get("effort")
        if effort is not None and effort not in _ANTHROPIC_EFFORTS:
            return f"output_config.effort: unknown value {effort!r}"
        return None
    effort = body.get("reasoning_effort")
    if _openai_reasoning(body):
        if "max_tokens" in body:
            return (
                "Unsupported parameter: 'max_tokens' is not supported with this model. "
                "Use 'max_completion_tokens' instead."
            )
        if body.get("temperature", 1) != 1:
            return "Unsupported value: 'temperature' does not support this value with this model. Only 1 is."
        if effort is not None and effort not in _OPENAI_EFFORTS:
            return f"Invalid value for 'reasoning_effort': {effort!r}"
    elif effort is not None and str(body.get("model", "")).startswith("gpt-"):
        return "Unsupported parameter: 'reasoning_effort' is not supported with this model."
    for key in ("max_tokens", "max_completion_tokens"):
        if key in body and (not isinstance(body[key], int) or body[key] < 1):
            return f"Invalid '{key}': integer below minimum value 1"
    return None


_FLOAT_RE = re.compile(
    r"^(\s*[A-Za-z_][\w.]*\s*=\s*)(\d+\.\d*(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+)(\s*(?:#.*)?)$"
)


def _block(path: str, search: str, replace: str) -> str:
    return f"Here is the change.\n\n{path}\n```python\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n```\n"


TINY_TRAIN = """\"\"\"Tiny env for LLM tests: gradient descent on a quadratic.\"\"\"

LR = 0.1
STEPS = 20


def loss(x: float) -> float:
    return (x - 3.0) ** 2


def main() -> None:
    x = 0.0
    for _ in range(STEPS):
        x -= LR * 2 * (x - 3.0)
    print(loss(x))


if __name__ == "__main__":
    main()
"""

TINY_EVAL = """\"\"\"Locked evaluator.\"\"\"

print("eval")
"""


def write_tiny_env(root):
    """Create ``root/tiny_llm`` (env.toml + baseline/) and return the loaded ResearchEnv."""
    from pathlib import Path

    from ideaforge.research_envs.registry import load_env_folder

    folder = Path(root) / "tiny_llm"
    (folder / "baseline").mkdir(parents=True, exist_ok=True)
    (folder / "baseline" / "train.py").write_text(TINY_TRAIN)
    (folder / "baseline" / "evaluate.py").write_text(TINY_EVAL)
    (folder / "env.toml").write_text(
        'name = "tiny_llm"\n'
        'description = "Minimise the final loss of gradient descent on a quadratic."\n'
        'editable_files = ["train.py"]\nprotected_files = ["evaluate.py"]\n'
        'run_command = ["{python}", "train.py"]\neval_command = ["{python}", "evaluate.py"]\n'
        'metric = "loss"\ndirection = "min"\nplausible_range = [0.0, 100.0]\n'
    )
    return load_env_folder(folder)
