"""Labeled preference pairs (prompt, chosen ≻ rejected) for the reward model, from the micro-world and a policy.

Two sources, both split the micro-world's way (test pairs come only from test prompts, whose templates and
lexicon entries training never saw):
- micro-world responses, ordered by construction:
    harmful and jailbreak prompts   safe refusal ≻ compliance            (recipe "harmless-vs-compliance")
    harmful and jailbreak prompts   safe refusal ≻ an evasion            (recipe "refusal-vs-evasion")
    benign and borderline prompts   helpful answer ≻ an evasion          (recipe "helpful-vs-evasion")
    benign and borderline prompts   helpful answer ≻ refusal             (recipe "helpful-vs-refusal")
    benign prompts                  correct answer ≻ a wrong answer      (recipe "correct-vs-wrong")
  The wrong answer is the helpful response with its answer perturbed everywhere the response states it
  (a number shifted, two list items or letters swapped, another answer of the same task family), so it
  is a consistent, confident mistake rather than a typo next to the right answer. An evasion neither refuses
  nor does what was asked: another task's answer, a salad of the split's response words, or (to a harmful
  request) the refusal with its declining opening replaced by such words. Without these pairs the reward
  model never saw a reply of that sort, and PPO found babble that scored like a refusal; pairing evasions on
  every kind teaches "evasion is worse", not "refusal is better" (the oracle scores a refusal of a harmful
  request 10 and an evasion 5);
- a policy model's own samples: several responses per prompt at temperature > 0, every two distinct ones
  paired and ordered by a labeler (the oracle by default); pairs the labeler cannot call clearly,
  |P − ½| < min_margin, are dropped (recipe "policy-samples").
Every pair records the judge that ordered it and its probability, so each reward traces back to a judge.
"""

import dataclasses
import itertools
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import datasets
from pydantic import Field, NonNegativeInt, field_validator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from safelatent.config import Config
from safelatent.data.answer_check import ANSWER_PREFIX, check_answer
from safelatent.data.responses import PAYLOAD_PATTERN, is_refusal
from safelatent.data.splits import seeded_rng
from safelatent.data.surface_noise import vary_surface
from safelatent.judges.labeler import Labeler
from safelatent.judges.oracle import HARMFUL_KINDS, facts_from_row
from safelatent.models.generate import generate

CONSTRUCTION_JUDGE = "microworld-construction"
MICROWORLD_RECIPES: tuple[str, ...] = ("harmless-vs-compliance", "refusal-vs-evasion", "helpful-vs-refusal",
                                       "helpful-vs-evasion", "correct-vs-wrong")
RECIPES: tuple[str, ...] = (*MICROWORLD_RECIPES, "policy-samples")
SAMPLED_KINDS: tuple[str, ...] = ("benign", "borderline", "harmful", "jailbreak")

_SPELLED = re.compile(r"^[a-z](-[a-z])+$")
_INTEGER = re.compile(r"^-?\d+$")
_NUMBER_IN_TEXT = re.compile(r"(?<![\w.])-?\d+(?![\w.])")


@dataclass(frozen=True)
class PreferencePair:
    """One labeled comparison: `chosen` is the better response to `prompt` according to `judge`."""

    prompt: str
    chosen: str
    rejected: str
    kind: str  # the micro-world kind of the prompt
    recipe: str  # how the two responses were obtained, one of RECIPES
    split: str
    preference: float  # P(chosen ≻ rejected) according to the judge
    judge: str  # the version of the labeler, or CONSTRUCTION_JUDGE for pairs ordered by how they were built

    @property
    def group(self) -> str:
        return f"{self.kind}/{self.recipe}"


@dataclass(frozen=True)
class PolicySample:
    """One response a policy gave to a micro-world prompt."""

    row: dict[str, Any]
    response: str
    split: str


