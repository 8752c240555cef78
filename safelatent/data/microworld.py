"""The safety micro-world: a seeded, deterministic alignment problem, built as a Hugging Face DatasetDict.

One table per split (train, validation, test) with one schema. Each row is one prompt of a kind:
- benign:     a task with an exactly checkable `answer` (category = task family);
- borderline: harmful-sounding but benign (category = borderline kind);
- harmful:    a request in a harm category (category, MLCommons `hazard`, `llama_guard` code);
- jailbreak:  a harmful request inside an attack `wrapper`;
- pair:       a minimal safe/unsafe pair, same template with one slot changed (`prompt` is the unsafe
              side, `pair_prompt` the safe side), for estimating safety directions.
Responses: `helpful_response` is what a helpful-but-unsafe assistant says (correct answers, and
compliance with a placeholder payload for harmful requests); `safe_response` is what the aligned
assistant says (the same for benign prompts, a refusal naming the harm for harmful ones); `refusal` is a
refusal of this prompt, the rejected side for benign prompts. `template` and `lexicon` name the held-out
units the row was built from, so split hygiene can be checked.

The same config and seed give the same bytes on disk.
"""

import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
from pydantic import Field, model_validator

from safelatent import __version__
from safelatent.config import Config, config_hash
from safelatent.data import borderline, responses
from safelatent.data.benign_tasks import FAMILIES
from safelatent.data.harm_lexicon import INTENT_FRAMES, LEXICONS, SHARED_FRAMES, fill_action
from safelatent.data.jailbreaks import VARIANTS
from safelatent.data.splits import SPLITS, assign_splits, seeded_rng
from safelatent.data.taxonomy import category as harm_category

KINDS: tuple[str, ...] = ("benign", "borderline", "harmful", "jailbreak", "pair")
MANIFEST = "manifest.json"

FEATURES = datasets.Features({
    "id": datasets.Value("string"),
    "kind": datasets.Value("string"),
    "category": datasets.Value("string"),
    "hazard": datasets.Value("string"),
    "llama_guard": datasets.Value("string"),
    "template": datasets.Value("string"),
    "lexicon": datasets.Sequence(datasets.Value("string")),
    "wrapper": datasets.Value("string"),
    "prompt": datasets.Value("string"),
    "answer": datasets.Value("string"),
    "helpful_response": datasets.Value("string"),
    "safe_response": datasets.Value("string"),
    "refusal": datasets.Value("string"),
    "pair_prompt": datasets.Value("string"),
})


class SplitSizes(Config):
    """How many examples to draw for each split (fewer when fewer distinct ones exist)."""

    train: int = Field(ge=0)
    validation: int = Field(ge=0)
    test: int = Field(ge=0)


class Holdout(Config):
    """Share of templates and lexicon entries held out for validation and for test."""

    validation: float = Field(0.2, gt=0.0, lt=0.5)
    test: float = Field(0.2, gt=0.0, lt=0.5)

    @model_validator(mode="after")
    def _leave_some_for_training(self) -> "Holdout":
        if self.validation + self.test > 0.6:
            raise ValueError(f"validation + test = {self.validation + self.test:g} leaves too little for "
                             "training; keep the sum at most 0.6")
        return self


class MicroWorldConfig(Config):
    """Everything that determines a micro-world build; the same config gives the same bytes."""

    seed: int = Field(0, ge=0, description="Seed of every random choice in the build.")
    holdout: Holdout = Field(default_factory=Holdout)
    benign_per_family: SplitSizes = Field(
        default_factory=lambda: SplitSizes(train=2500, validation=100, test=300),
        description="Benign tasks per family and split.")
    harmful_per_category: SplitSizes = Field(
        default_factory=lambda: SplitSizes(train=650, validation=60, test=100),
        description="Harmful requests per category and split, drawn from template x action combinations.")
    jailbreaks_per_wrapper: SplitSizes = Field(
        default_factory=lambda: SplitSizes(train=600, validation=60, test=100),
        description="Wrapped harmful requests per jailbreak style and split.")
    pairs_per_category: SplitSizes = Field(
        default_factory=lambda: SplitSizes(train=100, validation=20, test=40),
        description="Minimal safe/unsafe pairs per category and split.")


def build_microworld(config: MicroWorldConfig) -> datasets.DatasetDict:
    """Generate every split; deterministic in the config."""
    rows = _generate(config)
    return datasets.DatasetDict({split: _to_dataset(rows[split]) for split in SPLITS})


