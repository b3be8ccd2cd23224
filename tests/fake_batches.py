"""A real HTTP server on 127.0.0.1 that speaks the three providers' batch APIs, for tests.

Routes (what the installed SDKs call):
- Anthropic Message Batches: `POST /v1/messages/batches`, `GET /v1/messages/batches/{id}`,
  `POST /v1/messages/batches/{id}/cancel`, `GET /v1/messages/batches/{id}/results` (JSONL);
- OpenAI: `POST /v1/files` (multipart, purpose=batch), `GET /v1/files/{id}/content`,
  `POST /v1/batches`, `GET /v1/batches/{id}`, `POST /v1/batches/{id}/cancel`;
- Gemini (google-genai, inline requests): `POST /v1beta/models/{model}:batchGenerateContent`,
  `GET /v1beta/batches/{id}`, `POST /v1beta/batches/{id}:cancel`.

A batch ends on the `end_after_polls`-th status request after its creation (or never while
`hold` is set, until `release()`); `outcome(provider, custom_id)` scripts each item: "ok",
"error" (a per-item 400), or "expired"; `expire_batches` ends every batch as expired. A
cancelled batch ends at its next poll with its items canceled. Answers are seeded words with
usage (prompt tokens = characters / 4, output tokens = words), so costs are checkable. Every
request is logged (`log`: (method, path)); `created(provider)` counts batch creations.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

WORDS = ("so", "we", "add", "two", "and", "three", "to", "get", "five", "the", "answer", "is")


@dataclass
class FakeBatch:
    provider: str
    id: str
    items: list[tuple[str, dict]]  # (custom_id, request body)
    model: str = ""
    tag: str = ""
    polls: int = 0
    state: str = "in_progress"  # in_progress, canceling, ended
    fate: str = "completed"  # completed, expired, cancelled
    created: float = field(default_factory=time.time)
    fates: dict[str, str] = field(default_factory=dict)  # each item's outcome, decided once


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _answer(custom_id: str, body: Any, i: int, max_tokens: int) -> tuple[str, int]:
    seed = hashlib.sha256(f"{custom_id}|{json.dumps(body, sort_keys=True)}|{i}".encode()).digest()
    n = max(1, min(max_tokens, 3 + seed[0] % 6))
    return " ".join(WORDS[b % len(WORDS)] for b in seed[1:1 + n]), n


class FakeBatchServer:
    """See the module docstring. `with FakeBatchServer() as srv:`; `srv.env()` points every SDK here."""

    def __init__(self, *, end_after_polls: int = 1, hold: bool = False,
                 outcome: Callable[[str, str], str] | None = None, expire_batches: bool = False,
                 responder: Callable[[str, Any, int], str | None] | None = None, live: Any = None,
                 create_faults: list[str] | None = None, valid_keys: set[str] | None = None) -> None:
        self.end_after_polls = end_after_polls
        self.hold = hold
        self.outcome = outcome or (lambda provider, cid: "ok")
        self.expire_batches = expire_batches
        self.responder = responder  # (provider, request body, index) -> answer text; None = seeded words
        self.live = live  # a started tests.fake_providers.FakeProviderServer: live routes are forwarded to it
        # consumed one per create call: "error" answers 500 and creates nothing; "lost" creates the
        # batch, then answers 500 (the response was lost: the client cannot know it exists)
        self.create_faults = list(create_faults or [])
        self.valid_keys = valid_keys  # None: any key; else a request with another key gets a 401
        self.batches: dict[str, FakeBatch] = {}
        self.files: dict[str, bytes] = {}
        self.log: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.polled = threading.Event()  # set at the first status request of any batch
        self._httpd: ThreadingHTTPServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {"ANTHROPIC_BASE_URL": self.url, "ANTHROPIC_API_KEY": "sk-ant-test",
                "OPENAI_BASE_URL": self.url + "/v1", "OPENAI_API_KEY": "sk-openai-test",
                "GOOGLE_GEMINI_BASE_URL": self.url, "GEMINI_API_KEY": "gemini-test"}

    def start(self) -> "FakeBatchServer":
        server = self

        class Handler(_Handler):
            fake = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> "FakeBatchServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def release(self) -> None:
        """Let held batches end at their next poll."""
        self.hold = False

    def created(self, provider: str | None = None) -> int:
        with self.lock:
            return sum(1 for b in self.batches.values() if provider is None or b.provider == provider)

    def requests(self, method: str, path_re: str) -> list[str]:
        with self.lock:
            return [p for m, p in self.log if m == method and re.search(path_re, p)]

    # --- the batch life cycle -----------------------------------------------------------------
    def create_fault(self) -> str | None:
        with self.lock:
            return self.create_faults.pop(0) if self.create_faults else None

    def new(self, provider: str, items: list[tuple[str, dict]], model: str = "", tag: str = "") -> FakeBatch:
        prefix = {"anthropic": "msgbatch_", "openai": "batch_", "gemini": "batches/"}[provider]
        b = FakeBatch(provider, prefix + uuid.uuid4().hex[:16], items, model, tag)
        with self.lock:
            self.batches[b.id] = b
        return b

    def poll(self, batch_id: str) -> FakeBatch | None:
        with self.lock:
            b = self.batches.get(batch_id)
            if b is None:
                return None
            b.polls += 1
            if b.state == "canceling":
                b.state, b.fate = "ended", "cancelled"
            elif b.state == "in_progress" and not self.hold and b.polls >= self.end_after_polls:
                b.state, b.fate = "ended", "expired" if self.expire_batches else "completed"
        self.polled.set()
        return b

    def cancel(self, batch_id: str) -> FakeBatch | None:
        with self.lock:
            b = self.batches.get(batch_id)
            if b is not None and b.state == "in_progress":
                b.state = "canceling"
        return b

    def answer(self, provider: str, cid: str, body: Any, i: int, max_tokens: int) -> tuple[str, int]:
        """(text, output tokens) of one sample: the responder's text (tokens = words) or seeded words."""
        text = self.responder(provider, body, i) if self.responder else None
        if text is None:
            return _answer(cid, body, i, max_tokens)
        return text, max(1, len(text.split()))

    def item_fate(self, b: FakeBatch, cid: str) -> str:
        """ok, error, expired or canceled for one item of an ended batch."""
        if b.fate == "cancelled":
            return "canceled"
        if b.fate == "expired":
            return "expired"
        with self.lock:
            if cid not in b.fates:
                b.fates[cid] = self.outcome(b.provider, cid)
            return b.fates[cid]


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(c.get("text", "") for c in content or [] if isinstance(c, dict))


