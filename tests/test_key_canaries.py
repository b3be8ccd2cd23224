"""Each provider's key reaches only that provider: a distinct canary in every key variable.

Every client (the three APIs, an OpenAI-compatible server, the vLLM prompt-logprobs scorer) is
built through `omniopd/teachers.py` from the real environment and talks to its own fake server;
the servers' request logs (headers, path and body) show where each canary went.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from omniopd.config import TeacherConfig
from omniopd.teachers import PROVIDERS, build_api_teacher, build_prompt_logprobs_scorer, key_env_names
from providers.base import Message, TeacherRequest
from tests.fake_providers import FakeProviderServer

CANARIES = {"ANTHROPIC_API_KEY": "canary-anthropic-7f3a", "OPENAI_API_KEY": "canary-openai-91cd",
            "GOOGLE_API_KEY": "canary-google-2b6e", "GEMINI_API_KEY": "canary-gemini-c04d",
            "OPENAI_COMPATIBLE_API_KEY": "canary-compat-55e1"}
OWNER = {"ANTHROPIC_API_KEY": "anthropic", "OPENAI_API_KEY": "openai", "GOOGLE_API_KEY": "gemini",
         "GEMINI_API_KEY": "gemini", "OPENAI_COMPATIBLE_API_KEY": "openai-compatible"}


def _wire(srv: FakeProviderServer) -> str:
    return "\n".join(json.dumps([r.path, r.headers, r.body], default=str) for r in srv.requests())


def _sample(teacher) -> None:
    req = TeacherRequest((Message("user", "What is 2+3?"),), "The answer is", n=1, max_tokens=8)

    async def go():
        try:
            await teacher.sample(req)
        finally:
            await teacher.aclose()

    asyncio.run(go())


@pytest.fixture
def servers():
    srvs = {name: FakeProviderServer().start() for name in ("anthropic", "openai", "gemini", "openai-compatible", "vllm")}
    yield srvs
    for s in srvs.values():
        s.stop()


def _run_every_client(monkeypatch, servers) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", servers["anthropic"].url)
    monkeypatch.setenv("OPENAI_BASE_URL", servers["openai"].url + "/v1")
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", servers["gemini"].url)
    for spec in ("anthropic:claude-haiku-4-5", "openai:gpt-4o-mini", "gemini:gemini-2.5-flash"):
        _sample(build_api_teacher(TeacherConfig(spec=spec, no_fallback=True)))
    compat = TeacherConfig(spec="openai-compatible:qwen", base_url=servers["openai-compatible"].url + "/v1", no_fallback=True)
    _sample(build_api_teacher(compat))
    loop = asyncio.new_event_loop()
    scorer = build_prompt_logprobs_scorer(TeacherConfig(spec="openai-compatible:qwen", base_url=servers["vllm"].url + "/v1"),
                                          run=loop.run_until_complete)
    try:
        scorer._request([[1, 2, 3]], 0)  # one scoring call over the wire
    finally:
        scorer.close()
        loop.close()


def test_each_canary_reaches_only_its_own_provider(monkeypatch, servers):
    for var, canary in CANARIES.items():
        monkeypatch.setenv(var, canary)
    _run_every_client(monkeypatch, servers)
    wire = {name: _wire(s) for name, s in servers.items()}
    assert all(wire.values())  # every client made its request
    reached = {var: sorted(name for name, text in wire.items() if canary in text) for var, canary in CANARIES.items()}
    print("canary -> servers it reached:", reached)
    assert reached == {
        "ANTHROPIC_API_KEY": ["anthropic"],
        "OPENAI_API_KEY": ["openai"],
        "GOOGLE_API_KEY": ["gemini"],
        "GEMINI_API_KEY": [],  # GOOGLE_API_KEY wins when both are set (google-genai's order)
        "OPENAI_COMPATIBLE_API_KEY": ["openai-compatible", "vllm"],  # the scorer is an openai-compatible client
    }


def test_without_its_own_key_a_self_hosted_client_sends_no_other_key(monkeypatch, servers):
    for var, canary in CANARIES.items():
        monkeypatch.setenv(var, canary)
    monkeypatch.delenv("OPENAI_COMPATIBLE_API_KEY")
    monkeypatch.delenv("GOOGLE_API_KEY")
    _run_every_client(monkeypatch, servers)
    for name in ("openai-compatible", "vllm"):
        text = _wire(servers[name])
        assert text and not any(c in text for c in CANARIES.values())  # a placeholder, never OPENAI_API_KEY
    assert CANARIES["GEMINI_API_KEY"] in _wire(servers["gemini"])
    assert CANARIES["GEMINI_API_KEY"] not in "".join(_wire(s) for n, s in servers.items() if n != "gemini")


def test_one_function_names_every_key_variable():
    assert {v for p in PROVIDERS for v in key_env_names(p)} == set(CANARIES)
    assert all(OWNER[v] == p for p in PROVIDERS for v in key_env_names(p))
    assert key_env_names("local") == () and key_env_names("nope") == ()
