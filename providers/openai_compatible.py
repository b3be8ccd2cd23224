"""OpenAI-compatible server teacher (`openai-compatible:MODEL --teacher-base-url URL`).

For vLLM, SGLang, llama.cpp's server, llama-cpp-python's server and the like. Three modes:

- `raw` (best; chosen when the server model's chat template is known, `--teacher-template`):
  the conversation plus the stripped prefix as an assistant turn is rendered locally with
  `continue_final_message=True` and sent to `/v1/completions` — the server continues the exact
  text, token for token. Checked against llama-cpp-python 0.3.36.
- `continue_final`: the chat endpoint with `continue_final_message: true,
  add_generation_prompt: false` (vLLM, SGLang, llama.cpp's own server honour it;
  llama-cpp-python ignores it and opens a new turn, so this is never assumed).
- `instruct`: the instruction wrapper on the chat endpoint (works everywhere; approximate).

Nothing about the server is assumed beyond the wire format: `n` defaults to 1 per request
(llama-cpp-python returns one choice for n > 1; the base class also lowers `n` by itself when
a server answers with fewer choices). Self-hosted servers have no prices: cost is 0.
"""

from __future__ import annotations

from typing import Any

from providers.api_teacher import CallResult, template_hash
from providers.base import TeacherRequest
from providers.continuation import SplitPrefix
from providers.openai_teacher import OpenAITeacher


class OpenAICompatibleTeacher(OpenAITeacher):
    provider = "openai-compatible"
    default_base_url = ""
    api_version = "v1"
    max_tokens_field = "max_tokens"

    def __init__(self, model: str, *, tokenizer: Any = None, **kw: Any) -> None:
        super().__init__(model, **kw)
        self.tokenizer = tokenizer  # anything with `apply_chat_template` and `chat_template`
        if self.caps.continuation == "raw" and tokenizer is None:
            from omniopd.errors import ConfigError

            raise ConfigError("teacher: raw continuation needs the server model's chat template; "
                              "pass --teacher-template PATH_OR_ID (a tokenizer directory, .gguf file or 'smollm2')")

    def _make_client(self) -> Any:
        import openai

        # Local servers usually need no key; the SDK insists on one, so send a placeholder.
        return openai.AsyncOpenAI(api_key=self._api_key or "no-key", base_url=self.base_url, max_retries=0, timeout=self.timeout_s,
                                  http_client=self.http_client)

    def _template_hash(self) -> str | None:
        return template_hash(getattr(self.tokenizer, "chat_template", None)) if self.tokenizer is not None else None

    def render(self, request: TeacherRequest, split: SplitPrefix) -> str:
        """The raw completion prompt: chat template + the stripped prefix, left open."""
        msgs = [{"role": m.role, "content": m.content} for m in request.messages]
        if split.sent:
            msgs.append({"role": "assistant", "content": split.sent})
            return self.tokenizer.apply_chat_template(msgs, tokenize=False, continue_final_message=True)
        return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    def chat_body(self, request: TeacherRequest, split: SplitPrefix, k: int) -> dict[str, Any]:
        body = super().chat_body(request, split, k)
        if self.caps.continuation == "continue_final" and split.sent:
            body["extra_body"] = {"continue_final_message": True, "add_generation_prompt": False}
        return body

    async def _call(self, request: TeacherRequest, split: SplitPrefix, k: int) -> CallResult:
        if self.caps.continuation != "raw":
            return await super()._call(request, split, k)
        body: dict[str, Any] = {"model": self.model, "prompt": self.render(request, split), "max_tokens": request.max_tokens}
        if k > 1:
            body["n"] = k
        if request.stop:
            body["stop"] = list(request.stop)
        body.update(self._temperature(request))
        resp = await self._client().completions.create(**body)
        texts = [(c.text or "", c.finish_reason or "stop") for c in (resp.choices or [])]
        return self._result(resp, texts)
