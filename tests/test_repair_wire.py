"""First-error repair (`providers/repair.py`): the request through the real anthropic, openai and
google-genai SDKs against the fake wire server (tests/fake_providers.py), and `parse_repair` on
hand-written answers — a valid one, and each way an answer can break the format."""

from __future__ import annotations

import pickle

import pytest

from omniopd.errors import RepairFormatError, TeacherResponseError
from providers.base import Message
from providers.repair import REPAIR_PROMPT, Repair, numbered_solution, parse_repair, repair_request
from tests.fake_providers import fake_server  # noqa: F401  (fixture)
from tests.test_providers_wire import SPECS, make, run, sample_and_close

PROMPT = (Message("system", "Solve step by step."), Message("user", "Tom has 3 apples and buys 4 more. How many?"))
STUDENT = "Tom starts with 3 apples.\nHe buys 4 more, so 3 + 4 = 8.\n\nThe answer is 8."
GOOD = "STEP 2\nHe buys 4 more, so 3 + 4 = 7.\nThe answer is 7."
ROUTE = {"anthropic": "anthropic", "openai": "chat", "gemini": "gemini"}


def _user_text(provider: str, body: dict) -> str:
    """Every user turn's text as sent (OpenAI's instruction wrapper adds a turn after ours)."""
    if provider == "gemini":
        return "".join(p.get("text", "") for c in body["contents"] if c["role"] == "user" for p in c["parts"])
    out = []
    for m in body["messages"]:
        if m["role"] == "user":
            c = m["content"]
            out.append(c if isinstance(c, str) else "".join(b.get("text", "") for b in c))
    return "\n".join(out)


# --- the request -------------------------------------------------------------------------------
def test_request_keeps_the_system_turn_and_shows_numbered_lines():
    r = repair_request(PROMPT, STUDENT, max_tokens=64, temperature=0.2)
    assert r.prefix == "" and r.n == 1 and r.max_tokens == 64 and r.temperature == 0.2
    assert r.messages[0] == PROMPT[0] and [m.role for m in r.messages] == ["system", "user"]
    ask = r.messages[-1].content
    assert ask == REPAIR_PROMPT.format(problem=PROMPT[1].content, numbered=numbered_solution(STUDENT))
    assert "[1] Tom starts with 3 apples.\n[2] He buys 4 more, so 3 + 4 = 8.\n[3] The answer is 8." in ask
    assert "STEP <number of the first wrong line>" in ask


def test_request_refuses_what_cannot_be_repaired():
    with pytest.raises(ValueError, match="no user turn"):
        repair_request((Message("system", "x"),), STUDENT, max_tokens=8)
    with pytest.raises(ValueError, match="no non-blank line"):
        repair_request(PROMPT, " \n\n", max_tokens=8)


# --- the parser ----------------------------------------------------------------------------------
def test_parse_valid_answer_cuts_the_prefix_from_the_students_own_text():
    rep = parse_repair(GOOD, STUDENT)
    assert rep == Repair(1, "Tom starts with 3 apples.\n", "He buys 4 more, so 3 + 4 = 7.\nThe answer is 7.")
    assert STUDENT.startswith(rep.prefix_text)
    # the first line wrong: no prefix; a fenced answer, a colon, emphasis and echoed marks are tolerated
    rep = parse_repair("```\n**STEP 1**: Tom starts with 3 apples; 3 + 4 = 7.\n[2] The answer is 7.\n```", STUDENT)
    assert rep == Repair(0, "", "Tom starts with 3 apples; 3 + 4 = 7.\nThe answer is 7.")
    # blank lines are not numbered but stay in the prefix verbatim
    rep = parse_repair("step 3\nThe answer is 7.", STUDENT)
    assert rep.step_index == 2 and rep.prefix_text == "Tom starts with 3 apples.\nHe buys 4 more, so 3 + 4 = 8.\n\n"


