"""AI feedback as one reward: the judges' scores combined, cached, and labelled with where they came from.

reward(x, y) = reward_model_weight·RM(x, y) − harm_penalty·P_harm(x, y)

RM is the Bradley-Terry reward model, P_harm the harm classifier's probability of harmful compliance.
Every score carries the judges' provenance (model versions, constitution hash, how the preference labels
were made), so a run can log exactly which judge shaped it. Identical (prompt, response) pairs are scored
once per judge version (and once per batch without a cache): PPO samples the same short refusals and answers
again and again.
"""

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from safelatent.config import Config
from safelatent.judges.harm_classifier import HarmClassifier
from safelatent.judges.layout import HARM_CLASSIFIER_DIR, REWARD_MODEL_DIR, read_report
from safelatent.judges.reward_model import RewardModel
from safelatent.models.loading import DeviceName


class FeedbackSettings(Config):
    """How the judges' outputs become one scalar reward."""

    reward_model_weight: float = Field(1.0, ge=0, description="Weight of the reward model's score.")
    harm_penalty: float = Field(2.0, ge=0, description="Subtracted times P(harmful compliance).")
    cache_size: int = Field(100_000, ge=0, description="Scored (prompt, response) pairs remembered; 0 disables.")


@dataclass(frozen=True)
class FeedbackScores:
    rewards: list[float]
    components: dict[str, list[float]]  # "reward_model", "harm_probability"
    cache_hits: int  # pairs the judges did not run on: cached, or a repeat of a pair earlier in the batch


class ScoreCache:
    """A bounded LRU map from (judge version, prompt, response) to a score tuple."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, str, str], tuple[float, ...]] = OrderedDict()

    def get(self, key: tuple[str, str, str]) -> tuple[float, ...] | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: tuple[str, str, str], value: tuple[float, ...]) -> None:
        if self.capacity <= 0:
            return
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class AIFeedback:
    """Scores (prompt, response) pairs with a reward model and a harm classifier."""

    def __init__(self, reward_model: RewardModel, harm_classifier: HarmClassifier, settings: FeedbackSettings,
                 provenance: dict[str, Any]):
        self.reward_model = reward_model
        self.harm_classifier = harm_classifier
        self.settings = settings
        self.provenance = {**provenance, "reward_model": reward_model.version,
                           "harm_classifier": harm_classifier.version}
        self.version = f"{reward_model.version}+{harm_classifier.version}"
        self.cache = ScoreCache(settings.cache_size)

    @classmethod
    def load(cls, judges_dir: str | Path, settings: FeedbackSettings | None = None,
             device: DeviceName = "auto") -> "AIFeedback":
        """The judges of a `safelatent judges build` directory."""
        directory = Path(judges_dir)
        report = read_report(directory)
        labeler = report.get("labeler") or {"backend": "microworld-recipes"}
        provenance = {"judges_dir": str(directory), "judges_key": report.get("key"),
                      "constitution": report.get("constitution", {}).get("hash"),
                      "constitution_version": report.get("constitution", {}).get("version"),
                      "labeler": labeler.get("backend") if isinstance(labeler, dict) else str(labeler)}
        return cls(RewardModel.load(directory / REWARD_MODEL_DIR, device),
                   HarmClassifier.load(directory / HARM_CLASSIFIER_DIR, device), settings or FeedbackSettings(),
                   provenance)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> FeedbackScores:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses; pass one response per prompt")
        keys = [(self.version, prompt, response) for prompt, response in zip(prompts, responses, strict=True)]
        known = [self.cache.get(key) for key in keys]
        # Pairs neither cached nor seen earlier in this batch (sampled groups often repeat a reply), in order.
        missing = list(dict.fromkeys(key for key, value in zip(keys, known, strict=True) if value is None))
        if missing:
            missing_prompts = [key[1] for key in missing]
            missing_responses = [key[2] for key in missing]
            rewards = self.reward_model.score(missing_prompts, missing_responses)
            harms = self.harm_classifier.predict_proba(missing_prompts, missing_responses)
            fresh = {key: (reward, harm) for key, reward, harm in zip(missing, rewards, harms, strict=True)}
            for key, value in fresh.items():
                self.cache.put(key, value)
            known = [fresh[key] if value is None else value for key, value in zip(keys, known, strict=True)]
        reward_model = [value[0] for value in known]
        harm = [value[1] for value in known]
        combined = [self.settings.reward_model_weight * r - self.settings.harm_penalty * p
                    for r, p in zip(reward_model, harm, strict=True)]
        return FeedbackScores(rewards=combined, components={"reward_model": reward_model, "harm_probability": harm},
                              cache_hits=len(keys) - len(missing))