class _Handler(BaseHTTPRequestHandler):
    fake: FakeBatchServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, payload: Any = None, raw: bytes | None = None, ctype: str = "application/json") -> None:
        data = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", "req_" + uuid.uuid4().hex[:12])
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n) if n else b""

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?")[0]
        raw = self._body() if method == "POST" else b""
        with self.fake.lock:
            self.fake.log.append((method, path))
        if self.fake.valid_keys is not None and self._key() not in self.fake.valid_keys:
            return self._send(401, {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}})
        for pattern, handler in ROUTES.get(method, ()):
            m = re.fullmatch(pattern, path)
            if m:
                return handler(self, raw, *m.groups())
        if self.fake.live is not None:
            return self._forward(method, raw)
        self._send(404, {"error": {"message": f"no route {method} {path}"}})

    def _forward(self, method: str, raw: bytes) -> None:
        """A live API request (messages, chat, generateContent): answered by the live fake server."""
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.fake.live.port, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        conn.request(method, self.path, body=raw, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("content-length", "connection", "transfer-encoding", "date", "server"):
                self.send_header(k, v)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        conn.close()

    def _key(self) -> str | None:
        h = self.headers
        auth = h.get("authorization") or ""
        return h.get("x-api-key") or h.get("x-goog-api-key") or (auth[7:] if auth.lower().startswith("bearer ") else None)

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    # --- Anthropic ------------------------------------------------------------------------------
    def _a_batch(self, b: FakeBatch) -> dict:
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        for cid, _ in b.items:
            if b.state != "ended":
                counts["processing"] += 1
            else:
                fate = self.fake.item_fate(b, cid)
                counts[{"ok": "succeeded", "error": "errored"}.get(fate, fate)] += 1
        return {"id": b.id, "type": "message_batch", "processing_status": b.state, "request_counts": counts,
                "created_at": _iso(b.created), "expires_at": _iso(b.created + 86400),
                "ended_at": _iso(time.time()) if b.state == "ended" else None, "archived_at": None,
                "cancel_initiated_at": None,
                "results_url": f"{self.fake.url}/v1/messages/batches/{b.id}/results" if b.state == "ended" else None}

    def _faulted(self, fault: str | None) -> bool:
        if fault is not None:
            self._send(500, {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}})
        return fault is not None

    def a_create(self, raw: bytes) -> None:
        fault = self.fake.create_fault()
        if fault == "error":
            self._faulted(fault)
            return
        reqs = json.loads(raw)["requests"]
        b = self.fake.new("anthropic", [(r["custom_id"], r["params"]) for r in reqs], reqs[0]["params"]["model"] if reqs else "")
        if not self._faulted(fault):
            self._send(200, self._a_batch(b))

    def _listed(self, provider: str) -> list[FakeBatch]:
        with self.fake.lock:
            return sorted((b for b in self.fake.batches.values() if b.provider == provider), key=lambda b: -b.created)

    def a_list(self, raw: bytes) -> None:
        data = [self._a_batch(b) for b in self._listed("anthropic")]
        self._send(200, {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                         "last_id": data[-1]["id"] if data else None})

    def o_list(self, raw: bytes) -> None:
        self._send(200, {"object": "list", "data": [self._o_batch(b) for b in self._listed("openai")], "has_more": False})

    def g_list(self, raw: bytes) -> None:
        self._send(200, {"operations": [self._g_job(b) for b in self._listed("gemini")]})

    def a_get(self, raw: bytes, bid: str) -> None:
        b = self.fake.poll(bid)
        self._send(200, self._a_batch(b)) if b else self._send(404, {"type": "error", "error": {"type": "not_found_error", "message": bid}})

    def a_cancel(self, raw: bytes, bid: str) -> None:
        b = self.fake.cancel(bid)
        self._send(200, self._a_batch(b)) if b else self._send(404, {"type": "error", "error": {"type": "not_found_error", "message": bid}})

    def a_results(self, raw: bytes, bid: str) -> None:
        b = self.fake.batches[bid]
        lines = []
        for cid, params in b.items:
            fate = self.fake.item_fate(b, cid)
            if fate == "ok":
                text, n = self.fake.answer("anthropic", cid, params, 0, int(params.get("max_tokens", 16)))
                prompt = str(params.get("system", "")) + "".join(_text_of(m.get("content")) for m in params.get("messages", []))
                msg = {"id": "msg_" + uuid.uuid4().hex[:12], "type": "message", "role": "assistant", "model": params["model"],
                       "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                       "usage": {"input_tokens": max(1, len(prompt) // 4), "output_tokens": n,
                                 "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}
                result: dict = {"type": "succeeded", "message": msg}
            elif fate == "error":
                result = {"type": "errored", "error": {"type": "error", "error": {"type": "invalid_request_error",
                                                                               "message": "max_tokens: too large"}}}
            else:
                result = {"type": fate}
            lines.append(json.dumps({"custom_id": cid, "result": result}))
        self._send(200, raw=("\n".join(lines) + "\n").encode(), ctype="application/binary")

    # --- OpenAI ---------------------------------------------------------------------------------
    def o_file(self, raw: bytes) -> None:
        boundary = self.headers.get("content-type", "").split("boundary=")[-1].strip('"').encode()
        content = b""
        for part in raw.split(b"--" + boundary):
            if b'name="file"' in part:
                content = part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
        fid = "file-" + uuid.uuid4().hex[:16]
        with self.fake.lock:
            self.fake.files[fid] = content
        self._send(200, {"id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                         "filename": "batch.jsonl", "purpose": "batch", "status": "processed"})

    def _o_batch(self, b: FakeBatch) -> dict:
        total = len(b.items)
        done = failed = 0
        status = {"in_progress": "in_progress", "canceling": "cancelling"}.get(b.state, b.fate)
        if b.state == "ended":
            fates = [self.fake.item_fate(b, cid) for cid, _ in b.items]
            done, failed = fates.count("ok"), fates.count("error")
        out_id = f"file-out-{b.id}" if b.state == "ended" and done else None
        err_id = f"file-err-{b.id}" if b.state == "ended" and (failed or b.fate == "expired") else None
        return {"id": b.id, "object": "batch", "endpoint": "/v1/chat/completions", "input_file_id": "file-in",
                "completion_window": "24h", "status": status, "created_at": int(b.created),
                "request_counts": {"total": total, "completed": done, "failed": failed},
                "metadata": {"omniopd_job": b.tag}, "output_file_id": out_id, "error_file_id": err_id, "errors": None}

    def o_create(self, raw: bytes) -> None:
        fault = self.fake.create_fault()
        if fault == "error":
            self._faulted(fault)
            return
        req = json.loads(raw)
        lines = [json.loads(ln) for ln in self.fake.files[req["input_file_id"]].decode().splitlines() if ln.strip()]
        b = self.fake.new("openai", [(ln["custom_id"], ln["body"]) for ln in lines],
                          lines[0]["body"]["model"] if lines else "", (req.get("metadata") or {}).get("omniopd_job", ""))
        if not self._faulted(fault):
            self._send(200, self._o_batch(b))

    def o_get(self, raw: bytes, bid: str) -> None:
        b = self.fake.poll(bid)
        self._send(200, self._o_batch(b)) if b else self._send(404, {"error": {"message": "no such batch", "type": "invalid_request_error"}})

    def o_cancel(self, raw: bytes, bid: str) -> None:
        b = self.fake.cancel(bid)
        self._send(200, self._o_batch(b)) if b else self._send(404, {"error": {"message": "no such batch"}})

    def o_content(self, raw: bytes, fid: str) -> None:
        kind, _, bid = fid[len("file-"):].partition("-")
        b = self.fake.batches.get(bid)
        if b is None:
            return self._send(404, {"error": {"message": f"no file {fid}"}})
        lines = []
        for cid, body in b.items:
            fate = self.fake.item_fate(b, cid)
            rid = "req_" + uuid.uuid4().hex[:12]
            if kind == "out" and fate == "ok":
                n_choices, choices, out = int(body.get("n") or 1), [], 0
                for i in range(n_choices):
                    text, n = self.fake.answer("openai", cid, body, i, int(body.get("max_completion_tokens") or 16))
                    choices.append({"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"})
                    out += n
                prompt = "".join(m.get("content") or "" for m in body.get("messages", []))
                p = max(1, len(prompt) // 4)
                cc = {"id": "chatcmpl-" + uuid.uuid4().hex[:12], "object": "chat.completion", "created": int(time.time()),
                      "model": body["model"], "choices": choices,
                      "usage": {"prompt_tokens": p, "completion_tokens": out, "total_tokens": p + out}}
                lines.append({"id": "batch_req_" + cid, "custom_id": cid, "response": {"status_code": 200, "request_id": rid, "body": cc},
                              "error": None})
            elif kind == "err" and fate == "error":
                lines.append({"id": "batch_req_" + cid, "custom_id": cid, "response": {
                    "status_code": 400, "request_id": rid,
                    "body": {"error": {"message": "Invalid max_completion_tokens", "type": "invalid_request_error", "code": None}}},
                    "error": None})
            elif kind == "err" and fate == "expired":
                lines.append({"id": "batch_req_" + cid, "custom_id": cid, "response": None,
                              "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}})
        self._send(200, raw="".join(json.dumps(ln) + "\n" for ln in lines).encode(), ctype="application/octet-stream")

    # --- Gemini ---------------------------------------------------------------------------------
    def _g_job(self, b: FakeBatch) -> dict:
        state = {"in_progress": "BATCH_STATE_RUNNING", "canceling": "BATCH_STATE_RUNNING"}.get(b.state) or {
            "completed": "BATCH_STATE_SUCCEEDED", "expired": "BATCH_STATE_EXPIRED", "cancelled": "BATCH_STATE_CANCELLED"}[b.fate]
        meta: dict = {"@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
                      "model": b.model, "displayName": b.tag, "state": state, "createTime": _iso(b.created)}
        if b.state == "ended" and b.fate == "completed":
            responses = []
            for cid, req in b.items:
                fate = self.fake.item_fate(b, cid)
                if fate == "error":
                    responses.append({"error": {"code": 400, "message": "Invalid maxOutputTokens"}, "metadata": {"custom_id": cid}})
                    continue
                cfg = req.get("generationConfig") or {}
                k = int(cfg.get("candidateCount") or cfg.get("candidate_count") or 1)
                mx = int(cfg.get("maxOutputTokens") or cfg.get("max_output_tokens") or 16)
                cands, out = [], 0
                for i in range(k):
                    text, n = self.fake.answer("gemini", cid, req, i, mx)
                    cands.append({"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP", "index": i})
                    out += n
                prompt = "".join(p.get("text", "") for c in req.get("contents", []) for p in c.get("parts", []))
                p = max(1, len(prompt) // 4)
                responses.append({"response": {"candidates": cands, "modelVersion": b.model.split("/")[-1],
                                               "responseId": uuid.uuid4().hex[:12],
                                               "usageMetadata": {"promptTokenCount": p, "candidatesTokenCount": out,
                                                                 "totalTokenCount": p + out}},
                                  "metadata": {"custom_id": cid}})
            meta["output"] = {"inlinedResponses": {"inlinedResponses": responses}}
        return {"name": b.id, "metadata": meta, "done": b.state == "ended"}

    def g_create(self, raw: bytes, model: str) -> None:
        fault = self.fake.create_fault()
        if fault == "error":
            self._faulted(fault)
            return
        body = json.loads(raw)["batch"]
        reqs = body["inputConfig"]["requests"]["requests"]
        b = self.fake.new("gemini", [((r.get("metadata") or {}).get("custom_id", str(i)), r["request"]) for i, r in enumerate(reqs)],
                          model, body.get("displayName", ""))
        if not self._faulted(fault):
            self._send(200, self._g_job(b))

    def g_get(self, raw: bytes, bid: str) -> None:
        b = self.fake.poll("batches/" + bid)
        self._send(200, self._g_job(b)) if b else self._send(404, {"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}})

    def g_cancel(self, raw: bytes, bid: str) -> None:
        b = self.fake.cancel("batches/" + bid)
        self._send(200, {}) if b else self._send(404, {"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}})


ROUTES: dict[str, list[tuple[str, Callable[..., None]]]] = {
    "POST": [
        (r"/v1/messages/batches", _Handler.a_create),
        (r"/v1/messages/batches/([^/]+)/cancel", _Handler.a_cancel),
        (r"/v1/files", _Handler.o_file),
        (r"/v1/batches", _Handler.o_create),
        (r"/v1/batches/([^/]+)/cancel", _Handler.o_cancel),
        (r"/v1beta/(models/[^/:]+):batchGenerateContent", _Handler.g_create),
        (r"/v1beta/batches/([^/:]+):cancel", _Handler.g_cancel),
    ],
    "GET": [
        (r"/v1/messages/batches", _Handler.a_list),
        (r"/v1/batches", _Handler.o_list),
        (r"/v1beta/batches", _Handler.g_list),
        (r"/v1/messages/batches/([^/]+)/results", _Handler.a_results),
        (r"/v1/messages/batches/([^/]+)", _Handler.a_get),
        (r"/v1/files/([^/]+)/content", _Handler.o_content),
        (r"/v1/batches/([^/]+)", _Handler.o_get),
        (r"/v1beta/batches/([^/:]+)", _Handler.g_get),
    ],
}