@pytest.mark.parametrize("answer,what,step", [
    ("STEP 4\nThe answer is 7.", "step", 4),          # the student wrote 3 lines
    ("STEP 0\nThe answer is 7.", "step", 0),
    ("STEP 2\n\n   \n", "empty", 2),                  # a header and nothing to learn
    ("STEP 2", "empty", 2),
    ("The first wrong line is 2.\nThe answer is 7.", "header", None),
    ("", "header", None),
    ("STEP 3\nThe answer is 8.", "unchanged", 3),     # the student's own line back
])
def test_parse_rejects_a_broken_answer_with_its_facts(answer, what, step):
    with pytest.raises(RepairFormatError) as ei:
        parse_repair(answer, STUDENT, provider="openai")
    err = ei.value
    assert isinstance(err, TeacherResponseError)  # a per-sample teacher error, never a crash of the run
    assert (err.what, err.step, err.lines, err.provider) == (what, step, 3, "openai")
    again = pickle.loads(pickle.dumps(err))  # crosses process boundaries with its facts
    assert (again.what, again.step, again.provider) == (what, step, "openai")


# --- on the wire -----------------------------------------------------------------------------------
@pytest.mark.parametrize("provider", ["anthropic", "openai", "gemini"])
def test_each_sdk_sends_the_repair_request_and_the_answer_parses(fake_server, provider):
    fake_server.responder = lambda route, body, i: GOOD
    t = make(fake_server, SPECS[provider])
    (s,) = run(sample_and_close(t, repair_request(PROMPT, STUDENT, max_tokens=48)))
    (rec,) = fake_server.requests(ROUTE[provider])
    sent = _user_text(provider, rec.body)
    assert "[2] He buys 4 more, so 3 + 4 = 8." in sent and "STEP <number" in sent
    assert "Solve step by step." in str(rec.body)  # the system turn travels as the API wants it
    rep = parse_repair(s.text, STUDENT, provider=s.teacher.split(":")[0])
    assert rep.step_index == 1 and rep.corrected_text.endswith("The answer is 7.")
    assert s.output_tokens > 0  # an ordinary sample: its usage is accounted like any other


@pytest.mark.parametrize("provider", ["anthropic", "openai", "gemini"])
def test_a_malformed_answer_is_a_per_sample_error(fake_server, provider):
    fake_server.responder = lambda route, body, i: "Line 2 is wrong because 3 + 4 is 7."
    t = make(fake_server, SPECS[provider])
    (s,) = run(sample_and_close(t, repair_request(PROMPT, STUDENT, max_tokens=48)))
    with pytest.raises(RepairFormatError, match="STEP <k>") as ei:
        parse_repair(s.text, STUDENT, provider=s.teacher.split(":")[0])
    assert ei.value.provider == provider and ei.value.what == "header"


def test_a_repair_is_retried_and_cached_like_any_request(fake_server, tmp_path):
    from cache.teacher import CachedTeacher
    from tests.fake_providers import Fault
    from tests.test_providers_wire import Clock

    fake_server.responder = lambda route, body, i: GOOD
    fake_server.push(Fault("rate_limit", retry_after=3))
    clock = Clock()
    r = repair_request(PROMPT, STUDENT, max_tokens=48)
    first = CachedTeacher(make(fake_server, SPECS["anthropic"], clock), tmp_path / "t.sqlite", "read-write")
    (s,) = run(sample_and_close(first, r))
    assert [x.status for x in fake_server.requests()] == [429, 200] and clock.waits[0] >= 3  # retried
    assert not s.cached and s.cost_usd > 0  # paid, and priced by the model's row
    again = CachedTeacher(make(fake_server, SPECS["anthropic"]), tmp_path / "t.sqlite", "read-write")
    (t,) = run(sample_and_close(again, r))
    assert t.cached and t.text == s.text and len(fake_server.requests()) == 2  # served from the cache, paid once
    assert parse_repair(t.text, STUDENT).step_index == 1
