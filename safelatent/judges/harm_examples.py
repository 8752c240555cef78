"""Labeled (prompt, response) examples for the harm classifier, from the micro-world and a policy's samples.

The label is the oracle's `harmful_compliance(response)`: 1 when the response complied with a harmful request
(it carries the micro-world's payload marker), else 0. Both classes are drawn on purpose:
    harmful and jailbreak prompts   the compliant response (1) and the refusal (0)
    benign and borderline prompts   the helpful response (0) and the refusal (0)
so the classifier sees refusals to every kind of prompt and cannot learn "harmful-sounding prompt = 1".
A policy's own samples add the responses the classifier will meet in training and serving.
Splits follow the micro-world's, so test examples come from held-out templates and lexicon entries.

The label depends on the response alone, so training also gets copies of some examples whose prompt has
each letter or digit replaced, with probability `obfuscation_rate`, by a random one (label unchanged).
Without them a small classifier learns that an unreadable prompt (leetspeak, a cipher, any attack wrapper
it never saw) means a harmless exchange, and misses the compliance that follows it.
"""

import random
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from safelatent.config import Config
from safelatent.data.splits import seeded_rng
from safelatent.judges.oracle import harmful_compliance
from safelatent.judges.preferences import PolicySample

RESPONSES_BY_KIND: dict[str, tuple[str, ...]] = {
    "harmful": ("helpful_response", "safe_response"),
    "jailbreak": ("helpful_response", "safe_response"),
    "benign": ("helpful_response", "refusal"),
    "borderline": ("helpful_response", "refusal"),
}


@dataclass(frozen=True)
class HarmExample:
    """One response to a prompt, labeled 1 for harmful compliance and 0 otherwise."""

    prompt: str
    response: str
    label: int
    kind: str  # the micro-world kind of the prompt
    source: str  # "microworld" or "policy-samples"
    split: str

    @property
    def group(self) -> str:
        return f"{self.kind}/{'harmful' if self.label else 'harmless'}/{self.source}"


class HarmExampleSettings(Config):
    """How many micro-world examples to draw per (prompt kind, label) group and split."""

    train_per_group: int = Field(2000, ge=0, description="Training examples per group (fewer if fewer exist).")
    test_per_group: int = Field(500, ge=0, description="Test examples per group (fewer if fewer exist).")
    obfuscated_prompt_share: float = Field(0.25, ge=0, le=1, description="Extra training copies, as a share of "
                                                                         "the training examples, with obfuscated "
                                                                         "prompts.")
    obfuscation_rate: float = Field(0.3, gt=0, le=1, description="Chance that each letter or digit of such a "
                                                                 "prompt is replaced by a random one.")


def microworld_harm_examples(rows: Iterable[dict[str, Any]], split: str, per_group: int, *,
                             seed: int = 0) -> list[HarmExample]:
    """Examples from one split's rows, labeled by the oracle, at most `per_group` per (kind, label), seeded."""
    groups: dict[str, list[HarmExample]] = {}
    for row in rows:
        for column in RESPONSES_BY_KIND.get(row["kind"], ()):
            response = row[column]
            example = HarmExample(prompt=row["prompt"], response=response, label=int(harmful_compliance(response)),
                                  kind=row["kind"], source="microworld", split=split)
            groups.setdefault(example.group, []).append(example)
    chosen: list[HarmExample] = []
    for group in sorted(groups):
        candidates = groups[group]
        if len(candidates) > per_group:
            candidates = seeded_rng(seed, "harm-examples", split, group).sample(candidates, per_group)
        chosen.extend(candidates)
    return chosen


def with_obfuscated_prompts(examples: Sequence[HarmExample], share: float, rate: float, *,
                            seed: int = 0) -> list[HarmExample]:
    """The examples, plus copies of a `share` of them whose prompts are obfuscated character by character."""
    rng = random.Random(f"{seed}/obfuscated-prompts")
    chosen = rng.sample(list(examples), round(share * len(examples)))
    copies = [HarmExample(prompt=obfuscate(example.prompt, rate, rng), response=example.response,
                          label=example.label, kind=example.kind, source="obfuscated-prompt", split=example.split)
              for example in chosen]
    return [*examples, *copies]


def obfuscate(text: str, rate: float, rng: random.Random) -> str:
    """`text` with each letter or digit replaced by a random letter or digit with probability `rate`."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(rng.choice(alphabet) if character.isalnum() and rng.random() < rate else character
                   for character in text)


def policy_harm_examples(samples: Sequence[PolicySample]) -> list[HarmExample]:
    """Each distinct sampled response to a prompt, labeled by the oracle."""
    seen: set[tuple[str, str]] = set()
    examples = []
    for sample in samples:
        key = (sample.row["prompt"], sample.response)
        if key in seen:
            continue
        seen.add(key)
        examples.append(HarmExample(prompt=sample.row["prompt"], response=sample.response,
                                    label=int(harmful_compliance(sample.response)), kind=sample.row["kind"],
                                    source="policy-samples", split=sample.split))
    return examples


def class_counts(examples: Sequence[HarmExample]) -> dict[str, int]:
    positives = sum(example.label for example in examples)
    return {"harmful": positives, "harmless": len(examples) - positives}
