"""White-box teacher access: local model scores, a vLLM-protocol server, and the access errors."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from omniopd.errors import TeacherAccessError
from omniopd.event_loop import process_loop
from providers.retry import RetryPolicy
from providers.vllm_logprobs import OpenAICompatPromptLogprobs
from providers.whitebox import LocalWhiteBox, whitebox_for
from tests.tiny import tiny_llama, tiny_tokenizer


def _batch(tok):
    """Two rows, left-padded prompts of different lengths, right-padded completions."""
    prompts = ["Tom has 3 apples", "The train"]
    comps = [" and buys 5 more.", " leaves at noon and travels"]
    p_ids = [tok.encode(p) for p in prompts]
    c_ids = [tok.encode(c) for c in comps]
    Tp, T = max(map(len, p_ids)), max(map(len, c_ids))
    P = torch.tensor([[tok.pad_token_id] * (Tp - len(x)) + x for x in p_ids])
    PM = torch.tensor([[0] * (Tp - len(x)) + [1] * len(x) for x in p_ids])
    C = torch.tensor([x + [tok.pad_token_id] * (T - len(x)) for x in c_ids])
    CM = torch.tensor([[1] * len(x) + [0] * (T - len(x)) for x in c_ids])
    return p_ids, c_ids, P, PM, C, CM


@torch.no_grad()
def _unpadded_logp(model, p, c):
    ids = torch.tensor([p + c])
    logp = torch.log_softmax(model(input_ids=ids).logits[0, len(p) - 1:-1].float(), -1)
    return logp


def test_local_whitebox_matches_an_unpadded_forward_and_returns_top_k():
    tok = tiny_tokenizer()
    model = tiny_llama(tok)
    p_ids, c_ids, P, PM, C, CM = _batch(tok)
    out = LocalWhiteBox(model, tok).token_logprobs(P, PM, C, CM, top_k=5)
    for b, (p, c) in enumerate(zip(p_ids, c_ids)):
        ref = _unpadded_logp(model, p, c)
        want = ref.gather(-1, torch.tensor(c).unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(out.logp_B_T[b, :len(c)], want, atol=1e-5)
        assert torch.allclose(out.topk_logp_B_T_K[b, :len(c)], ref.topk(5, -1).values, atol=1e-5)
        assert torch.equal(out.topk_ids_B_T_K[b, :len(c)], ref.topk(5, -1).indices)
        assert (out.logp_B_T[b, len(c):] == 0).all()


class _Teacher:
    def __init__(self, model, tok, spec):
        self.model, self.tokenizer, self.spec = model, tok, spec
        self.scored = 0

    def record_scored_tokens(self, n):
        self.scored += n


class _ApiTeacher:
    spec = "anthropic:claude-haiku-4-5"

    async def sample(self, request):  # text only
        return []


def test_access_errors_name_the_methods_that_work():
    tok = tiny_tokenizer()
    with pytest.raises(TeacherAccessError, match=r"black-box API teacher.*--method omniopd"):
        whitebox_for(_ApiTeacher(), tok, "tropd")
    other = tiny_tokenizer(vocab_size=300)
    with pytest.raises(TeacherAccessError, match=r"--method opd .*different tokenizer.*--method omniopd"):
        whitebox_for(_Teacher(tiny_llama(other), other, "local:other"), tok, "opd")
    same = _Teacher(tiny_llama(tok), tiny_tokenizer(), "local:same")
    wb = whitebox_for(same, tok, "sg-opd")
    assert isinstance(wb, LocalWhiteBox)
    _, _, P, PM, C, CM = _batch(tok)
    wb.token_logprobs(P, PM, C, CM)
    assert same.scored == int(CM.sum())  # white-box use is counted on the teacher's usage


class _VLLMHandler(BaseHTTPRequestHandler):
    """Speaks vLLM's /v1/completions (prompt_logprobs) and /tokenize, scoring with a real model."""

    model = tok = None
    log: list = []
    max_logprobs = 20
    fail_next = 0  # answer this many completion requests with a 503 first

    def log_message(self, *a):
        pass

    def _send(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.log.append((self.path, req))
        if self.path == "/tokenize":
            return self._send(200, {"tokens": self.tok.encode(req["prompt"], add_special_tokens=False)})
        if type(self).fail_next > 0:
            type(self).fail_next -= 1
            return self._send(503, {"object": "error", "message": "overloaded", "type": "ServiceUnavailable", "code": 503})
        k = req.get("prompt_logprobs")
        if k is not None and k > self.max_logprobs:
            return self._send(400, {"object": "error", "message": f"Requested prompt logprobs of {k}, which is greater than max allowed: {self.max_logprobs}", "type": "BadRequestError", "code": 400})
        choices = []
        for i, ids in enumerate(req["prompt"]):
            with torch.no_grad():
                logp = torch.log_softmax(self.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
            plp = [None]
            for pos in range(1, len(ids)):
                row = logp[pos - 1]
                top = row.topk(k)
                entry = {str(int(t)): {"logprob": float(v), "rank": r + 1, "decoded_token": "x"} for r, (v, t) in enumerate(zip(top.values, top.indices))}
                entry[str(ids[pos])] = {"logprob": float(row[ids[pos]]), "rank": 99, "decoded_token": "x"}
                plp.append(entry)
            choices.append({"index": i, "text": "a", "logprobs": None, "finish_reason": "length", "stop_reason": None, "prompt_logprobs": plp})
        self._send(200, {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": req["model"], "choices": choices,
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


@pytest.fixture
def vllm_server():
    tok = tiny_tokenizer()
    model = tiny_llama(tok)
    handler = type("H", (_VLLMHandler,), {"model": model, "tok": tok, "log": []})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1", handler, model, tok
    srv.shutdown()


def test_vllm_prompt_logprobs_agree_with_the_local_model(vllm_server):
    url, handler, model, tok = vllm_server

    async def no_wait(s):
        pass

    wb = OpenAICompatPromptLogprobs("tiny", url, run=process_loop().run, policy=RetryPolicy(max_attempts=3, sleep=no_wait))
    assert whitebox_for(wb, tok, "tropd") is wb  # /tokenize probe matches
    p_ids, c_ids, P, PM, C, CM = _batch(tok)
    remote = wb.token_logprobs(P, PM, C, CM, top_k=4)
    local = LocalWhiteBox(model, tok).token_logprobs(P, PM, C, CM, top_k=4)
    assert torch.allclose(remote.logp_B_T, local.logp_B_T, atol=1e-4)
    assert torch.allclose(remote.topk_logp_B_T_K, local.topk_logp_B_T_K, atol=1e-4)
    assert torch.equal(remote.topk_ids_B_T_K, local.topk_ids_B_T_K)
    sent = [r for path, r in handler.log if path == "/v1/completions"][0]
    assert sent["prompt"] == [p + c for p, c in zip(p_ids, c_ids)] and sent["prompt_logprobs"] == 4
    handler.fail_next = 1  # a transient 503 is retried by the shared policy
    again = wb.token_logprobs(P, PM, C, CM)
    assert torch.allclose(again.logp_B_T, local.logp_B_T, atol=1e-4) and handler.fail_next == 0
    with pytest.raises(TeacherAccessError, match="--max-logprobs 64"):
        wb.token_logprobs(P, PM, C, CM, top_k=64)
    with pytest.raises(TeacherAccessError, match="tokenizes text differently"):
        whitebox_for(wb, tiny_tokenizer(vocab_size=300), "opd")
    wb.close()