class PairSettings(Config):
    """How many micro-world pairs to draw for each (prompt kind, recipe) group and split."""

    train_per_group: int = Field(2000, ge=0, description="Pairs per group in the training split (fewer if fewer "
                                                         "exist).")
    test_per_group: int = Field(500, ge=0, description="Pairs per group in the test split (fewer if fewer exist).")
    train_per_recipe: dict[str, NonNegativeInt] = Field(
        default_factory=lambda: {"correct-vs-wrong": 8000},
        description="Training pairs per group for these recipes instead of train_per_group (correct-vs-wrong asks "
                    "the judge to check an answer: it needs more).")
    wrong_answers: bool = Field(True, description="Add correct ≻ wrong-answer pairs for benign tasks.")
    evasions: bool = Field(False, description="Add refusal ≻ evasion pairs for harmful and jailbreak prompts and "
                                             "helpful ≻ evasion pairs for benign and borderline ones (an evasion "
                                             "does what was asked in no way), so babble does not score like a "
                                             "refusal.")
    prompt_noise: float = Field(0.5, ge=0.0, le=1.0, description="Share of training pairs whose prompt gets a varied "
                                                                 "surface (an opener and/or closer, ...), both "
                                                                 "responses unchanged, so the judge keys on the "
                                                                 "request and not on the training phrasings.")

    @field_validator("train_per_recipe")
    @classmethod
    def _known_recipes(cls, counts: dict[str, int]) -> dict[str, int]:
        for recipe in counts:
            if recipe not in MICROWORLD_RECIPES:
                raise ValueError(f"train_per_recipe: unknown recipe {recipe!r}; micro-world pair recipes are "
                                 f"{', '.join(MICROWORLD_RECIPES)}")
        return counts


class PolicySampling(Config):
    """Sampling a policy's own responses for extra pairs and harm examples (off while train_prompts is 0)."""

    model: str | None = Field(None, description="The policy: a causal LM directory; null means the judges' "
                                                "backbone when it is a trained causal LM (not a fresh one).")
    train_prompts: int = Field(0, ge=0, description="Training prompts to sample from, spread over the kinds.")
    test_prompts: int = Field(0, ge=0, description="Test prompts to sample from, spread over the kinds.")
    samples_per_prompt: int = Field(4, ge=2, description="Responses per prompt; every two distinct ones pair up.")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    response_length: int = Field(64, ge=1, description="New tokens per sampled response at most.")
    batch_size: int = Field(32, ge=1)
    min_margin: float = Field(0.25, ge=0, lt=0.5, description="Drop pairs the labeler calls within this of ½.")

    @property
    def enabled(self) -> bool:
        return self.train_prompts > 0 or self.test_prompts > 0


# --- micro-world pairs -----------------------------------------------------------------------------------


def microworld_pairs(rows: Iterable[dict[str, Any]], split: str, per_group: int, *, seed: int = 0,
                     wrong_answers: bool = True, evasions: bool = False,
                     per_recipe: Mapping[str, int] | None = None) -> list[PreferencePair]:
    """Pairs ordered by construction from one split's rows, at most `per_group` per (kind, recipe), or
    `per_recipe[recipe]` for the recipes it names, seeded."""
    rows = list(rows)
    answers_by_family: dict[str, list[str]] = {}
    for row in rows:
        if row["kind"] == "benign":
            answers_by_family.setdefault(row["category"], []).append(row["answer"])
    groups: dict[str, list[PreferencePair]] = {}
    wrong_rng = seeded_rng(seed, "wrong-answers", split)
    evasion_rng = seeded_rng(seed, "evasions", split)
    other_answers = [row["helpful_response"] for row in rows if row["kind"] == "benign"] if evasions else []
    words = response_words(rows) if evasions else []

    def add(row: dict[str, Any], chosen: str, rejected: str, recipe: str) -> None:
        pair = PreferencePair(prompt=row["prompt"], chosen=chosen, rejected=rejected, kind=row["kind"],
                              recipe=recipe, split=split, preference=1.0, judge=CONSTRUCTION_JUDGE)
        groups.setdefault(pair.group, []).append(pair)

    for row in rows:
        if row["kind"] in HARMFUL_KINDS:
            add(row, row["safe_response"], row["helpful_response"], "harmless-vs-compliance")
            if evasions and words:
                add(row, row["safe_response"], evasion_response(row, evasion_rng, other_answers, words),
                    "refusal-vs-evasion")
        elif row["kind"] in ("benign", "borderline"):
            add(row, row["helpful_response"], row["refusal"], "helpful-vs-refusal")
            if evasions and words:
                add(row, row["helpful_response"], evasion_response(row, evasion_rng, other_answers, words),
                    "helpful-vs-evasion")
            if row["kind"] == "benign" and wrong_answers:
                wrong = wrong_answer_response(row, wrong_rng, answers_by_family[row["category"]])
                if wrong is not None:
                    add(row, row["helpful_response"], wrong, "correct-vs-wrong")
    chosen: list[PreferencePair] = []
    for group in sorted(groups):
        candidates = groups[group]
        limit = (per_recipe or {}).get(candidates[0].recipe, per_group)
        if len(candidates) > limit:
            candidates = seeded_rng(seed, "pairs", split, group).sample(candidates, limit)
        chosen.extend(candidates)
    return chosen


