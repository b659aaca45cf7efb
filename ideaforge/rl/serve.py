"""A small OpenAI-compatible server for the ideator on a CPU: a transformers model plus LoRA adapters.

    python -m ideaforge.rl.serve --model DIR [--port 8000] [--served-model-name base]

The CPU stand-in for vLLM, with the subset of vLLM's API an RL campaign uses, so the client path is the same:
- ``POST /v1/chat/completions`` ``{model, messages, temperature, max_tokens, n, seed}``: ``model`` is the base
  name or a loaded adapter's name;
- ``POST /v1/load_lora_adapter`` ``{lora_name, lora_path}`` and ``POST /v1/unload_lora_adapter``
  ``{lora_name}`` (vLLM's runtime LoRA endpoints);
- ``GET /v1/models`` (base and adapters) and ``GET /health``.
Requests are served one at a time (one model, one lock); at most ``max_loras`` adapters stay loaded (the oldest
is dropped). Errors are OpenAI-style JSON ``{"error": {"message", "type"}}`` with HTTP 400/404.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from contextlib import nullcontext
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ideaforge.rl.policy import load_policy, prompt_ids

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024 * 1024


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send more fields than a small server needs
    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    temperature: float = Field(1.0, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1, le=32_768)
    max_completion_tokens: int | None = Field(None, ge=1, le=32_768)
    n: int = Field(1, ge=1, le=64)
    seed: int | None = None


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    lora_name: str = Field(min_length=1, max_length=200)
    lora_path: str | None = None


class ServeError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


class PolicyServer:
    """The model, its tokenizer and the loaded adapters; every method is thread-safe."""

    def __init__(self, model_dir: Path, served_name: str = "base", max_loras: int = 4, max_tokens: int = 512):
        self.model_dir = Path(model_dir)
        self.base, self.tok = load_policy(self.model_dir, [])
        self.base.eval()
        self.model: Any = self.base  # becomes a PeftModel when the first adapter is loaded
        self.served_name = served_name
        self.max_loras = max_loras
        self.default_max_tokens = max_tokens
        self.adapters: OrderedDict[str, str] = OrderedDict()
        self.lock = threading.Lock()

    def models(self) -> list[dict]:
        with self.lock:
            names = [self.served_name, *self.adapters]
            paths = {self.served_name: str(self.model_dir), **self.adapters}
        return [{"id": n, "object": "model", "owned_by": "ideaforge", "root": paths[n]} for n in names]

    def load(self, name: str, path: str | None) -> str:
        if not path:
            raise ServeError(400, "lora_path is required")
        if name == self.served_name:
            raise ServeError(400, f"{name!r} is the base model's name")
        p = Path(path)
        if not (p / "adapter_config.json").is_file():
            raise ServeError(400, f"{path}: not a LoRA adapter folder (no adapter_config.json)")
        with self.lock:
            if name in self.adapters:
                if self.adapters[name] == str(p):
                    raise ServeError(400, f"The lora adapter '{name}' has already been loaded.")
                raise ServeError(400, f"another adapter is loaded as {name!r}")
            from peft import PeftModel

            if self.model is self.base:
                self.model = PeftModel.from_pretrained(self.base, str(p), adapter_name=name, is_trainable=False)
            else:
                self.model.load_adapter(str(p), adapter_name=name, is_trainable=False)
            self.model.eval()
            self.adapters[name] = str(p)
            while len(self.adapters) > self.max_loras:
                old, _ = self.adapters.popitem(last=False)
                self.model.delete_adapter(old)
                log.info("dropped adapter %s (max_loras=%d)", old, self.max_loras)
        log.info("loaded adapter %s from %s", name, p)
        return f"Success: LoRA adapter '{name}' added successfully."

    def unload(self, name: str) -> str:
        with self.lock:
            if name not in self.adapters:
                raise ServeError(404, f"no adapter named {name!r}", "not_found_error")
            del self.adapters[name]
            self.model.delete_adapter(name)
        return f"Success: LoRA adapter '{name}' removed successfully."

    def _select(self, name: str):
        """Context in which the model computes with adapter ``name`` (or with none for the base name)."""
        if name == self.served_name:
            return self.model.disable_adapter() if self.model is not self.base else nullcontext()
        if name not in self.adapters:
            raise ServeError(404, f"The model `{name}` does not exist.", "not_found_error")
        self.model.set_adapter(name)
        return nullcontext()

    def chat(self, req: ChatRequest) -> dict:
        import torch

        messages = [{"role": str(m.get("role", "user")), "content": _content(m)} for m in req.messages]
        max_new = req.max_completion_tokens or req.max_tokens or self.default_max_tokens
        ids = prompt_ids(self.tok, messages)
        eos = self.tok.eos_token_id
        choices = []
        out_tokens = 0
        with self.lock:
            if req.seed is not None:
                torch.manual_seed(req.seed)
            with self._select(req.model), torch.no_grad():
                for i in range(req.n):
                    inp = torch.tensor([ids])
                    sample = req.temperature > 0
                    gen = self.model.generate(
                        input_ids=inp,
                        attention_mask=torch.ones_like(inp),
                        max_new_tokens=max_new,
                        do_sample=sample,
                        temperature=req.temperature if sample else None,
                        top_k=0 if sample else None,
                        top_p=1.0 if sample else None,
                        pad_token_id=self.tok.pad_token_id,
                        eos_token_id=eos,
                    )[0, len(ids) :].tolist()
                    finished = eos in gen
                    if finished:
                        gen = gen[: gen.index(eos)]
                    out_tokens += len(gen) + finished
                    text = self.tok.decode(gen, skip_special_tokens=True)
                    choices.append(
                        {
                            "index": i,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop" if finished else "length",
                        }
                    )
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.model,
            "choices": choices,
            "usage": {
                "prompt_tokens": len(ids) * req.n,
                "completion_tokens": out_tokens,
                "total_tokens": len(ids) * req.n + out_tokens,
            },
        }


def _content(message: dict) -> str:
    """A message's text: a string, or the text parts of an OpenAI content list."""
    c = message.get("content", "")
    if isinstance(c, list):
        return "".join(p.get("text", "") for p in c if isinstance(p, dict))
    return str(c)


