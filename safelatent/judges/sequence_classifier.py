"""(prompt, response) exchanges through a sequence classifier: one formatting for training and scoring, batched.

An exchange is the chat template applied to a user turn and the assistant's reply, so a judge reads a
response exactly as the policy writes it. Over-long exchanges keep their last `max_length` tokens: the end
of a reply (a refusal, a payload, a final answer) is what a judge most needs. The classifier reads the
last non-padding token, as Hugging Face sequence classifiers for causal LMs do.

Training text can be tokenized with BPE-dropout (Provilkov et al., 2020): each token is rebuilt from its
characters by the tokenizer's own merges in rank order, every candidate merge being skipped with
probability p at each step, so words also appear in smaller pieces. Held-out prompts are full of words the
tokenizer never merged (new lexicon entries, leetspeak); a judge trained this way has seen such pieces.
It runs here, with Python's seeded generator, so the same seed gives the same judges.
"""

import itertools
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as transformers_logging

from safelatent.models.loading import DeviceName, resolve_device

JUDGE_FILE = "judge.json"


def exchange_text(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str) -> str:
    """The text of one exchange: a user turn and the assistant's reply, through the tokenizer's chat template."""
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def encode_exchanges(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], responses: Sequence[str],
                     max_length: int, *, bpe_dropout: float = 0.0, seed: int = 0) -> list[list[int]]:
    """Token ids of each exchange, keeping the last `max_length` tokens of a longer one.

    `bpe_dropout` > 0 (training only) cuts tokens into pieces at random, seeded by `seed`.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"one response per prompt is needed: got {len(responses)} responses for {len(prompts)} "
                         "prompts")
    texts = [exchange_text(tokenizer, prompt, response) for prompt, response in zip(prompts, responses, strict=True)]
    # The chat template already writes every special token the model expects.
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    if bpe_dropout > 0:
        encoded = cut_tokens(tokenizer, encoded, bpe_dropout, seed)
    return [ids[-max_length:] for ids in encoded]


def cut_tokens(tokenizer: PreTrainedTokenizerBase, sequences: Sequence[Sequence[int]], probability: float,
               seed: int) -> list[list[int]]:
    """The sequences re-segmented by BPE-dropout, token by token; special tokens stay whole."""
    vocabulary = tokenizer.get_vocab()
    names = {token_id: token for token, token_id in vocabulary.items()}
    ranks = _merge_ranks(tokenizer)
    whole = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    rng = random.Random(f"{seed}/bpe-dropout")
    cut = []
    for ids in sequences:
        pieces: list[int] = []
        for token_id in ids:
            if token_id in whole:
                pieces.append(token_id)
            else:
                pieces.extend(vocabulary[piece] for piece in _merge_with_dropout(names[token_id], ranks, probability,
                                                                                 rng))
        cut.append(pieces)
    return cut


def _merge_ranks(tokenizer: PreTrainedTokenizerBase) -> dict[tuple[str, str], int]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = json.loads(backend.to_str())["model"] if backend is not None else {}
    if model.get("type") != "BPE":
        raise ValueError(f"bpe_dropout needs a fast BPE tokenizer; this one is {model.get('type') or 'not fast'}. "
                         "Set bpe_dropout: 0 for this backbone")
    # tokenizers writes merges as "a b" strings in older files and as [a, b] pairs in newer ones.
    merges = [tuple(merge.split(" ", 1)) if isinstance(merge, str) else tuple(merge) for merge in model["merges"]]
    return {merge: rank for rank, merge in enumerate(merges)}


def _merge_with_dropout(token: str, ranks: dict[tuple[str, str], int], probability: float,
                        rng: random.Random) -> list[str]:
    symbols = list(token)
    while len(symbols) > 1:
        candidates = [(ranks[pair], index) for index, pair in enumerate(itertools.pairwise(symbols))
                      if pair in ranks and rng.random() >= probability]
        if not candidates:
            break
        _, index = min(candidates)
        symbols[index:index + 2] = [symbols[index] + symbols[index + 1]]
    return symbols


def pad_batch(sequences: Sequence[Sequence[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids and attention mask, as TRL's preference collator builds them."""
    longest = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@torch.no_grad()
def classifier_logits(model: PreTrainedModel, sequences: Sequence[Sequence[int]], pad_token_id: int,
                      batch_size: int) -> torch.Tensor:
    """Logits [n, num_labels] for token-id sequences, in batches of similar lengths (less padding)."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda index: len(sequences[index]))
    logits = torch.empty((len(sequences), model.config.num_labels), dtype=torch.float32)
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        batch = {name: tensor.to(device) for name, tensor in pad_batch([sequences[i] for i in indices],
                                                                       pad_token_id).items()}
        logits[indices] = model(**batch).logits.float().cpu()
    return logits


def position_limit(model: PreTrainedModel) -> int | None:
    """How many positions the model was built for, when its config says."""
    config = model.config.get_text_config()
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def usable_length(model: PreTrainedModel, max_length: int) -> int:
    """`max_length`, capped at the model's positions: learned position tables have no row beyond them."""
    limit = position_limit(model)
    return min(max_length, limit) if limit else max_length


def tokenizer_with_padding(directory: str | Path) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ValueError(f"the tokenizer in {directory} has no chat template; judges format (prompt, response) "
                         "as a chat, so use a chat model as backbone or set tokenizer.chat_template first")
    return tokenizer


def classifier_from_backbone(backbone: str | Path, num_labels: int, *, id2label: dict[int, str] | None = None,
                             device: DeviceName = "auto") -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A sequence classifier whose body is the backbone causal LM and whose head is new, with its tokenizer."""
    backbone = Path(backbone)
    if not (backbone / "config.json").is_file():
        raise FileNotFoundError(f"backbone {backbone} is not a Hugging Face model directory (no config.json); "
                                "give a saved causal LM directory, or use backbone: null for a fresh one")
    tokenizer = tokenizer_with_padding(backbone)
    extra: dict[str, Any] = {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}} if id2label else {}
    verbosity = transformers_logging.get_verbosity()
    # The new head is reported as "newly initialized" at warning level; that is the point, so keep it quiet.
    transformers_logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(backbone), num_labels=num_labels,
                                                                   dtype=torch.float32, **extra)
    finally:
        transformers_logging.set_verbosity(verbosity)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    return model.to(resolve_device(device)), tokenizer


def load_classifier(directory: str | Path, device: DeviceName = "auto"
                    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """A saved judge: the classifier in eval mode, its tokenizer and its judge.json metadata."""
    directory = Path(directory)
    if not (directory / JUDGE_FILE).is_file():
        raise FileNotFoundError(f"{directory} is not a saved judge (no {JUDGE_FILE}); build judges with "
                                "`safelatent judges build` or save one with its .save(directory)")
    metadata = json.loads((directory / JUDGE_FILE).read_text())
    tokenizer = tokenizer_with_padding(directory)
    model = AutoModelForSequenceClassification.from_pretrained(str(directory), dtype=torch.float32)
    return model.to(resolve_device(device)).eval(), tokenizer, metadata


def save_classifier(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: str | Path,
                    metadata: dict[str, Any]) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    (directory / JUDGE_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return directory
