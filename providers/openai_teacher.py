"""OpenAI Chat Completions teacher (`openai:MODEL`).

OpenAI chat models do not continue a trailing assistant turn, so the capability table gives
them the instruction wrapper (samples marked approximate, echoes stripped). `n` returns up to
`caps.max_n` samples per request with the prompt billed once. Reasoning models (gpt-5*) take
no sampling parameters and get `reasoning_effort: minimal`. `max_completion_tokens` bounds the
chunk (newer models reject `max_tokens`). Usage: `prompt_tokens` includes
`prompt_tokens_details.cached_tokens`, which are billed at the cached rate.

`providers/openai_compatible.py` subclasses this for self-hosted servers (raw completion and
`continue_final_message`).
"""

from __future__ import annotations

from typing import Any

from providers.api_teacher import ApiTeacher, CallResult
from providers.base import TeacherRequest
from providers.continuation import SplitPrefix, instruction_messages


class OpenAITeacher(ApiTeacher):
    provider = "openai"
    default_base_url = "https://api.openai.com/v1"
    api_version = "v1"
    max_tokens_field = "max_completion_tokens"

    def _make_client(self) -> Any:
        import openai

        return openai.AsyncOpenAI(api_key=self._api_key, base_url=self.base_url, max_retries=0, timeout=self.timeout_s,
                                  http_client=self.http_client)

    def chat_messages(self, request: TeacherRequest, split: SplitPrefix) -> list[dict[str, str]]:
        """Messages for the chat endpoint in this teacher's continuation mode."""
        if self.caps.continuation == "instruct":
            return [{"role": m.role, "content": m.content} for m in instruction_messages(request.messages, split.sent)]
        msgs = [{"role": m.role, "content": m.content} for m in request.messages]
        if split.sent:
            msgs.append({"role": "assistant", "content": split.sent})
        return msgs

    def chat_body(self, request: TeacherRequest, split: SplitPrefix, k: int) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": self.chat_messages(request, split),
                                self.max_tokens_field: request.max_tokens}
        if k > 1:
            body["n"] = k
        if request.stop:
            body["stop"] = list(request.stop)
        if self.caps.thinking == "minimal":
            body["reasoning_effort"] = "minimal"
        body.update(self._temperature(request))
        return body

    async def _call(self, request: TeacherRequest, split: SplitPrefix, k: int) -> CallResult:
        resp = await self._client().chat.completions.create(**self.chat_body(request, split, k))
        texts = [((c.message.content or "") if c.message else "", c.finish_reason or "stop") for c in (resp.choices or [])]
        return self._result(resp, texts)

    @staticmethod
    def _result(resp: Any, texts: list[tuple[str, str]]) -> CallResult:
        u = resp.usage
        prompt = float(getattr(u, "prompt_tokens", 0) or 0) if u else 0.0
        details = getattr(u, "prompt_tokens_details", None) if u else None
        cached = float(getattr(details, "cached_tokens", 0) or 0) if details else 0.0
        return CallResult(
            texts=texts,
            input_tokens=prompt - cached,
            output_tokens=float(getattr(u, "completion_tokens", 0) or 0) if u else 0.0,
            cache_read_tokens=cached,
            model=getattr(resp, "model", "") or "",
            request_id=getattr(resp, "id", "") or "",
        )
