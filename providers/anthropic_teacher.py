"""Anthropic Messages API teacher (`anthropic:MODEL`, alias `claude-haiku`).

- Continuation: `prefill` (the stripped prefix as a trailing assistant turn: Claude Haiku 4.5)
  or `instruct` (Claude >= 4.6, which answers prefill with a 400), per the capability table.
- No sampling parameters: current API versions reject `temperature` (the SDK no longer has
  the argument); only a table row with `accepts_temperature` sends it, through `extra_body`.
- No `n`: N samples are N requests. When the prompt reaches the model's minimum cacheable
  length, the last block carries `cache_control: ephemeral` and the first request runs alone,
  so the other N-1 read the cache it wrote (billed at 0.1x instead of 1x).
- The SDK's own retries are off (`max_retries=0`); `providers/retry.py` owns retries.
"""

from __future__ import annotations

from typing import Any

from providers.api_teacher import ApiTeacher, CallResult
from providers.base import TeacherRequest
from providers.continuation import SplitPrefix, instruction_messages


class AnthropicTeacher(ApiTeacher):
    provider = "anthropic"
    default_base_url = "https://api.anthropic.com"

    @property
    def api_version(self) -> str:  # type: ignore[override]
        """The `anthropic-version` header the installed SDK sends (it changes what the API accepts)."""
        from anthropic._client import ANTHROPIC_API_VERSION

        return ANTHROPIC_API_VERSION

    def _make_client(self) -> Any:
        import anthropic

        return anthropic.AsyncAnthropic(api_key=self._api_key, base_url=self.base_url, max_retries=0, timeout=self.timeout_s,
                                        http_client=self.http_client)

    def _est_prompt_tokens(self, request: TeacherRequest) -> float:
        return (sum(len(m.content) for m in request.messages) + len(request.prefix)) / 3.5

    def _warm_cache_first(self, request: TeacherRequest, split: SplitPrefix) -> bool:
        m = self.caps.min_cache_tokens
        return m is not None and self._est_prompt_tokens(request) >= m

    def build_body(self, request: TeacherRequest, split: SplitPrefix, cache: bool) -> dict[str, Any]:
        """The Messages API arguments for one sample (pure; tests inspect it)."""
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        convo = tuple(m for m in request.messages if m.role != "system")
        if self.caps.continuation == "instruct":
            convo = instruction_messages(convo, split.sent)
        messages: list[dict[str, Any]] = [{"role": m.role, "content": m.content} for m in convo]
        if self.caps.continuation == "prefill" and split.sent:
            messages.append({"role": "assistant", "content": split.sent})
        if cache:
            last = messages[-1]
            last["content"] = [{"type": "text", "text": last["content"], "cache_control": {"type": "ephemeral"}}]
        body: dict[str, Any] = {"model": self.model, "max_tokens": request.max_tokens, "messages": messages}
        if system:
            body["system"] = system
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        extra = self._temperature(request)
        if extra:
            body["extra_body"] = extra
        return body

    async def _call(self, request: TeacherRequest, split: SplitPrefix, k: int) -> CallResult:
        assert k == 1, "the Messages API returns one sample per request"
        body = self.build_body(request, split, cache=request.n > 1 and self._warm_cache_first(request, split))
        return self.parse_message(await self._client().messages.create(**body))

    def parse_message(self, resp: Any) -> CallResult:
        """A Messages API answer (live, or one result of a Message Batch) -> its `CallResult`."""
        text = "".join(getattr(b, "text", "") for b in (resp.content or []) if getattr(b, "type", "") == "text")
        u = resp.usage
        return CallResult(
            texts=[(text, resp.stop_reason or "stop")],
            input_tokens=float(u.input_tokens or 0),
            output_tokens=float(u.output_tokens or 0),
            cache_read_tokens=float(getattr(u, "cache_read_input_tokens", 0) or 0),
            cache_write_tokens=float(getattr(u, "cache_creation_input_tokens", 0) or 0),
            model=resp.model or self.model,
            request_id=getattr(resp, "id", "") or "",
        )
