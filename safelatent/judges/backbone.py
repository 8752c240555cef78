"""A fresh judge backbone: a BPE chat tokenizer trained on micro-world text and a small randomly initialised Llama.

Judges are normally initialised from a trained causal LM (the micro-world base model, or any chat model).
When there is none yet, `write_fresh_backbone` writes a stand-in in Hugging Face format, so the judges can
be built from nothing but the micro-world, in seconds for the tokenizer and minutes for training on a CPU.
The tokenizer learns only from training-split text; test prompts are tokenized like any unseen text.
"""

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, model_validator
from transformers import LlamaConfig, LlamaForCausalLM

from safelatent.config import Config
from safelatent.models.tokenizer import train_chat_tokenizer

RESPONSE_COLUMNS: tuple[str, ...] = ("helpful_response", "safe_response", "refusal")


class FreshBackboneSettings(Config):
    """Shape of the fresh backbone used when no trained one is given (backbone: null)."""

    vocab_size: int = Field(2048, ge=261, description="BPE vocabulary, the chat and byte tokens included.")
    hidden_size: int = Field(128, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(512, ge=8)
    max_position_embeddings: int = Field(512, ge=16)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "FreshBackboneSettings":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be a multiple of num_heads {self.num_heads}")
        return self


def microworld_texts(rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    """Every prompt and response of the rows: what a tokenizer for micro-world judges should learn from."""
    for row in rows:
        yield row["prompt"]
        for column in RESPONSE_COLUMNS:
            if row.get(column):
                yield row[column]


def write_fresh_backbone(settings: FreshBackboneSettings, corpus: Iterable[str], directory: str | Path, *,
                         seed: int = 0) -> Path:
    """Train the tokenizer on `corpus`, initialise the Llama with `seed`, save both to `directory`."""
    tokenizer = train_chat_tokenizer(corpus, settings.vocab_size)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=settings.hidden_size,
                         intermediate_size=settings.intermediate_size, num_hidden_layers=settings.num_layers,
                         num_attention_heads=settings.num_heads, num_key_value_heads=settings.num_heads,
                         max_position_embeddings=settings.max_position_embeddings, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory
