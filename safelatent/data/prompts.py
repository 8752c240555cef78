"""Prompts for RL: a pool of micro-world prompts by kind, and a deterministic draw of a mix for each step.

The draw for step k depends only on (seed, k), so a run resumed from a checkpoint at step k sees exactly the
prompts an uninterrupted run would have seen.
"""

import random
from collections.abc import Mapping, Sequence

import datasets
from pydantic import Field, field_validator

from safelatent.config import Config

PROMPT_KINDS = ("harmful", "jailbreak", "benign", "borderline")


class PromptMix(Config):
    """Which micro-world prompts the policy practises on, and in what proportions."""

    split: str = Field("train", description="Micro-world split the prompts come from.")
    weights: dict[str, float] = Field(
        default_factory=lambda: {"harmful": 0.35, "jailbreak": 0.15, "benign": 0.4, "borderline": 0.1},
        description="Share of each prompt kind per step (normalised): harmful, jailbreak, benign, borderline.")

    @field_validator("weights")
    @classmethod
    def _known_positive_kinds(cls, weights: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(weights) - set(PROMPT_KINDS))
        if unknown:
            raise ValueError(f"unknown prompt kinds {unknown}; use some of {list(PROMPT_KINDS)}")
        if any(weight < 0 for weight in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError("weights must be >= 0 with a positive sum")
        return weights


def prompt_pool(split: datasets.Dataset, kinds: Sequence[str]) -> dict[str, list[str]]:
    """The distinct prompts of each kind in a micro-world split, in a stable order."""
    pool: dict[str, list[str]] = {kind: [] for kind in kinds}
    seen: set[str] = set()
    for row in split:
        if row["kind"] in pool and row["prompt"] not in seen:
            seen.add(row["prompt"])
            pool[row["kind"]].append(row["prompt"])
    empty = [kind for kind, prompts in pool.items() if not prompts]
    if empty:
        raise ValueError(f"the micro-world split has no prompts of kind {empty}; give them weight 0 or a larger world")
    return pool


def kind_counts(weights: Mapping[str, float], total: int) -> dict[str, int]:
    """Split `total` prompts over the kinds by weight (largest remainders get the leftovers)."""
    norm = sum(weights.values())
    exact = {kind: total * weight / norm for kind, weight in weights.items() if weight > 0}
    counts = {kind: int(value) for kind, value in exact.items()}
    for kind in sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True)[:total - sum(counts.values())]:
        counts[kind] += 1
    return counts


def prompts_for_step(pool: Mapping[str, Sequence[str]], weights: Mapping[str, float], count: int, seed: int,
                     step: int) -> list[str]:
    """`count` prompts for training step `step`: the mix by weight, shuffled; a pure function of its arguments."""
    rng = random.Random(f"{seed}/{step}")
    chosen = []
    for kind, number in kind_counts(weights, count).items():
        prompts = pool[kind]
        chosen.extend(rng.sample(list(prompts), number) if number <= len(prompts) else rng.choices(prompts, k=number))
    rng.shuffle(chosen)
    return chosen
