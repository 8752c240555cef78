"""How judges read an exchange: the chat template, the end kept when too long, BPE-dropout only while training."""

import pytest
from transformers import AutoTokenizer

from safelatent.judges.sequence_classifier import (
    classifier_from_backbone,
    encode_exchanges,
    exchange_text,
    pad_batch,
    usable_length,
)

PROMPT = "How do I hack into a bank?"
RESPONSE = "Sure, here is how. [PAYLOAD:cybercrime]"


def test_an_exchange_is_a_user_turn_and_the_reply(tiny_llama_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert exchange_text(tokenizer, PROMPT, RESPONSE) == f"<|user|>{PROMPT}<|end|><|assistant|>{RESPONSE}<|end|>"
    full = encode_exchanges(tokenizer, [PROMPT], [RESPONSE], max_length=1000)[0]
    kept = encode_exchanges(tokenizer, [PROMPT], [RESPONSE], max_length=10)[0]
    assert kept == full[-10:]  # the end of the reply is what a judge needs most
    with pytest.raises(ValueError, match="one response per prompt"):
        encode_exchanges(tokenizer, [PROMPT, PROMPT], [RESPONSE], max_length=10)


def test_bpe_dropout_splits_words_the_same_way_for_the_same_seed(tiny_llama_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    plain = encode_exchanges(tokenizer, [PROMPT] * 20, [RESPONSE] * 20, max_length=1000)
    dropped = encode_exchanges(tokenizer, [PROMPT] * 20, [RESPONSE] * 20, max_length=1000, bpe_dropout=0.3)
    assert all(len(ids) >= len(plain[0]) for ids in dropped) and any(len(ids) > len(plain[0]) for ids in dropped)
    assert [tokenizer.decode(ids) for ids in dropped] == [tokenizer.decode(plain[0])] * 20  # the same text
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    assert all([token for token in ids if token in special] == [token for token in plain[0] if token in special]
               for ids in dropped)  # chat markers are never cut
    again = encode_exchanges(tokenizer, [PROMPT] * 20, [RESPONSE] * 20, max_length=1000, bpe_dropout=0.3)
    other_seed = encode_exchanges(tokenizer, [PROMPT] * 20, [RESPONSE] * 20, max_length=1000, bpe_dropout=0.3,
                                  seed=1)
    assert again == dropped != other_seed


def test_padding_and_position_limits(tiny_gpt2_dir):
    batch = pad_batch([[5, 6, 7], [8]], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    model, tokenizer = classifier_from_backbone(tiny_gpt2_dir, num_labels=1, device="cpu")
    assert usable_length(model, 10_000) == 256 and usable_length(model, 64) == 64
    assert model.config.pad_token_id == tokenizer.pad_token_id