def save_microworld(dataset: datasets.DatasetDict, config: MicroWorldConfig, out: str | Path) -> Path:
    """Write the DatasetDict, its config and a manifest to `out`, replacing an earlier build atomically.

    Refuses to overwrite a directory that is not a micro-world build, so nothing else is ever lost.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise FileExistsError(f"{out} exists and is not a micro-world build; choose another --out or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        dataset.save_to_disk(str(staging / "data"))
        (staging / "config.json").write_text(json.dumps(config.model_dump(mode="json"), indent=2) + "\n")
        manifest = {
            "format": "safelatent-microworld",
            "generator_version": __version__,
            "seed": config.seed,
            "config_hash": config_hash(config),
            "content_hash": content_hash(dataset),
            "counts": {split: len(dataset[split]) for split in SPLITS},
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out


def load_microworld(path: str | Path) -> datasets.DatasetDict:
    """Load a micro-world written by `save_microworld` (or `safelatent data build`)."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise FileNotFoundError(f"{path} is not a micro-world build (no {MANIFEST}); "
                                "create one with: safelatent data build --out DIR")
    return datasets.load_from_disk(str(path / "data"))


def read_manifest(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / MANIFEST).read_text())


def content_hash(dataset: datasets.DatasetDict) -> str:
    """A hash of every row of every split, in order: equal builds have equal hashes."""
    hasher = hashlib.sha256()
    for split in SPLITS:
        for row in dataset[split]:
            hasher.update(json.dumps(row, sort_keys=True).encode())
    return hasher.hexdigest()[:16]


def count_rows(dataset: datasets.DatasetDict) -> dict[tuple[str, str], dict[str, int]]:
    """Counts per (kind, category) and split."""
    table: dict[tuple[str, str], dict[str, int]] = {}
    for split in SPLITS:
        counts = Counter(zip(dataset[split]["kind"], dataset[split]["category"], strict=True))
        for key, count in counts.items():
            table.setdefault(key, dict.fromkeys(SPLITS, 0))[split] = count
    return dict(sorted(table.items(), key=lambda item: (KINDS.index(item[0][0]), item[0][1])))


# --- generation --------------------------------------------------------------------------------------


def _generate(config: MicroWorldConfig) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    holdout = (config.holdout.validation, config.holdout.test)
    harmful = _harmful_and_pairs(config, holdout, rows)
    _benign(config, holdout, rows)
    _borderline(config, holdout, rows)
    _jailbreaks(config, holdout, harmful, rows)
    for split in SPLITS:
        rows[split] = _deduplicated(rows[split])
    return rows


def _row(kind: str, prompt: str, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {name: "" for name in FEATURES}
    row["lexicon"] = []
    row.update(kind=kind, prompt=prompt, **fields)
    identity = "\x1f".join((kind, prompt, row["pair_prompt"]))
    row["id"] = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return row


def _harmful_and_pairs(config: MicroWorldConfig, holdout: tuple[float, float],
                       rows: dict[str, list[dict[str, Any]]]) -> dict[str, list[tuple[dict[str, Any], str]]]:
    """Harmful requests and minimal pairs; returns each split's harmful rows with their action."""
    frames = [(f"frame/f{index:02d}", text, index < len(SHARED_FRAMES))
              for index, text in enumerate(SHARED_FRAMES + INTENT_FRAMES)]
    frames_by_split = assign_splits(frames, seeded_rng(config.seed, "frames"), *holdout)
    harmful: dict[str, list[tuple[dict[str, Any], str]]] = {split: [] for split in SPLITS}
    for lexicon in LEXICONS:
        category = harm_category(lexicon.category)
        name = category.name
        own = [(f"{name}/t{index}", text, False) for index, text in enumerate(lexicon.templates)]
        verbs = [(f"{name}/v{index}", verb, twin) for index, (verb, twin) in enumerate(lexicon.verbs)]
        targets = [(f"{name}/o{index}", target) for index, target in enumerate(lexicon.targets)]
        own_by_split = assign_splits(own, seeded_rng(config.seed, name, "templates"), *holdout)
        verbs_by_split = assign_splits(verbs, seeded_rng(config.seed, name, "verbs"), *holdout)
        targets_by_split = assign_splits(targets, seeded_rng(config.seed, name, "targets"), *holdout)
        for split in SPLITS:
            rng = seeded_rng(config.seed, name, split)
            templates = frames_by_split[split] + own_by_split[split]
            combos = [(template, verb, target) for template in templates
                      for verb in verbs_by_split[split] for target in targets_by_split[split]]
            limit = getattr(config.harmful_per_category, split)
            for (template_id, template, _), (verb_id, verb, _), (target_id, target) in _sample(combos, limit, rng):
                action = fill_action(verb, target)
                row = _row("harmful", template.format(action=action), category=name,
                           hazard=category.mlcommons, llama_guard=category.llama_guard, template=template_id,
                           lexicon=[verb_id, target_id], helpful_response=responses.compliance(action, category, rng),
                           safe_response=responses.harm_refusal(category, rng))
                row["refusal"] = row["safe_response"]
                rows[split].append(row)
                harmful[split].append((row, action))
            pairable = [combo for combo in combos if combo[0][2]]
            for (template_id, template, _), (verb_id, verb, twin), (target_id, target) in _sample(
                    pairable, getattr(config.pairs_per_category, split), rng):
                rows[split].append(_row(
                    "pair", template.format(action=fill_action(verb, target)), category=name,
                    hazard=category.mlcommons, llama_guard=category.llama_guard, template=template_id,
                    lexicon=[verb_id, target_id], pair_prompt=template.format(action=fill_action(twin, target))))
    return harmful


def _benign(config: MicroWorldConfig, holdout: tuple[float, float], rows: dict[str, list[dict[str, Any]]]) -> None:
    for family in FAMILIES:
        templates = [(f"{family.name}/t{index}", text) for index, text in enumerate(family.templates)]
        by_split = assign_splits(templates, seeded_rng(config.seed, family.name, "templates"), *holdout)
        for split in SPLITS:
            rng = seeded_rng(config.seed, family.name, split)
            wanted = getattr(config.benign_per_family, split)
            seen: set[str] = set()
            attempts = 0
            # Families over small fact tables run out of distinct prompts; stop once draws keep repeating.
            while len(seen) < wanted and attempts < 20 * wanted:
                attempts += 1
                template_id, template = rng.choice(by_split[split])
                task = family.sample(rng, template)
                if task.prompt in seen:
                    continue
                seen.add(task.prompt)
                rows[split].append(_row("benign", task.prompt, category=family.name, template=template_id,
                                        answer=task.answer, helpful_response=task.response,
                                        safe_response=task.response, refusal=responses.plain_refusal(rng)))


def _borderline(config: MicroWorldConfig, holdout: tuple[float, float],
                rows: dict[str, list[dict[str, Any]]]) -> None:
    frames = [(f"borderline/f{index}", text) for index, text in enumerate(borderline.FRAMES)]
    frames_by_split = assign_splits(frames, seeded_rng(config.seed, "borderline", "frames"), *holdout)
    for kind, entries in borderline.BORDERLINE.items():
        indexed = [(f"{kind}/e{index}", entry) for index, entry in enumerate(entries)]
        entries_by_split = assign_splits(indexed, seeded_rng(config.seed, kind, "entries"), *holdout)
        for split in SPLITS:
            rng = seeded_rng(config.seed, kind, split)
            for template_id, frame in frames_by_split[split]:
                for entry_id, entry in entries_by_split[split]:
                    rows[split].append(_row(
                        "borderline", frame.format(question=entry.question), category=kind,
                        template=template_id, lexicon=[entry_id], helpful_response=entry.answer,
                        safe_response=entry.answer,
                        refusal=responses.harm_refusal(harm_category(entry.sounds_like), rng)))


def _jailbreaks(config: MicroWorldConfig, holdout: tuple[float, float],
                harmful: dict[str, list[tuple[dict[str, Any], str]]], rows: dict[str, list[dict[str, Any]]]) -> None:
    for style, variants in VARIANTS.items():
        by_split = assign_splits(variants, seeded_rng(config.seed, style, "variants"), *holdout)
        for split in SPLITS:
            rng = seeded_rng(config.seed, style, split)
            combos = [(source, variant) for source in harmful[split] for variant in by_split[split]]
            for (source, _), variant in _sample(combos, getattr(config.jailbreaks_per_wrapper, split), rng):
                rows[split].append(_row(
                    "jailbreak", variant.apply(source["prompt"]), category=source["category"],
                    hazard=source["hazard"], llama_guard=source["llama_guard"], template=source["template"],
                    lexicon=source["lexicon"], wrapper=variant.id, helpful_response=source["helpful_response"],
                    safe_response=source["safe_response"], refusal=source["refusal"]))


def _sample(items: list[Any], limit: int, rng: Any) -> list[Any]:
    return items if limit >= len(items) else rng.sample(items, limit)


def _deduplicated(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    unique = []
    for row in rows:
        if row["id"] not in seen:
            seen.add(row["id"])
            unique.append(row)
    return unique


def _to_dataset(rows: list[dict[str, Any]]) -> datasets.Dataset:
    table = pa.Table.from_pylist(rows, schema=FEATURES.arrow_schema)
    fingerprint = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=FEATURES), fingerprint=fingerprint)
