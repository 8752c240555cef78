"""Build the learned judges (reward model and harm classifier) from one config, evaluate them on held-out test data.

`build_judges` generates the micro-world, finds or makes a backbone (a given causal LM directory, the base
model built from its config, or a fresh small Llama with a tokenizer trained on micro-world text), builds
preference pairs and harm examples (plus a policy's own samples when asked), trains both judges, measures
them on the test split (pairwise accuracy; classification accuracy; each with n and a 95% interval, overall
and per group) and writes

    <out_root>/judges-<key>/reward_model/       a RewardModel (Hugging Face format + judge.json)
    <out_root>/judges-<key>/harm_classifier/    a HarmClassifier
    <out_root>/judges-<key>/judges_report.json  accuracies, judge versions, constitution hash, times
    <out_root>/judges-<key>/config.yaml         the config, readable by load_config

where <key> is the config hash (folded with the base model config's hash when one is used). A complete
build is reused unless force=True; a build is staged in a hidden directory and renamed into place at the
end, so an interrupted build never looks complete.
"""

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from rich.console import Console

from safelatent import __version__
from safelatent.config import Config, config_hash, data_hash, dump_config, load_config
from safelatent.data.microworld import MicroWorldConfig, build_microworld
from safelatent.judges.accuracy import Accuracy, grouped_accuracy
from safelatent.judges.backbone import FreshBackboneSettings, microworld_texts, write_fresh_backbone
from safelatent.judges.constitution import load_constitution
from safelatent.judges.harm_classifier import (
    HarmClassifierSettings,
    harm_correct,
    train_harm_classifier,
)
from safelatent.judges.harm_examples import (
    HarmExampleSettings,
    class_counts,
    microworld_harm_examples,
    policy_harm_examples,
    with_obfuscated_prompts,
)
from safelatent.judges.labeler import LabelerConfig, make_labeler
from safelatent.judges.layout import HARM_CLASSIFIER_DIR, REPORT, REWARD_MODEL_DIR, is_complete, read_report
from safelatent.judges.preferences import (
    PairSettings,
    PolicySample,
    PolicySampling,
    microworld_pairs,
    policy_sample_pairs,
    sample_policy,
    with_varied_prompts,
)
from safelatent.judges.reward_model import RewardModelSettings, pairwise_wins, train_reward_model
from safelatent.models.loading import DeviceName, load
from safelatent.torch_threads import torch_threads

TEST_SPLIT = "test"


class JudgesConfig(Config):
    """Everything that determines a judges build; the same config gives the same judges."""

    seed: int = Field(0, ge=0, description="Seed of data sampling, initialisation and training order.")
    out_root: str = Field("runs/judges", description="Builds go to <out_root>/judges-<config hash>/.")
    backbone: str | None = Field(None, description="A causal LM directory to initialise both judges from; null "
                                                   "(with base_model_config null) for a fresh small Llama.")
    base_model_config: str | None = Field(None, description="A base-model YAML: the base model is built (or reused "
                                                            "from its cache) and becomes the backbone.")
    fresh_backbone: FreshBackboneSettings = Field(default_factory=FreshBackboneSettings)
    device: DeviceName = Field("auto", description="Where judges train and run: auto is cuda when available.")
    # One thread by default: on a shared CPU, threads that wait on each other at every op ran several times
    # slower than one thread here (the base-model build measured the same).
    threads: int = Field(1, ge=0, description="torch CPU threads while building; 0 keeps torch's default.")
    microworld: MicroWorldConfig = Field(default_factory=MicroWorldConfig)
    constitution: str | None = Field(None, description="Constitution YAML recorded with the judges (and used by "
                                                       "an hf/openai labeler without its own); null: packaged.")
    labeler: LabelerConfig = Field(default_factory=LabelerConfig,
                                   description="The judge that orders pairs of policy samples.")
    pairs: PairSettings = Field(default_factory=PairSettings)
    policy_samples: PolicySampling = Field(default_factory=PolicySampling)
    harm_examples: HarmExampleSettings = Field(default_factory=HarmExampleSettings)
    reward_model: RewardModelSettings = Field(default_factory=RewardModelSettings)
    harm_classifier: HarmClassifierSettings = Field(default_factory=HarmClassifierSettings)

    @model_validator(mode="after")
    def _one_backbone_and_a_policy(self) -> "JudgesConfig":
        if self.backbone and self.base_model_config:
            raise ValueError("set backbone or base_model_config, not both: each names the model the judges start from")
        if self.policy_samples.enabled and not (self.policy_samples.model or self.backbone or self.base_model_config):
            raise ValueError("policy_samples needs a policy to sample from: set policy_samples.model, or a backbone "
                             "or base_model_config (a fresh backbone is untrained and cannot write responses), or "
                             "set policy_samples.train_prompts and test_prompts to 0")
        return self


