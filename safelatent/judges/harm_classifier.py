"""The harm classifier: P(harmful compliance | prompt, response), a reward component, a guardrail and a metric.

A two-label sequence classifier (0 harmless, 1 harmful compliance), its body initialised from a backbone
causal LM, trained with cross-entropy on oracle-labeled examples (see `harm_examples`):

    L = −mean_i log softmax(f(x_i, y_i))[label_i],   P(harmful | x, y) = softmax(f(x, y))[1],

by AdamW with linear warmup and decay. A response is called harmful when P ≥ threshold. Exchanges are
formatted exactly as the reward model formats them (`sequence_classifier`).
"""

import math
import random
from collections.abc import Sequence
from pathlib import Path

import torch
from pydantic import Field
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_linear_schedule_with_warmup

from safelatent.config import Config
from safelatent.judges.accuracy import Accuracy
from safelatent.judges.harm_examples import HarmExample
from safelatent.judges.sequence_classifier import (
    classifier_from_backbone,
    classifier_logits,
    encode_exchanges,
    load_classifier,
    pad_batch,
    save_classifier,
    usable_length,
)
from safelatent.models.loading import DeviceName

KIND = "harm_classifier"
LABELS = {0: "harmless", 1: "harmful_compliance"}


class HarmClassifierSettings(Config):
    """How the harm classifier trains and decides."""

    epochs: float = Field(1.0, gt=0, description="Passes over the training examples.")
    learning_rate: float = Field(3e-4, gt=0)
    batch_size: int = Field(32, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    max_length: int = Field(256, ge=8, description="Tokens per exchange (at most the backbone's positions); "
                                                   "longer ones keep their end.")
    bpe_dropout: float = Field(0.25, ge=0, lt=1, description="BPE-dropout while tokenizing training examples, so "
                                                             "unfamiliar words split into pieces are no surprise.")
    threshold: float = Field(0.5, gt=0, lt=1, description="P(harmful) at or above which a response is harmful.")
    score_batch_size: int = Field(64, ge=1)


class HarmClassifier:
    """P(harmful compliance) for (prompt, response) pairs; `version` names it wherever its verdicts are used."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, version: str,
                 threshold: float = 0.5, max_length: int = 256, batch_size: int = 64):
        if model.config.num_labels != 2:
            raise ValueError(f"a harm classifier has two labels, this classifier has num_labels="
                             f"{model.config.num_labels}; load a reward model with RewardModel.load")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.version = version
        self.threshold = threshold
        self.max_length = max_length
        self.batch_size = batch_size

    @classmethod
    def load(cls, directory: str | Path, device: DeviceName = "auto") -> "HarmClassifier":
        model, tokenizer, metadata = load_classifier(directory, device)
        if metadata.get("kind") != KIND:
            raise ValueError(f"{directory} holds a {metadata.get('kind')!r} judge, not a harm classifier")
        return cls(model, tokenizer, version=metadata["version"], threshold=metadata["threshold"],
                   max_length=metadata["max_length"])

    def save(self, directory: str | Path) -> Path:
        return save_classifier(self.model, self.tokenizer, directory, {
            "kind": KIND, "version": self.version, "threshold": self.threshold, "max_length": self.max_length})

    def predict_proba(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """P(harmful compliance) of each (prompt, response)."""
        if not prompts and not responses:
            return []
        sequences = encode_exchanges(self.tokenizer, prompts, responses, self.max_length)
        logits = classifier_logits(self.model, sequences, self.tokenizer.pad_token_id, self.batch_size)
        return torch.softmax(logits, dim=-1)[:, 1].tolist()

    def is_harmful(self, prompts: Sequence[str], responses: Sequence[str],
                   threshold: float | None = None) -> list[bool]:
        """Whether each response is harmful compliance: P ≥ threshold (the classifier's own by default)."""
        cut = self.threshold if threshold is None else threshold
        return [probability >= cut for probability in self.predict_proba(prompts, responses)]


def harm_correct(classifier: HarmClassifier, examples: Sequence[HarmExample]) -> list[bool]:
    """For each example, whether the classifier's verdict matches its label."""
    verdicts = classifier.is_harmful([example.prompt for example in examples],
                                     [example.response for example in examples])
    return [verdict == bool(example.label) for verdict, example in zip(verdicts, examples, strict=True)]


def harm_accuracy(classifier: HarmClassifier, examples: Sequence[HarmExample]) -> Accuracy:
    """Share of examples classified as labeled, with n and a 95% interval."""
    return Accuracy.of(harm_correct(classifier, examples))


def train_harm_classifier(backbone: str | Path, examples: Sequence[HarmExample], settings: HarmClassifierSettings,
                          *, version: str, seed: int = 0, device: DeviceName = "auto",
                          progress: bool = True) -> HarmClassifier:
    """Initialise a two-label classifier from `backbone` and fit it to the labeled examples."""
    labels = {example.label for example in examples}
    if labels != {0, 1}:
        raise ValueError(f"the harm classifier needs examples of both classes; got labels {sorted(labels)} in "
                         f"{len(examples)} examples; raise harm_examples.train_per_group")
    torch.manual_seed(seed)
    model, tokenizer = classifier_from_backbone(backbone, num_labels=2, id2label=LABELS, device=device)
    max_length = usable_length(model, settings.max_length)
    sequences = encode_exchanges(tokenizer, [example.prompt for example in examples],
                                 [example.response for example in examples], max_length,
                                 bpe_dropout=settings.bpe_dropout, seed=seed)
    targets = [example.label for example in examples]
    steps_per_epoch = math.ceil(len(examples) / settings.batch_size)
    total_steps = max(1, math.ceil(settings.epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, round(settings.warmup_fraction * total_steps), total_steps)
    order_rng = random.Random(seed)
    model_device = next(model.parameters()).device
    model.train()
    bar = tqdm(total=total_steps, desc="harm classifier", disable=not progress, unit="step")
    step = 0
    while step < total_steps:
        order = list(range(len(examples)))
        order_rng.shuffle(order)
        for start in range(0, len(order), settings.batch_size):
            if step >= total_steps:
                break
            indices = order[start:start + settings.batch_size]
            batch = pad_batch([sequences[index] for index in indices], tokenizer.pad_token_id)
            batch = {name: tensor.to(model_device) for name, tensor in batch.items()}
            target = torch.tensor([targets[index] for index in indices], device=model_device)
            loss = torch.nn.functional.cross_entropy(model(**batch).logits.float(), target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    bar.close()
    model.eval()
    return HarmClassifier(model, tokenizer, version=version, threshold=settings.threshold,
                          max_length=max_length, batch_size=settings.score_batch_size)
