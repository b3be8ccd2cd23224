"""A local server speaking OpenAI's `/v1/completions` JSON, and a teacher using the real SDK on it.

For the cache's end-to-end tests (replay with the server stopped; resume after a kill) until
the provider suite's fake servers (issue 3) land: the wire is real (`openai.AsyncOpenAI` over
HTTP to 127.0.0.1), the server logs every request it answered, and it can be told to stop
answering (`hang`), so a run can be killed with requests in flight.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from providers.base import TeacherRequest, TeacherSample

WORDS = ("the answer is 12 so we add 7 plus 5 then multiply by three apples train miles hours first "
         "let us think step by step Tom has and buys more in total").split()


class FakeCompletionsServer:
    """`POST /v1/completions` -> n deterministic continuations; `POST /control` sets `hang_after`."""

    def __init__(self) -> None:
        self.answered: list[dict[str, Any]] = []
        self.hanging = 0
        self.hang_after: int | None = None  # answer this many more requests, then hold the rest
        self._lock = threading.Lock()
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                if self.path.endswith("/control"):
                    with server._lock:
                        server.hang_after = body.get("hang_after")
                    return self._send({"ok": True})
                if not self.path.endswith("/completions"):
                    return self._send({"error": {"message": "not found"}}, 404)
                with server._lock:
                    hold = server.hang_after is not None and server.hang_after <= 0
                    if hold:
                        server.hanging += 1
                    elif server.hang_after is not None:
                        server.hang_after -= 1
                if hold:
                    server._stop.wait()
                    return
                n, max_tokens = int(body.get("n", 1)), int(body.get("max_tokens", 16))
                with server._lock:
                    server.answered.append(body)
                    count = len(server.answered)
                choices = []
                for i in range(n):
                    seed = hashlib.sha256(f"{body['prompt']}|{count}|{i}".encode()).digest()
                    words = [WORDS[b % len(WORDS)] for b in seed[: max(1, min(max_tokens, 12))]]
                    choices.append({"index": i, "text": " " + " ".join(words), "finish_reason": "length", "logprobs": None})
                self._send({
                    "id": f"cmpl-{count}", "object": "text_completion", "created": int(time.time()), "model": body.get("model"),
                    "choices": choices,
                    "usage": {"prompt_tokens": 20, "completion_tokens": 8 * n, "total_tokens": 20 + 8 * n},
                })

            def _send(self, obj, status=200):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FakeCompletionsServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class CompletionsTeacher:
    """A raw-completion teacher over the real `openai` SDK (prompt = messages + prefix as text)."""

    def __init__(self, base_url: str, model: str = "fake-teacher") -> None:
        import openai

        self.spec = f"openai-compatible:{model}"
        self.model = model
        self.base_url = base_url
        self.client = openai.AsyncOpenAI(base_url=base_url, api_key="test-key", max_retries=0, timeout=600)

    def identity(self) -> dict[str, Any]:
        return {"provider": "openai-compatible", "endpoint": self.base_url, "model": self.model, "mode": "raw"}

    async def sample(self, request: TeacherRequest) -> list[TeacherSample]:
        prompt = "".join(f"<{m.role}>{m.content}\n" for m in request.messages) + "<assistant>" + request.prefix
        t0 = time.perf_counter()
        resp = await self.client.completions.create(model=self.model, prompt=prompt, n=request.n,
                                                    max_tokens=request.max_tokens, temperature=request.temperature)
        latency = time.perf_counter() - t0
        n = len(resp.choices)
        return [TeacherSample(text=c.text, finish_reason=c.finish_reason or "stop", input_tokens=resp.usage.prompt_tokens / n,
                              output_tokens=resp.usage.completion_tokens / n, cost_usd=1e-4, model=resp.model or self.model,
                              teacher=self.spec, latency_s=latency) for c in resp.choices]

    async def aclose(self) -> None:
        await self.client.close()
