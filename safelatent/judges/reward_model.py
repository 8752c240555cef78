"""The Bradley–Terry reward model: a scalar score r(x, y) learned from labeled preference pairs with TRL.

A sequence classifier with one output, its body initialised from a backbone causal LM, is trained by TRL's
`RewardTrainer` on pairs (x, y_w ≻ y_l) to minimise

    −log σ(r(x, y_w) − r(x, y_l))  (+ c·(r(x, y_w) + r(x, y_l))², which keeps rewards centred near 0),

so σ(r(x, a) − r(x, b)) estimates P(a ≻ b). Pairs are tokenized here, with the same exchange formatting
that `RewardModel.score` uses, and handed to the trainer already tokenized, so training and scoring can
never format a response differently. Pairwise accuracy is the share of pairs with r(x, y_w) > r(x, y_l)
(ties count as wrong).
"""

import tempfile
from collections.abc import Sequence
from pathlib import Path

import datasets
from pydantic import Field
from transformers import PreTrainedModel, PreTrainedTokenizerBase, PrinterCallback

from safelatent.config import Config
from safelatent.judges.accuracy import Accuracy
from safelatent.judges.preferences import PreferencePair
from safelatent.judges.sequence_classifier import (
    classifier_from_backbone,
    classifier_logits,
    encode_exchanges,
    load_classifier,
    save_classifier,
    usable_length,
)
from safelatent.models.loading import DeviceName, resolve_device

KIND = "reward_model"


class RewardModelSettings(Config):
    """How the reward model trains and scores."""

    epochs: float = Field(2.0, gt=0, description="Passes over the training pairs.")
    learning_rate: float = Field(3e-4, gt=0)
    batch_size: int = Field(16, ge=1, description="Pairs per optimizer step.")
    weight_decay: float = Field(0.0, ge=0)
    warmup_fraction: float = Field(0.05, ge=0, lt=1, description="Share of steps with a linear learning-rate warmup.")
    center_rewards_coefficient: float | None = Field(
        0.01, ge=0, description="Weight c of the centring term (rewards near 0 keep PPO's KL trade-off readable).")
    max_length: int = Field(256, ge=8, description="Tokens per exchange (at most the backbone's positions); "
                                                   "longer ones keep their end.")
    bpe_dropout: float = Field(0.1, ge=0, lt=1, description="BPE-dropout while tokenizing training pairs, so "
                                                            "unfamiliar words split into pieces are no surprise.")
    score_batch_size: int = Field(64, ge=1)


class RewardModel:
    """r(prompt, response) from a trained reward model; `version` names it in every reward it gives."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, version: str,
                 max_length: int = 256, batch_size: int = 64):
        if model.config.num_labels != 1:
            raise ValueError(f"a reward model has one output, this classifier has num_labels="
                             f"{model.config.num_labels}; load the harm classifier with HarmClassifier.load")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.version = version
        self.max_length = max_length
        self.batch_size = batch_size

    @classmethod
    def load(cls, directory: str | Path, device: DeviceName = "auto") -> "RewardModel":
        model, tokenizer, metadata = load_classifier(directory, device)
        if metadata.get("kind") != KIND:
            raise ValueError(f"{directory} holds a {metadata.get('kind')!r} judge, not a reward model")
        return cls(model, tokenizer, version=metadata["version"], max_length=metadata["max_length"])

    def save(self, directory: str | Path) -> Path:
        return save_classifier(self.model, self.tokenizer, directory,
                               {"kind": KIND, "version": self.version, "max_length": self.max_length})

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """r(prompt_i, response_i) for each i."""
        if not prompts and not responses:
            return []
        sequences = encode_exchanges(self.tokenizer, prompts, responses, self.max_length)
        logits = classifier_logits(self.model, sequences, self.tokenizer.pad_token_id, self.batch_size)
        return logits[:, 0].tolist()


def pairwise_wins(model: RewardModel, pairs: Sequence[PreferencePair]) -> list[bool]:
    """For each pair, whether the reward model scores the chosen response strictly above the rejected one."""
    prompts = [pair.prompt for pair in pairs]
    chosen = model.score(prompts, [pair.chosen for pair in pairs])
    rejected = model.score(prompts, [pair.rejected for pair in pairs])
    return [better > worse for better, worse in zip(chosen, rejected, strict=True)]


def pairwise_accuracy(model: RewardModel, pairs: Sequence[PreferencePair]) -> Accuracy:
    """Share of pairs ordered as labeled, with n and a 95% interval."""
    return Accuracy.of(pairwise_wins(model, pairs))


def train_reward_model(backbone: str | Path, pairs: Sequence[PreferencePair], settings: RewardModelSettings, *,
                       version: str, seed: int = 0, device: DeviceName = "auto",
                       progress: bool = True) -> RewardModel:
    """Initialise a one-output classifier from `backbone` and fit it to `pairs` with TRL's RewardTrainer."""
    from trl import RewardConfig, RewardTrainer  # training only: scoring a trained model does not need TRL

    if not pairs:
        raise ValueError("no preference pairs to train the reward model on; check the pair settings and data sizes")
    model, tokenizer = classifier_from_backbone(backbone, num_labels=1, device=device)
    max_length = usable_length(model, settings.max_length)
    prompts = [pair.prompt for pair in pairs]
    train_dataset = datasets.Dataset.from_dict({
        "chosen_ids": encode_exchanges(tokenizer, prompts, [pair.chosen for pair in pairs], max_length,
                                       bpe_dropout=settings.bpe_dropout, seed=seed),
        "rejected_ids": encode_exchanges(tokenizer, prompts, [pair.rejected for pair in pairs], max_length,
                                         bpe_dropout=settings.bpe_dropout, seed=seed + 1),
    })
    on_gpu = resolve_device(device).type == "cuda"
    with tempfile.TemporaryDirectory(prefix="safelatent-reward-") as scratch:
        args = RewardConfig(
            output_dir=scratch, num_train_epochs=settings.epochs, per_device_train_batch_size=settings.batch_size,
            learning_rate=settings.learning_rate, weight_decay=settings.weight_decay,
            warmup_steps=settings.warmup_fraction, lr_scheduler_type="linear",
            center_rewards_coefficient=settings.center_rewards_coefficient, max_length=None,
            seed=seed, data_seed=seed, use_cpu=not on_gpu, bf16=on_gpu, activation_checkpointing=False,
            save_strategy="no", report_to="none", logging_strategy="steps" if progress else "no",
            logging_steps=max(1, len(pairs) // settings.batch_size // 20),
            disable_tqdm=not progress, dataloader_num_workers=0)
        trainer = RewardTrainer(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer)
        if not progress:
            trainer.remove_callback(PrinterCallback)  # it prints the final metrics even with logging off
        trainer.train()
    return RewardModel(trainer.model, tokenizer, version=version, max_length=max_length,
                       batch_size=settings.score_batch_size)
