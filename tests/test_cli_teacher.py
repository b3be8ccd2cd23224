"""`omniopd teacher probe` against the fake wire server."""

from __future__ import annotations

from omniopd.cli import main
from tests.fake_providers import fake_server  # noqa: F401  (fixture)


def test_probe_prints_samples_mode_usage_and_cost(fake_server, monkeypatch, capsys):
    for k, v in fake_server.env().items():
        monkeypatch.setenv(k, v)
    fake_server.responder = lambda route, body, i: " 51, since 17 times 3 is 51."
    rc = main(["teacher", "probe", "--teacher", "claude-haiku", "--prompt", "What is 17*3?", "--prefix", "17*3 is ", "-n", "2"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "teacher: anthropic:claude-haiku-4-5" in out and "continuation: prefill (exact)" in out
    assert out.count("17*3 is \u250251, since 17 times 3 is 51.") == 2
    assert "usage: input" in out and "cost: $0.0000" in out and "prices of" in out
    assert "sk-ant-test" not in out
    assert len(fake_server.requests("anthropic")) == 2


def test_probe_without_key_fails_with_the_variable_to_set(fake_server, monkeypatch, capsys):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    rc = main(["teacher", "probe", "--teacher", "claude-haiku", "--prompt", "hi"])
    assert rc == 2 and "ANTHROPIC_API_KEY" in capsys.readouterr().err
    assert fake_server.requests() == []
