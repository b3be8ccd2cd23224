"""A real HTTP server on 127.0.0.1 that speaks the teachers' wire protocols, for tests and benches.

Routes: Anthropic `POST /v1/messages`, OpenAI `POST /v1/chat/completions` and
`POST /v1/completions`, Gemini `POST /v1beta/models/{model}:generateContent`. The real SDKs
talk to it through their base-URL settings (`ANTHROPIC_BASE_URL=http://127.0.0.1:P`,
`OPENAI_BASE_URL=http://127.0.0.1:P/v1`, `GOOGLE_GEMINI_BASE_URL=http://127.0.0.1:P`).

It enforces the API rules our clients must respect, as the real services do: Anthropic
rejects a trailing assistant turn that ends in whitespace, and rejects prefill on models that
do not support it (Claude >= 4.6); OpenAI reasoning models reject a non-default temperature;
keys are checked (`valid_keys`). It simulates Anthropic prompt caching (`cache_control`
blocks: first sight writes, later requests read) and bills prompts in the response `usage`.

Faults are scripted: `server.push(Fault...)` queues faults consumed one per request (optionally
for one route only); `rate_429` injects random 429s with `retry-after-ms`; `latency_s` delays
every answer. Every request is recorded in `server.log`.

Use: the `fake_server` pytest fixture (import it into a test module), `with FakeProviderServer()
as srv:` from code, or `python -m tests.fake_providers --port 8765 [--latency 0.2]`.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import random
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

WORDS = ("the", "answer", "is", "so", "we", "add", "then", "multiply", "each", "number", "by", "two", "and",
         "get", "total", "of", "apples", "first", "next", "finally", "which", "gives", "us", "result")
PREFILL_REJECTING = ("claude-*-4-6*", "claude-*-4-7*")  # answer prefill with a 400
NO_TEMPERATURE = ("gpt-5*", "o1*", "o3*", "o4*")


@dataclass
class Fault:
    """One scripted answer. `kind`: rate_limit, quota, overloaded, unavailable, capability,
    unauthorized, timeout (sleep `delay_s`, then answer normally), malformed (200 with broken
    JSON), empty (200 with an empty completion text), no_choices (200 with no content blocks /
    choices / candidates)."""

    kind: str
    route: str | None = None  # anthropic | chat | completions | gemini; None = any
    retry_after: float | None = None  # seconds, sent as `retry-after`
    retry_after_ms: float | None = None  # sent as `retry-after-ms`
    delay_s: float = 0.0


@dataclass
class Recorded:
    route: str
    path: str
    model: str
    body: Any
    headers: dict[str, str]
    status: int = 0
    t: float = 0.0


ERROR_SPEC = {
    # kind: (status, anthropic type, openai (type, code), gemini status, message)
    "rate_limit": (429, "rate_limit_error", ("requests", "rate_limit_exceeded"), "RESOURCE_EXHAUSTED", "Rate limit reached; try again shortly."),
    "quota": (429, "rate_limit_error", ("insufficient_quota", "insufficient_quota"), "RESOURCE_EXHAUSTED",
              "You have reached your spend limit (insufficient_quota)."),
    "overloaded": (529, "overloaded_error", ("server_error", "overloaded"), "UNAVAILABLE", "Overloaded"),
    "unavailable": (503, "api_error", ("server_error", "unavailable"), "UNAVAILABLE", "Service unavailable"),
    "capability": (400, "invalid_request_error", ("invalid_request_error", "unsupported_value"), "INVALID_ARGUMENT",
                   "This model does not support the requested parameter."),
    "unauthorized": (401, "authentication_error", ("invalid_request_error", "invalid_api_key"), "UNAUTHENTICATED", "invalid x-api-key"),
}


def _words(seed: str, count: int) -> str:
    rng = random.Random(seed)
    return " " + " ".join(rng.choice(WORDS) for _ in range(count))


class FakeProviderServer:
    """See the module docstring. Thread-safe; start() binds an ephemeral port unless given one."""

    def __init__(self, *, port: int = 0, latency_s: float = 0.0, rate_429: float = 0.0, retry_after_ms: float = 100.0,
                 valid_keys: set[str] | None = None, seed: int = 0, min_cache_tokens: int = 1024,
                 responder: Callable[[str, Any, int], str | None] | None = None) -> None:
        self.port = port
        self.latency_s = latency_s
        self.rate_429 = rate_429
        self.retry_after_ms = retry_after_ms
        self.valid_keys = valid_keys
        self.min_cache_tokens = min_cache_tokens
        self.responder = responder
        self.faults: deque[Fault] = deque()
        self.log: list[Recorded] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._cache: set[str] = set()
        self._counter = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeProviderServer":
        server = self

        class Handler(_Handler):
            fake = server

        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        httpd.daemon_threads = True
        httpd.block_on_close = False
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._thread = threading.Thread(target=httpd.serve_forever, name="fake-providers", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "FakeProviderServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """Environment variables that point every SDK here (with test keys)."""
        return {"ANTHROPIC_BASE_URL": self.url, "ANTHROPIC_API_KEY": "sk-ant-test",
                "OPENAI_BASE_URL": self.url + "/v1", "OPENAI_API_KEY": "sk-openai-test",
                "GOOGLE_GEMINI_BASE_URL": self.url, "GEMINI_API_KEY": "gemini-test"}

    # --- scripting ---------------------------------------------------------------------------
    def push(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def requests(self, route: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self.log if route is None or r.route == route]

    def _next_fault(self, route: str) -> Fault | None:
        with self._lock:
            for i, f in enumerate(self.faults):
                if f.route is None or f.route == route:
                    del self.faults[i]
                    return f
            if self.rate_429 and self._rng.random() < self.rate_429:
                return Fault("rate_limit", retry_after_ms=self.retry_after_ms)
            return None

    def _seed(self, body: Any, i: int) -> str:
        with self._lock:
            self._counter += 1
            c = self._counter
        return hashlib.sha256(f"{json.dumps(body, sort_keys=True)}|{i}|{c}".encode()).hexdigest()

    def _text(self, route: str, body: Any, i: int, max_tokens: int) -> tuple[str, str, int]:
        """(text, finish, output tokens): the responder's text or seeded words."""
        text = self.responder(route, body, i) if self.responder else None
        if text is None:
            n = max(1, min(max_tokens, 6 + int(self._seed(body, i)[:2], 16) % 12))
            return _words(self._seed(body, i), n), ("length" if n >= max_tokens else "stop"), n
        toks = max(1, len(text.split()))
        return text, "stop", toks