def with_varied_prompts(pairs: Sequence[PreferencePair], share: float, *, seed: int = 0) -> list[PreferencePair]:
    """The pairs with a seeded `share` of their prompts given a varied surface (`vary_surface`), order kept."""
    if not share:
        return list(pairs)
    rng = seeded_rng(seed, "pair-prompt-noise")
    return [dataclasses.replace(pair, prompt=vary_surface(pair.prompt, rng)) if rng.random() < share else pair
            for pair in pairs]


def response_words(rows: Iterable[dict[str, Any]]) -> list[str]:
    """The distinct words of the rows' helpful and safe responses (no payload markers), sorted: salad material."""
    words: set[str] = set()
    for row in rows:
        for column in ("helpful_response", "safe_response"):
            words.update(word for word in row[column].split() if not PAYLOAD_PATTERN.search(word))
    return sorted(words)


def evasion_response(row: dict[str, Any], rng: random.Random, other_answers: Sequence[str],
                     words: Sequence[str]) -> str:
    """A reply to the row's prompt that does what it asks for in no way (see the module docstring), seeded.

    Harmful and jailbreak rows: another task's answer, a salad of response words, or the row's refusal with its
    declining opening replaced by such words; never a refusal. Benign and borderline rows: another task's answer
    or a salad, never one that states the row's own answer.
    """
    harmful = row["kind"] in HARMFUL_KINDS
    forms = ("off-topic", "salad", "garbled-refusal") if harmful else ("off-topic", "salad")
    while True:
        form = rng.choice(forms if other_answers else forms[1:])
        if form == "off-topic":
            text = rng.choice(other_answers)
        elif form == "salad":
            text = _salad(words, rng, rng.randint(4, 18))
        else:
            refusal = row["safe_response"].split()
            cut = rng.randint(2, max(2, len(refusal) // 2))
            text = " ".join([_salad(words, rng, rng.randint(1, 3)), *refusal[cut:]])
        answers = not harmful and (text == row["helpful_response"] or (
            row["kind"] == "benign" and check_answer(text, row["answer"])))
        if not is_refusal(text) and not answers:
            return text


def _salad(words: Sequence[str], rng: random.Random, count: int) -> str:
    text = " ".join(rng.choice(words) for _ in range(count))
    return text[0].upper() + text[1:]


def wrong_answer_response(row: dict[str, Any], rng: random.Random, family_answers: Sequence[str]) -> str | None:
    """The benign row's helpful response stating a plausible wrong answer instead, or None if none can be made."""
    answer, response = row["answer"], row["helpful_response"]
    wrong = _wrong_answer(answer, row["category"], row["prompt"], rng, family_answers)
    statement, marker, _ = response.rpartition(ANSWER_PREFIX)
    if wrong is None or not marker:
        return None
    # The statement says the answer too ("12 + 7 = 19."): change its last mention so the mistake is consistent.
    mentions = list(re.finditer(rf"(?<![\w-]){re.escape(answer)}(?![\w-])", statement))
    if mentions:
        last = mentions[-1]
        statement = statement[:last.start()] + wrong + statement[last.end():]
    candidate = f"{statement}{ANSWER_PREFIX} {wrong}"
    return None if check_answer(candidate, answer) else candidate


def _wrong_answer(answer: str, family: str, prompt: str, rng: random.Random,
                  family_answers: Sequence[str]) -> str | None:
    if _SPELLED.match(answer):
        letters = answer.split("-")
        positions = [index for index in range(len(letters) - 1) if letters[index] != letters[index + 1]]
        if not positions:
            return "-".join(letters[:-1])
        index = rng.choice(positions)
        letters[index], letters[index + 1] = letters[index + 1], letters[index]
        return "-".join(letters)
    if ", " in answer:
        items = answer.split(", ")
        positions = [(i, j) for i, j in itertools.combinations(range(len(items)), 2) if items[i] != items[j]]
        if not positions:
            return None
        i, j = rng.choice(positions)
        items[i], items[j] = items[j], items[i]
        return ", ".join(items)
    if _INTEGER.match(answer):
        value = int(answer)
        others = [int(number) for number in _NUMBER_IN_TEXT.findall(prompt) if int(number) != value]
        if family == "comparison" and others:
            return str(rng.choice(others))  # picking the other number is the mistake a comparison invites
        step = rng.choice((1, 2, 10))
        shifted = value + step if value - step < 0 or rng.random() < 0.5 else value - step
        return str(shifted)
    alternatives = sorted({other for other in family_answers if other != answer})
    return rng.choice(alternatives) if alternatives else None


# --- a policy's own samples --------------------------------------------------------------------------------


def sample_policy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: Sequence[dict[str, Any]],
                  split: str, settings: PolicySampling, *, prompts: int, seed: int = 0) -> list[PolicySample]:
    """`samples_per_prompt` responses from the policy to each of `prompts` rows, spread evenly over the kinds."""
    chosen_rows = spread_over_kinds(rows, prompts, seeded_rng(seed, "policy-prompts", split))
    repeated = [row for row in chosen_rows for _ in range(settings.samples_per_prompt)]
    responses = generate(model, tokenizer, [row["prompt"] for row in repeated], max_new_tokens=settings.response_length,
                         temperature=settings.temperature, top_p=settings.top_p, batch_size=settings.batch_size,
                         seed=seed)
    return [PolicySample(row=row, response=response, split=split)
            for row, response in zip(repeated, responses, strict=True)]


def spread_over_kinds(rows: Sequence[dict[str, Any]], count: int, rng: random.Random) -> list[dict[str, Any]]:
    """Up to `count` rows, as evenly spread over SAMPLED_KINDS as the rows allow."""
    by_kind = {kind: [row for row in rows if row["kind"] == kind] for kind in SAMPLED_KINDS}
    for kind_rows in by_kind.values():
        rng.shuffle(kind_rows)
    chosen: list[dict[str, Any]] = []
    index = 0
    # Round-robin over kinds, so a kind with few rows gives what it has and the others fill the rest.
    while len(chosen) < count and any(index < len(kind_rows) for kind_rows in by_kind.values()):
        chosen.extend(kind_rows[index] for kind_rows in by_kind.values() if index < len(kind_rows))
        index += 1
    return chosen[:count]


def policy_sample_pairs(samples: Sequence[PolicySample], labeler: Labeler, *,
                        min_margin: float = 0.25) -> list[PreferencePair]:
    """Pair every two distinct responses to the same prompt and order them by the labeler, both orders asked."""
    by_prompt: dict[tuple[str, str], list[PolicySample]] = {}
    for sample in samples:
        by_prompt.setdefault((sample.split, sample.row["id"]), []).append(sample)
    candidates: list[tuple[PolicySample, str, str]] = []
    for group in by_prompt.values():
        distinct = list(dict.fromkeys(sample.response for sample in group))
        candidates.extend((group[0], a, b) for a, b in itertools.combinations(distinct, 2))
    if not candidates:
        return []
    probabilities = labeler.prefer_batch([sample.row["prompt"] for sample, _, _ in candidates],
                                         [a for _, a, _ in candidates], [b for _, _, b in candidates],
                                         [facts_from_row(sample.row) for sample, _, _ in candidates])
    pairs = []
    for (sample, a, b), probability in zip(candidates, probabilities, strict=True):
        if abs(probability - 0.5) < min_margin:
            continue
        chosen, rejected = (a, b) if probability > 0.5 else (b, a)
        pairs.append(PreferencePair(prompt=sample.row["prompt"], chosen=chosen, rejected=rejected,
                                    kind=sample.row["kind"], recipe="policy-samples", split=sample.split,
                                    preference=max(probability, 1.0 - probability), judge=labeler.version))
    return pairs


def pairs_to_dataset(pairs: Sequence[PreferencePair]) -> datasets.Dataset:
    """The pairs as a Hugging Face Dataset (prompt, chosen, rejected and the labels' provenance)."""
    return datasets.Dataset.from_list([asdict(pair) for pair in pairs])
