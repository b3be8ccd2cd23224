"""Gemini API teacher (`gemini:MODEL`) on google-genai's async client.

- Continuation: `prefill` for Gemini 2.5 Flash/Flash-Lite (the stripped prefix as a trailing
  `model` turn, with `thinkingBudget: 0` — with thinking on, the model starts a new answer),
  `instruct` for 2.5 Pro and Gemini 3 (per the capability table).
- `candidate_count` returns up to `caps.max_n` samples with the prompt billed once.
- google-genai gets no `retry_options`, which means one attempt (its tenacity stop is
  `stop_after_attempt(1)`), and an explicit httpx client path (aiohttp is not used), so
  nothing retries inside the SDK. The timeout is given in milliseconds, as the SDK expects.
- Usage: `prompt_token_count` includes `cached_content_token_count`; thinking tokens
  (`thoughts_token_count`) are billed as output.
"""

from __future__ import annotations

from typing import Any

from providers.api_teacher import ApiTeacher, CallResult
from providers.base import TeacherRequest
from providers.continuation import SplitPrefix, instruction_messages
from providers.retry import MalformedResponse


class GeminiTeacher(ApiTeacher):
    provider = "gemini"
    default_base_url = "https://generativelanguage.googleapis.com"
    api_version = "v1beta"

    def _make_client(self) -> Any:
        from google import genai
        from google.genai import types

        opts = types.HttpOptions(base_url=self.base_url, timeout=int(self.timeout_s * 1000), api_version=self.api_version,
                                 httpx_async_client=self.http_client)
        return genai.Client(api_key=self._api_key, http_options=opts)

    async def _close_client(self, client: Any) -> None:
        await client.aio.aclose()
        client.close()

    def build_request(self, request: TeacherRequest, split: SplitPrefix, k: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """(contents, config) for generate_content (pure; tests inspect it)."""
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        convo = tuple(m for m in request.messages if m.role != "system")
        if self.caps.continuation == "instruct":
            convo = instruction_messages(convo, split.sent)
        contents = [{"role": "model" if m.role == "assistant" else "user", "parts": [{"text": m.content}]} for m in convo]
        if self.caps.continuation == "prefill" and split.sent:
            contents.append({"role": "model", "parts": [{"text": split.sent}]})
        config: dict[str, Any] = {"max_output_tokens": request.max_tokens}
        if k > 1:
            config["candidate_count"] = k
        if system:
            config["system_instruction"] = system
        if request.stop:
            config["stop_sequences"] = list(request.stop)
        if self.caps.thinking == "budget0":
            config["thinking_config"] = {"thinking_budget": 0}
        elif self.caps.thinking == "low":
            config["thinking_config"] = {"thinking_level": "LOW"}
        config.update(self._temperature(request))
        return contents, config

    async def _call(self, request: TeacherRequest, split: SplitPrefix, k: int) -> CallResult:
        from google.genai import types

        contents, config = self.build_request(request, split, k)
        cfg = types.GenerateContentConfig(**config, automatic_function_calling={"disable": True})
        resp = await self._client().aio.models.generate_content(model=self.model, contents=contents, config=cfg)
        return self.parse_response(resp)

    def parse_response(self, resp: Any) -> CallResult:
        """A generateContent answer (live, or one inlined response of a batch) -> its `CallResult`."""
        texts = []
        for cand in resp.candidates or []:
            parts = (cand.content.parts if cand.content else None) or []
            text = "".join(p.text or "" for p in parts if not getattr(p, "thought", False))
            finish = cand.finish_reason.value if cand.finish_reason is not None else "STOP"
            texts.append((text, str(finish)))
        u = resp.usage_metadata
        if u is None and texts:
            raise MalformedResponse("generateContent answered without usageMetadata")
        prompt = float(u.prompt_token_count or 0) if u else 0.0
        cached = float(u.cached_content_token_count or 0) if u else 0.0
        out = float((u.candidates_token_count or 0) + (u.thoughts_token_count or 0)) if u else 0.0
        return CallResult(texts=texts, input_tokens=prompt - cached, output_tokens=out, cache_read_tokens=cached,
                          model=resp.model_version or self.model, request_id=resp.response_id or "",
                          answer_tokens=float(u.candidates_token_count or 0) if u else None)
