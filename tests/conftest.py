import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture
def tiny_tok():
    from tests.tiny import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture
def tiny_model(tiny_tok):
    from tests.tiny import tiny_llama

    return tiny_llama(tiny_tok)


@pytest.fixture(scope="session")
def _session_home(tmp_path_factory):
    return tmp_path_factory.mktemp("omniopd-home")


@pytest.fixture(autouse=True)
def _isolated_home(_session_home, monkeypatch):
    """OMNIOPD_HOME inside the test session's temp dir: model conversions and default caches never
    touch the user's, and the packaged GGUF is converted once per session, not once per test."""
    monkeypatch.setenv("OMNIOPD_HOME", str(_session_home))
