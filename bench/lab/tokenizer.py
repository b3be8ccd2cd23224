"""A word-level tokenizer trained on the lab's corpus, wrapped for transformers and TRL.

Words, numbers (each number 0..199 is one token, so arithmetic is a lookup a tiny model can
learn) and punctuation are tokens; whitespace is dropped by the pre-tokenizer and decoding
joins tokens with one space, so the lab's space-separated texts round-trip exactly. The chat
template renders `<|user|> question <|assistant|> solution <|end|>`; `<|end|>` is the EOS token,
so generation stops after an answer, and `continue_final_message=True` works (the provider
interface continues a student's partial answer).
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<unk>", "<|user|>", "<|assistant|>", "<|end|>"]
NUMBERS = [str(i) for i in range(200)]

CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}<|assistant|> {{ m['content'] }}{% if not loop.last %} <|end|> {% endif %}"
    "{% else %}<|user|> {{ m['content'] }} {% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def train_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """Word-level vocabulary over `texts` (plus all numbers 0..199) as a fast HF tokenizer."""
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIALS, min_frequency=1)
    # the numbers go in as ordinary text (special tokens would vanish on decode)
    tok.train_from_iterator([" ".join(NUMBERS), *texts], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|end|>",
        additional_special_tokens=["<|user|>", "<|assistant|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def save(tok: PreTrainedTokenizerFast, path: Path) -> None:
    tok.save_pretrained(str(path))


def load(path: Path) -> PreTrainedTokenizerFast:
    tok = PreTrainedTokenizerFast.from_pretrained(str(path))
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok
