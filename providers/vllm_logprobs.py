"""White-box scores from an OpenAI-compatible server that returns prompt log-probabilities (vLLM).

vLLM's `/v1/completions` accepts token ids as the prompt and, with the extra request field
`prompt_logprobs=k`, returns for every prompt position the log-probability of the token
actually there plus the k most likely ones (`choices[i].prompt_logprobs`: a list, `null` at
position 0, else `{token_id: {"logprob", "rank", "decoded_token"}}`). Sending prompt +
completion as one id sequence with `max_tokens=1` therefore scores the student's tokens under
the teacher with no text round-trip. The server must run the student's tokenizer (checked
through vLLM's `/tokenize`) and allow the top-k asked for (`vllm serve ... --max-logprobs 64`
for TrOPD's top-64; vLLM's default limit is 20).

Retries: the SDK's are off; `providers.retry.call_with_retries` owns them (the policy every
teacher call uses). The learner calls `token_logprobs` synchronously; the async client runs on
the process's one event loop, handed in as `run` (a blocking "run this coroutine there and
return its result", e.g. `omniopd.event_loop.EventLoop.run`), so its connections stay bound
to one loop for the run's whole life.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import openai
import torch

from omniopd.errors import TeacherAccessError, TeacherCapabilityError, TeacherUnavailableError
from providers.retry import RetryPolicy, call_with_retries
from providers.whitebox import TokenLogprobs


class OpenAICompatPromptLogprobs:
    """`WhiteBoxTeacher` over a vLLM server; `client`/`http`/`policy` are injectable (tests, proxies)."""

    def __init__(self, model: str, base_url: str, *, run: Callable[[Coroutine[Any, Any, Any]], Any],
                 api_key: str | None = None,
                 client: openai.AsyncOpenAI | None = None, http: httpx.Client | None = None, timeout_s: float = 60.0,
                 policy: RetryPolicy | None = None, max_rows: int = 8, spec: str | None = None):
        self.model = model
        self.spec = spec or f"openai-compatible:{model}"
        self.base_url = base_url.rstrip("/")
        # given by the caller (omniopd/teachers.py: OPENAI_COMPATIBLE_API_KEY), never read here and
        # never another provider's; vLLM without --api-key accepts any
        self._key = api_key or "EMPTY"
        self.client = client or openai.AsyncOpenAI(base_url=self.base_url, api_key=self._key, max_retries=0,
                                                   timeout=timeout_s)
        self.http = http or httpx.Client(timeout=timeout_s)
        self.policy = policy or RetryPolicy()
        self.max_rows = max_rows
        self._run = run
        self._closed = False

    # -- tokenizer check ------------------------------------------------------------------
    def check_tokenizer(self, student_tokenizer, probe: str = "Natalia sold 48 clips in April.\n12 * 3 = 36") -> bool:
        """Does the server tokenize a probe text exactly like the student? (vLLM's /tokenize.)"""
        root = self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url
        try:
            r = self.http.post(f"{root}/tokenize", json={"model": self.model, "prompt": probe, "add_special_tokens": False})
        except httpx.HTTPError as exc:
            raise TeacherUnavailableError(f"{self.spec}: cannot reach {root}/tokenize ({type(exc).__name__}); check that "
                                          "the server runs and --teacher-base-url", provider="openai-compatible") from None
        if r.status_code == 404:
            raise TeacherAccessError(
                f"{self.spec}: the server has no /tokenize endpoint, so omniopd cannot check that it shares the "
                "student's tokenizer; white-box methods need a vLLM server (`vllm serve MODEL --max-logprobs 64`)"
            )
        r.raise_for_status()
        return r.json().get("tokens") == student_tokenizer.encode(probe, add_special_tokens=False)

    # -- scoring --------------------------------------------------------------------------
    def token_logprobs(self, prompt_ids_B_Tp, prompt_mask_B_Tp, completion_ids_B_T, completion_mask_B_T, top_k: int = 0) -> TokenLogprobs:
        B, T = completion_ids_B_T.shape
        logp = torch.zeros(B, T)
        tk_lp = torch.zeros(B, T, max(top_k, 1))
        tk_id = torch.zeros(B, T, max(top_k, 1), dtype=torch.long)
        rows = []
        for b in range(B):
            p = prompt_ids_B_Tp[b][prompt_mask_B_Tp[b].bool()].tolist()
            n = int(completion_mask_B_T[b].sum())
            rows.append((p, completion_ids_B_T[b, :n].tolist()))
        for s in range(0, B, self.max_rows):
            chunk = rows[s:s + self.max_rows]
            resp = self._request([p + c for p, c in chunk], top_k)
            choices = sorted(resp.choices, key=lambda ch: ch.index)
            for i, ((p, c), ch) in enumerate(zip(chunk, choices)):
                plp = _prompt_logprobs(ch)
                if plp is None:
                    raise TeacherAccessError(
                        f"{self.spec}: the server ignored prompt_logprobs (not vLLM?); white-box methods need a "
                        "server that returns prompt log-probabilities — use --method omniopd with this teacher"
                    )
                for j, tok in enumerate(c):
                    entry = plp[len(p) + j] or {}
                    if str(tok) not in entry:
                        raise TeacherAccessError(f"{self.spec}: prompt_logprobs lacks the prompt token at position {len(p) + j}")
                    logp[s + i, j] = float(entry[str(tok)]["logprob"])
                    if top_k > 0:
                        best = sorted(((float(v["logprob"]), int(k)) for k, v in entry.items()), reverse=True)[:top_k]
                        if len(best) < top_k:
                            raise TeacherAccessError(f"{self.spec}: asked for top-{top_k} prompt logprobs, got {len(best)}")
                        tk_lp[s + i, j] = torch.tensor([v for v, _ in best])
                        tk_id[s + i, j] = torch.tensor([k for _, k in best])
        dev = completion_ids_B_T.device
        return TokenLogprobs(logp.to(dev), tk_lp.to(dev) if top_k > 0 else None, tk_id.to(dev) if top_k > 0 else None)

    def _request(self, prompts: list[list[int]], top_k: int) -> Any:
        k = max(top_k, 1)

        async def create():
            return await self.client.completions.create(model=self.model, prompt=prompts, max_tokens=1, temperature=1.0,
                                                  extra_body={"prompt_logprobs": k})

        try:
            return self._run(call_with_retries(create, self.policy, what=self.spec, secrets=(self._key,)))
        except TeacherCapabilityError as exc:
            raise TeacherAccessError(
                f"{self.spec}: the server refused prompt_logprobs={k} ({exc}); vLLM caps it at --max-logprobs "
                "(default 20): restart it with `--max-logprobs 64` for TrOPD"
            ) from exc

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._run(self.client.close())
        self.http.close()


def _prompt_logprobs(choice) -> list | None:
    extra = getattr(choice, "model_extra", None) or {}
    return extra.get("prompt_logprobs", getattr(choice, "prompt_logprobs", None))
