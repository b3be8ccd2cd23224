"""The OpenAI-compatible teacher against a real llama.cpp server (llama-cpp-python[server])
serving the packaged SmolLM2 GGUF on 127.0.0.1. Slow: starts a server process (~3 s) and
converts the GGUF tokenizer for the chat template (~20 s)."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from omniopd.config import TeacherConfig
from omniopd.teachers import build_api_teacher
from providers.base import Message, TeacherRequest
from providers.limits import LimitsRegistry

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python[server] is not installed: pip install 'omniopd[server]'")
    from omniopd.models import packaged_gguf

    gguf = packaged_gguf("smollm2")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    log = open(log_path, "wb")  # a file, not a pipe: llama.cpp logs enough to fill a pipe and block
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "2048", "--seed", "0"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                raise RuntimeError("llama_cpp.server exited: " + log_path.read_text(errors="replace")[-2000:])
            try:
                urllib.request.urlopen(url + "/models", timeout=1).read()
                break
            except OSError:
                time.sleep(0.25)
        else:
            raise RuntimeError("llama_cpp.server did not start within 60 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def smollm2_template():
    from omniopd.models import load_tokenizer

    return load_tokenizer("smollm2")


def _sample(teacher, request):
    async def go():
        try:
            return await teacher.sample(request)
        finally:
            await teacher.aclose()

    return asyncio.run(go())


MSGS = (Message("user", "Tom has 3 apples and buys 4 more. How many apples does he have?"),)


def test_raw_completion_continues_the_prefix_exactly(llama_server, smollm2_template):
    cfg = TeacherConfig(spec="openai-compatible:smollm2", base_url=llama_server, template="smollm2", max_n=4)
    teacher = build_api_teacher(cfg, env={}, limits=LimitsRegistry(), tokenizer=smollm2_template)
    assert teacher.identity()["continuation"] == "raw" and teacher.identity()["template"]
    greedy = TeacherRequest(MSGS, "Tom starts with 3 apples. ", n=1, max_tokens=16, temperature=0.0)
    (first,) = _sample(teacher, greedy)
    assert first.exact and first.text.strip() and first.teacher == "openai-compatible:smollm2"
    # Greedy decoding is self-consistent only if the prefix is continued as text, not re-answered:
    # extending the prefix by the first words of the continuation must yield the rest of it.
    words = first.text.split(" ")
    assert len(words) >= 4, first.text
    head = " ".join(words[:3])
    teacher = build_api_teacher(cfg, env={}, limits=LimitsRegistry(), tokenizer=smollm2_template)
    (second,) = _sample(teacher, TeacherRequest(MSGS, greedy.prefix + head, n=1, max_tokens=8, temperature=0.0))
    rest = first.text[len(head):]
    assert rest.startswith(second.text[:12]) and second.text[:12].strip(), (first.text, second.text)


def test_server_ignoring_n_still_yields_n_samples(llama_server, smollm2_template):
    # llama-cpp-python answers n>1 with one choice; the client notices and asks one at a time.
    cfg = TeacherConfig(spec="openai-compatible:smollm2", base_url=llama_server, template="smollm2", max_n=3)
    teacher = build_api_teacher(cfg, env={}, limits=LimitsRegistry(), tokenizer=smollm2_template)
    samples = _sample(teacher, TeacherRequest(MSGS, "He has", n=3, max_tokens=8, temperature=1.0))
    assert len(samples) == 3 and all(s.exact for s in samples)
    assert teacher._max_n == 1 and teacher.usage_totals()["requests"] == 3


def test_default_mode_without_template_is_the_instruction_wrapper(llama_server):
    cfg = TeacherConfig(spec="openai-compatible:smollm2", base_url=llama_server)
    teacher = build_api_teacher(cfg, env={}, limits=LimitsRegistry())
    samples = _sample(teacher, TeacherRequest(MSGS, "He has", n=2, max_tokens=4))
    assert teacher.identity()["continuation"] == "instruct"
    assert len(samples) == 2 and not any(s.exact for s in samples)
    assert all(s.input_tokens > 0 and s.cost_usd == 0.0 for s in samples)