def _camel(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {"".join(w if i == 0 else w[:1].upper() + w[1:] for i, w in enumerate(k.split("_"))): _camel(v) for k, v in obj.items()}
    return obj


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _blocks_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content if isinstance(b, dict))


class _Handler(BaseHTTPRequestHandler):
    fake: FakeProviderServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    # --- plumbing ----------------------------------------------------------------------------
    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _route(self) -> tuple[str, str] | None:
        path = self.path.split("?")[0]
        if path == "/v1/messages":
            return "anthropic", ""
        if path == "/v1/chat/completions":
            return "chat", ""
        if path == "/v1/completions":
            return "completions", ""
        if path.startswith("/v1beta/models/") and path.endswith(":generateContent"):
            return "gemini", path[len("/v1beta/models/"):-len(":generateContent")]
        return None

    def _key(self, route: str) -> str | None:
        h = self.headers
        if route == "anthropic":
            return h.get("x-api-key")
        if route == "gemini":
            return h.get("x-goog-api-key")
        auth = h.get("authorization") or ""
        return auth[7:] if auth.lower().startswith("bearer ") else None

    def do_POST(self) -> None:  # noqa: N802
        fake = self.fake
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        found = self._route()
        if found is None:
            return self._send(404, {"error": {"message": f"no route {self.path}"}})
        route, gem_model = found
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return self._send(400, {"error": {"message": "request body is not JSON"}})
        rec = Recorded(route, self.path, gem_model or body.get("model", ""), body,
                       {k.lower(): v for k, v in self.headers.items()}, t=time.monotonic())
        with fake._lock:
            fake.log.append(rec)
        if fake.latency_s:
            time.sleep(fake.latency_s)
        if fake.valid_keys is not None and self._key(route) not in fake.valid_keys:
            rec.status = 401
            return self._error(route, "unauthorized", Fault("unauthorized"))
        fault = fake._next_fault(route)
        if fault is not None:
            if fault.kind == "timeout":
                time.sleep(fault.delay_s)
            elif fault.kind == "malformed":
                rec.status = 200
                return self._send(200, None, raw=b'{"id": "x", "choices": [ {"broken')
            elif fault.kind in ERROR_SPEC:
                rec.status = ERROR_SPEC[fault.kind][0]
                return self._error(route, fault.kind, fault)
        handler = {"anthropic": self._anthropic, "chat": self._chat, "completions": self._completions, "gemini": self._gemini}[route]
        rec.status = 200
        handler(body, rec, fault)

    def _error(self, route: str, kind: str, fault: Fault) -> None:
        status, a_type, (o_type, o_code), g_status, msg = ERROR_SPEC[kind]
        if route == "gemini" and kind == "overloaded":
            status = 503
        if route != "anthropic" and kind == "overloaded":
            status = 503
        rid = "req_" + uuid.uuid4().hex[:16]
        headers = {"request-id": rid, "x-request-id": rid}  # Anthropic's and OpenAI's names for it
        if fault.retry_after is not None:
            headers["retry-after"] = f"{fault.retry_after:g}"
        if fault.retry_after_ms is not None:
            headers["retry-after-ms"] = f"{fault.retry_after_ms:g}"
        if route == "anthropic":
            payload: Any = {"type": "error", "error": {"type": a_type, "message": msg}}
        elif route == "gemini":
            payload = {"error": {"code": status, "message": msg, "status": g_status}}
            if kind == "rate_limit" and fault.retry_after is not None:
                # Gemini tells the wait in the body (google.rpc.RetryInfo), not in a header
                headers.pop("retry-after", None)
                payload["error"]["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                                "retryDelay": f"{fault.retry_after:g}s"}]
            if kind == "quota":
                payload["error"]["details"] = [{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                                                "violations": [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]}]
        else:
            payload = {"error": {"message": msg, "type": o_type, "code": o_code, "param": None}}
        self._send(status, payload, headers)

    def _reject(self, route: str, message: str) -> None:
        if route == "anthropic":
            return self._send(400, {"type": "error", "error": {"type": "invalid_request_error", "message": message}})
        self._send(400, {"error": {"message": message, "type": "invalid_request_error", "code": "unsupported_value", "param": None}})

    # --- Anthropic -----------------------------------------------------------------------------
    def _anthropic(self, body: dict, rec: Recorded, fault: Fault | None) -> None:
        fake, model, msgs = self.fake, body.get("model", ""), body.get("messages", [])
        if "temperature" in body and any(fnmatch.fnmatchcase(model, p) for p in PREFILL_REJECTING):
            rec.status = 400
            return self._reject("anthropic", "temperature: this model does not accept sampling parameters")
        if msgs and msgs[-1].get("role") == "assistant":
            last = _blocks_text(msgs[-1].get("content", ""))
            if any(fnmatch.fnmatchcase(model, p) for p in PREFILL_REJECTING):
                rec.status = 400
                return self._reject("anthropic", "This model does not support assistant message prefill. "
                                    "The conversation must end with a user message.")
            if last != last.rstrip():
                rec.status = 400
                return self._reject("anthropic", "messages: final assistant content cannot end with trailing whitespace")
        system = body.get("system") or ""
        prompt = (system if isinstance(system, str) else _blocks_text(system)) + "".join(_blocks_text(m.get("content", "")) for m in msgs)
        p_tok = _tokens(prompt)
        cached = any(isinstance(m.get("content"), list) and any("cache_control" in b for b in m["content"]) for m in msgs)
        usage = {"input_tokens": p_tok, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        if cached and p_tok >= fake.min_cache_tokens:
            key = hashlib.sha256(json.dumps([model, system, msgs], sort_keys=True).encode()).hexdigest()
            with fake._lock:
                hit = key in fake._cache
                fake._cache.add(key)
            usage = {"input_tokens": 0, "cache_creation_input_tokens": 0 if hit else p_tok, "cache_read_input_tokens": p_tok if hit else 0}
        if fault is not None and fault.kind == "no_choices":
            content, out_tok, stop = [], 0, "end_turn"
        elif fault is not None and fault.kind == "empty":
            content, out_tok, stop = [{"type": "text", "text": ""}], 0, "end_turn"
        else:
            text, finish, out_tok = fake._text("anthropic", body, 0, int(body.get("max_tokens", 16)))
            content, stop = [{"type": "text", "text": text}], ("max_tokens" if finish == "length" else "end_turn")
        usage["output_tokens"] = out_tok
        self._send(200, {"id": "msg_" + uuid.uuid4().hex[:12], "type": "message", "role": "assistant", "model": model,
                         "content": content, "stop_reason": stop, "stop_sequence": None, "usage": usage})

    # --- OpenAI ----------------------------------------------------------------------------------
    def _openai_checks(self, body: dict, rec: Recorded) -> bool:
        model = body.get("model", "")
        t = body.get("temperature")
        if t is not None and t != 1 and any(fnmatch.fnmatchcase(model, p) for p in NO_TEMPERATURE):
            rec.status = 400
            self._reject("chat", f"Unsupported value: 'temperature' does not support {t} with this model. Only the default (1) value is supported.")
            return False
        return True

    def _openai_choices(self, route: str, body: dict, fault: Fault | None, make: Callable[[int, str, str], dict]) -> tuple[list, int]:
        if fault is not None and fault.kind == "no_choices":
            return [], 0
        n = int(body.get("n") or 1)
        max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
        choices, out = [], 0
        for i in range(n):
            if fault is not None and fault.kind == "empty":
                text, finish, toks = "", "stop", 0
            else:
                text, finish, toks = self.fake._text(route, body, i, max_tokens)
            choices.append(make(i, text, finish))
            out += toks
        return choices, out

    def _chat(self, body: dict, rec: Recorded, fault: Fault | None) -> None:
        if not self._openai_checks(body, rec):
            return
        prompt = "".join(m.get("content") or "" for m in body.get("messages", []))
        choices, out = self._openai_choices("chat", body, fault, lambda i, t, f: {
            "index": i, "message": {"role": "assistant", "content": t}, "finish_reason": f, "logprobs": None})
        p = _tokens(prompt)
        self._send(200, {"id": "chatcmpl-" + uuid.uuid4().hex[:12], "object": "chat.completion", "created": int(time.time()),
                         "model": body.get("model", ""), "choices": choices,
                         "usage": {"prompt_tokens": p, "completion_tokens": out, "total_tokens": p + out}})

    def _completions(self, body: dict, rec: Recorded, fault: Fault | None) -> None:
        if not self._openai_checks(body, rec):
            return
        choices, out = self._openai_choices("completions", body, fault, lambda i, t, f: {
            "index": i, "text": t, "finish_reason": f, "logprobs": None})
        p = _tokens(str(body.get("prompt", "")))
        self._send(200, {"id": "cmpl-" + uuid.uuid4().hex[:12], "object": "text_completion", "created": int(time.time()),
                         "model": body.get("model", ""), "choices": choices,
                         "usage": {"prompt_tokens": p, "completion_tokens": out, "total_tokens": p + out}})

    # --- Gemini ----------------------------------------------------------------------------------
    def _gemini(self, body: dict, rec: Recorded, fault: Fault | None) -> None:
        cfg = body.get("generationConfig") or {}
        # Proto JSON: the real API accepts snake_case and lowerCamelCase names alike (the SDK
        # sends nested config fields in snake_case), so normalise to camelCase.
        cfg = _camel(cfg)
        body["generationConfig"] = cfg
        prompt = "".join(p.get("text", "") for c in body.get("contents", []) for p in c.get("parts", []))
        prompt += "".join(p.get("text", "") for p in (body.get("systemInstruction") or {}).get("parts", []))
        n = int(cfg.get("candidateCount") or 1)
        max_tokens = int(cfg.get("maxOutputTokens") or 16)
        cands, out = [], 0
        if not (fault is not None and fault.kind == "no_choices"):
            for i in range(n):
                if fault is not None and fault.kind == "empty":
                    text, finish, toks = "", "STOP", 0
                else:
                    text, f, toks = self.fake._text("gemini", body, i, max_tokens)
                    finish = "MAX_TOKENS" if f == "length" else "STOP"
                cands.append({"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": finish, "index": i})
                out += toks
        p = _tokens(prompt)
        payload: dict[str, Any] = {"candidates": cands, "modelVersion": rec.model, "responseId": uuid.uuid4().hex[:12],
                                   "usageMetadata": {"promptTokenCount": p, "candidatesTokenCount": out, "totalTokenCount": p + out}}
        if not cands:
            payload["promptFeedback"] = {"blockReason": "SAFETY"}
        self._send(200, payload)


try:  # the fixture exists only where pytest does
    import pytest

    @pytest.fixture
    def fake_server():
        """A started FakeProviderServer, stopped after the test."""
        with FakeProviderServer() as srv:
            yield srv
except ImportError:  # pragma: no cover
    pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Fake Anthropic/OpenAI/Gemini server on 127.0.0.1")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    ap.add_argument("--rate-429", type=float, default=0.0, help="probability of an injected 429 per request")
    args = ap.parse_args(argv)
    srv = FakeProviderServer(port=args.port, latency_s=args.latency, rate_429=args.rate_429).start()
    print(f"fake providers listening on {srv.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