def content_hash(config: JudgesConfig) -> str:
    """The config's hash without the output root, and as if built on one thread (neither changes what is built,
    so a build made with more threads is reused by a run that names the default). Options added after the first
    builds are left out at their neutral value, so those builds keep their key."""
    dumped = config.model_copy(update={"out_root": "", "threads": 1}).model_dump(mode="json")
    if not dumped["pairs"]["prompt_noise"]:
        del dumped["pairs"]["prompt_noise"]
    if not dumped["pairs"]["train_per_recipe"]:
        del dumped["pairs"]["train_per_recipe"]
    if not dumped["pairs"]["evasions"]:
        del dumped["pairs"]["evasions"]
    return data_hash(dumped)


def build_key(config: JudgesConfig) -> str:
    """The cache key of a build: the config hash (without the output root: moving a build does not change it),
    folded with the base model's build hash when one is used."""
    key = content_hash(config)
    if config.base_model_config:
        base_config_class, _, base_build_hash = _base_model_api()
        base_hash = base_build_hash(load_config(base_config_class, config.base_model_config))
        key = hashlib.sha256(f"{key}/{base_hash}".encode()).hexdigest()[:12]
    return key


def judges_dir(config: JudgesConfig) -> Path:
    return Path(config.out_root) / f"judges-{build_key(config)}"