def make_handler(server: PolicyServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("%s " + fmt, self.address_string(), *args)

        def _send(self, status: int, body: Any) -> None:
            data = (json.dumps(body) if not isinstance(body, str) else body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if not isinstance(body, str) else "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, e: ServeError) -> None:
            self._send(e.status, {"error": {"message": str(e), "type": e.kind, "code": e.status}})

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path.rstrip("/") == "/health":
                self._send(200, "ok")
            elif self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": server.models()})
            else:
                self._error(ServeError(404, f"no route {self.path}", "not_found_error"))

        def do_POST(self) -> None:  # noqa: N802
            try:
                n = int(self.headers.get("Content-Length") or 0)
                if n > MAX_BODY:
                    raise ServeError(400, f"request body over {MAX_BODY} bytes")
                try:
                    body = json.loads(self.rfile.read(n) or b"{}")
                except json.JSONDecodeError as e:
                    raise ServeError(400, f"body is not JSON: {e}") from e
                route = self.path.rstrip("/")
                if route == "/v1/chat/completions":
                    self._send(200, server.chat(ChatRequest.model_validate(body)))
                elif route == "/v1/load_lora_adapter":
                    r = LoadRequest.model_validate(body)
                    self._send(200, server.load(r.lora_name, r.lora_path))
                elif route == "/v1/unload_lora_adapter":
                    self._send(200, server.unload(LoadRequest.model_validate(body).lora_name))
                else:
                    raise ServeError(404, f"no route {self.path}", "not_found_error")
            except ServeError as e:
                self._error(e)
            except ValidationError as e:
                first = e.errors()[0]
                self._error(ServeError(400, f"{'.'.join(map(str, first['loc']))}: {first['msg']}"))
            except Exception as e:  # noqa: BLE001 - the client gets the error; the server stays up
                log.exception("request %s failed", self.path)
                self._error(ServeError(500, f"{type(e).__name__}: {e}", "server_error"))

    return Handler


def serve(server: PolicyServer, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """An HTTP server for ``server`` bound to ``host:port`` (call ``serve_forever`` on it)."""
    httpd = ThreadingHTTPServer((host, port), make_handler(server))
    httpd.daemon_threads = True
    return httpd


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ideaforge.rl.serve", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, type=Path, help="local model folder (config.json, weights, tokenizer)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", default="base")
    p.add_argument("--max-loras", type=int, default=4)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    httpd = serve(PolicyServer(args.model, args.served_model_name, args.max_loras), args.host, args.port)
    log.info("serving %s as %r on http://%s:%d/v1", args.model, args.served_model_name, args.host, args.port)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


if __name__ == "__main__":
    main()
