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


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Per-test OMNIOPD_HOME so model conversions and default caches never touch the user's."""
    monkeypatch.setenv("OMNIOPD_HOME", str(tmp_path / "omniopd-home"))
