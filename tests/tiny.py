"""Tiny models built in-process for tests: a byte-level BPE tokenizer trained on a few sentences
and a 2-layer Llama. Nothing is downloaded; building both takes well under a second."""

from __future__ import annotations

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "{% if not (loop.last and message['role'] == 'assistant' and continue_final_message is defined and continue_final_message) %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "Natalia sold 48 clips in April and half as many in May. How many clips did she sell?",
    "First add the numbers, then multiply the result by two. The answer is 12.",
    "Tom has 3 apples and buys 5 more, so he has 8 apples in total.",
    "Let us think step by step: 7 plus 5 is 12, and 12 times 3 is 36.",
    "The train leaves at noon and travels 60 miles per hour for 3 hours.",
] * 4


def tiny_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=vocab_size, min_frequency=1,
                            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                  eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_llama(tok: PreTrainedTokenizerFast, hidden: int = 32, layers: int = 2, seed: int = 0,
               intermediate: int | None = None, heads: int = 4) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads // 2,
                      max_position_embeddings=1024,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model