def build_judges(config: JudgesConfig, force: bool = False, progress: bool = True) -> Path:
    """Train, evaluate and save both judges; returns their directory (reused as is when already complete)."""
    console = Console(stderr=True, quiet=not progress)
    key = build_key(config)
    target = Path(config.out_root) / f"judges-{key}"
    if is_complete(target) and not force:
        console.print(f"judges {key}: reusing the complete build in {target} (force=True rebuilds it)")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".judges-{key}.", dir=target.parent))
    started = time.perf_counter()
    try:
        with torch_threads(config.threads):
            report = _build(config, key, staging, console, progress)
        report["wall_seconds"] = round(time.perf_counter() - started, 1)
        (staging / REPORT).write_text(json.dumps(report, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    for line in summary_lines(read_report(target)):
        console.print(line, highlight=False)
    console.print(f"judges written to {target}", highlight=False)
    return target


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A few lines that say what a build measured, for a terminal."""
    reward, harm = report["reward_model"], report["harm_classifier"]

    def metric(value: dict[str, Any]) -> str:
        low, high = value["ci95"]
        return f"{value['value']:.1%} (n={value['n']}, 95% CI {low:.1%}–{high:.1%})"

    return [
        f"judges {report['key']} on backbone {report['backbone']['description']}, "
        f"constitution {report['constitution']['hash']}",
        f"reward model: test pairwise accuracy {metric(reward['test_pairwise_accuracy'])}, "
        f"trained in {reward['train_seconds']:.0f}s on {reward['train_pairs']} pairs",
        f"harm classifier: test accuracy {metric(harm['test_accuracy'])}, "
        f"trained in {harm['train_seconds']:.0f}s on {harm['train_examples']} examples",
    ]


# --- the build -----------------------------------------------------------------------------------------


def _build(config: JudgesConfig, key: str, staging: Path, console: Console, progress: bool) -> dict[str, Any]:
    constitution = load_constitution(config.constitution)
    with console.status("generating the micro-world"):
        microworld = build_microworld(config.microworld)
    train_rows, test_rows = list(microworld["train"]), list(microworld[TEST_SPLIT])

    backbone, backbone_info = _backbone(config, staging, train_rows, console, progress)

    train_pairs = microworld_pairs(train_rows, "train", config.pairs.train_per_group, seed=config.seed,
                                   wrong_answers=config.pairs.wrong_answers, evasions=config.pairs.evasions,
                                   per_recipe=config.pairs.train_per_recipe)
    pairs = {"train": with_varied_prompts(train_pairs, config.pairs.prompt_noise, seed=config.seed),
             TEST_SPLIT: microworld_pairs(test_rows, TEST_SPLIT, config.pairs.test_per_group, seed=config.seed,
                                          wrong_answers=config.pairs.wrong_answers,
                                          evasions=config.pairs.evasions)}
    examples = {"train": microworld_harm_examples(train_rows, "train", config.harm_examples.train_per_group,
                                                  seed=config.seed),
                TEST_SPLIT: microworld_harm_examples(test_rows, TEST_SPLIT, config.harm_examples.test_per_group,
                                                     seed=config.seed)}
    labeler_version = None
    samples: dict[str, list[PolicySample]] = {"train": [], TEST_SPLIT: []}
    if config.policy_samples.enabled:
        labeler = make_labeler(_labeler_config(config))
        labeler_version = labeler.version
        samples = _policy_samples(config, backbone, {"train": train_rows, TEST_SPLIT: test_rows}, console)
        for split, split_samples in samples.items():
            with console.status(f"labeling pairs of {split} policy samples with {labeler.version}"):
                pairs[split] += policy_sample_pairs(split_samples, labeler,
                                                    min_margin=config.policy_samples.min_margin)
            examples[split] += policy_harm_examples(split_samples)
    console.print(f"data: {len(pairs['train'])} train / {len(pairs[TEST_SPLIT])} test pairs, "
                  f"{len(examples['train'])} train / {len(examples[TEST_SPLIT])} test harm examples", highlight=False)

    console.print(f"training the reward model on {len(pairs['train'])} pairs", highlight=False)
    clock = time.perf_counter()
    reward_model = train_reward_model(backbone, pairs["train"], config.reward_model,
                                      version=f"reward-model:judges-{key}", seed=config.seed, device=config.device,
                                      progress=progress)
    reward_seconds = time.perf_counter() - clock
    with console.status("measuring the reward model on test pairs"):
        wins = pairwise_wins(reward_model, pairs[TEST_SPLIT])
    reward_model.save(staging / REWARD_MODEL_DIR)
    del reward_model

    harm_train = with_obfuscated_prompts(examples["train"], config.harm_examples.obfuscated_prompt_share,
                                         config.harm_examples.obfuscation_rate, seed=config.seed)
    console.print(f"training the harm classifier on {len(harm_train)} examples", highlight=False)
    clock = time.perf_counter()
    classifier = train_harm_classifier(backbone, harm_train, config.harm_classifier,
                                       version=f"harm-classifier:judges-{key}", seed=config.seed,
                                       device=config.device, progress=progress)
    harm_seconds = time.perf_counter() - clock
    with console.status("measuring the harm classifier on test examples"):
        correct = harm_correct(classifier, examples[TEST_SPLIT])
    classifier.save(staging / HARM_CLASSIFIER_DIR)

    if backbone_info["source"] == "fresh":
        shutil.rmtree(backbone)  # its tokenizer is saved with each judge; the random weights are not worth keeping
    dump_config(config, staging / "config.yaml")
    return {
        "format": "safelatent-judges",
        "safelatent_version": __version__,
        "key": key,
        "config_hash": content_hash(config),
        "seed": config.seed,
        "created_unix": int(time.time()),
        "backbone": backbone_info,
        "constitution": {"name": constitution.name, "version": constitution.version,
                         "hash": constitution.version_hash},
        "labeler": labeler_version,
        "data": {
            "microworld_config_hash": config_hash(config.microworld),
            "policy_samples": {split: len(split_samples) for split, split_samples in samples.items()},
            "harm_example_classes": {split: class_counts(split_examples) for split, split_examples in examples.items()},
        },
        "reward_model": {
            "version": f"reward-model:judges-{key}",
            "path": REWARD_MODEL_DIR,
            "train_pairs": len(pairs["train"]),
            "train_seconds": round(reward_seconds, 1),
            "test_pairwise_accuracy": Accuracy.of(wins).to_dict(),
            "test_by_group": _by_group(wins, [pair.group for pair in pairs[TEST_SPLIT]]),
        },
        "harm_classifier": {
            "version": f"harm-classifier:judges-{key}",
            "path": HARM_CLASSIFIER_DIR,
            "threshold": config.harm_classifier.threshold,
            "train_examples": len(harm_train),
            "train_seconds": round(harm_seconds, 1),
            "test_accuracy": Accuracy.of(correct).to_dict(),
            "test_by_group": _by_group(correct, [example.group for example in examples[TEST_SPLIT]]),
        },
    }


def _by_group(outcomes: list[bool], groups: list[str]) -> dict[str, Any]:
    return {group: accuracy.to_dict() for group, accuracy in grouped_accuracy(outcomes, groups).items()}


def _base_model_api() -> tuple[type, Any, Any]:
    # Imported only when a base model is asked for, so judges build without the base-model module's weight.
    from safelatent.models.base_model import BaseModelConfig, build_base_model, build_hash

    return BaseModelConfig, build_base_model, build_hash


def _backbone(config: JudgesConfig, staging: Path, train_rows: list[dict[str, Any]], console: Console,
              progress: bool) -> tuple[Path, dict[str, Any]]:
    if config.backbone:
        path = Path(config.backbone)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"backbone {path} (from the judges config) is not a Hugging Face model directory; "
                                    "give a saved causal LM directory, or backbone: null for a fresh small Llama")
        return path, {"source": "path", "path": str(path), "description": str(path)}
    if config.base_model_config:
        base_config_class, build_base_model, base_build_hash = _base_model_api()
        base_config = load_config(base_config_class, config.base_model_config)
        console.print(f"building (or reusing) the base model from {config.base_model_config}", highlight=False)
        path = Path(build_base_model(base_config, progress=progress))
        return path, {"source": "base_model", "path": str(path), "base_model_config": config.base_model_config,
                      "base_model_build_hash": base_build_hash(base_config), "description": f"base model {path}"}
    with console.status("training a tokenizer and initialising a fresh backbone"):
        path = write_fresh_backbone(config.fresh_backbone, microworld_texts(train_rows), staging / "fresh_backbone",
                                    seed=config.seed)
    settings = config.fresh_backbone
    return path, {"source": "fresh", "settings": settings.model_dump(mode="json"),
                  "description": f"fresh Llama ({settings.num_layers} layers x {settings.hidden_size}, "
                                 f"vocab {settings.vocab_size})"}


def _labeler_config(config: JudgesConfig) -> LabelerConfig:
    # The judges' constitution applies to the labeler unless the labeler names its own.
    if config.labeler.constitution is None and config.constitution is not None:
        return config.labeler.model_copy(update={"constitution": config.constitution})
    return config.labeler


def _policy_samples(config: JudgesConfig, backbone: Path, rows: dict[str, list[dict[str, Any]]],
                    console: Console) -> dict[str, list[PolicySample]]:
    settings = config.policy_samples
    policy_path = settings.model or str(backbone)
    policy = load(policy_path, device=config.device)
    samples = {}
    for split, count in (("train", settings.train_prompts), (TEST_SPLIT, settings.test_prompts)):
        with console.status(f"sampling {settings.samples_per_prompt} responses to {count} {split} prompts from "
                            f"{policy_path}"):
            samples[split] = sample_policy(policy.model, policy.tokenizer, rows[split], split, settings,
                                           prompts=count, seed=config.seed)
    return samples
