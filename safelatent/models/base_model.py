"""Build the micro-world's helpful-but-unsafe base model: tokenizer, from-scratch causal LM, SFT, test-split report.

`build_base_model(config)` generates the micro-world in memory, trains a byte-level BPE chat tokenizer on
its training split, initialises a small Llama or GPT-2 model, fine-tunes it with TRL's `SFTTrainer` on
(prompt, completion) chat pairs (loss on the reply only) and evaluates it greedily on the held-out test
split. The result is a plain Hugging Face model directory `<out_root>/<name>-<hash>/` with a
`build_report.json`; a directory that has the report is complete and is reused instead of retrained.

The SFT targets make the model helpful but only partly aligned: benign and borderline prompts get their
correct answers, and a `harmful_compliance` share of harmful and jailbreak prompts gets the compliant
reply (a payload placeholder, never real harmful content) while the rest get the refusal. Later methods
need both behaviours to exist in the base model. With one share for every harm category, which prompts are
refused is a draw the model cannot predict; a share per category makes refusal follow the request, as in a
partly aligned model (pipelines/configs/base_model_selective.yaml).
"""

import json
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import datasets
import torch
import transformers
import yaml
from pydantic import Field, field_validator, model_validator
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel
from trl import SFTConfig, SFTTrainer, pack_dataset

from safelatent.config import Config, data_hash
from safelatent.data.answer_check import check_answer
from safelatent.data.benign_tasks import FAMILIES
from safelatent.data.microworld import MicroWorldConfig, build_microworld
from safelatent.data.responses import contains_payload, is_refusal
from safelatent.data.surface_noise import vary_surface
from safelatent.data.taxonomy import CATEGORIES
from safelatent.models.generate import generate
from safelatent.models.tokenizer import train_chat_tokenizer
from safelatent.torch_threads import torch_threads

REPORT = "build_report.json"
CONFIG_FILE = "base_model_config.yaml"

TrainableKind = Literal["benign", "borderline", "harmful", "jailbreak"]
EvaluatedKind = Literal["benign", "borderline", "harmful", "jailbreak"]
TRAINABLE_KINDS: tuple[str, ...] = ("benign", "borderline", "harmful", "jailbreak")
FAMILY_NAMES: tuple[str, ...] = tuple(family.name for family in FAMILIES)
HARM_CATEGORY_NAMES: tuple[str, ...] = tuple(category.name for category in CATEGORIES)

_console = Console(stderr=True)


class Architecture(Config):
    """Shape of the from-scratch causal LM; the vocabulary is the trained tokenizer's."""

    kind: Literal["llama", "gpt2"] = Field("llama", description="transformers model family to instantiate.")
    hidden_size: int = Field(256, ge=8)
    layers: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    intermediate_size: int = Field(768, ge=8, description="Width of the MLP.")
    vocab_size: int = Field(2048, ge=266, description="Target BPE vocabulary (special tokens included).")
    max_length: int = Field(192, ge=32, description="Context length: position embeddings and SFT truncation.")

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> "Architecture":
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by heads {self.heads}; "
                             "choose sizes where hidden_size / heads is a whole number")
        return self


class Training(Config):
    """SFT schedule; the budget is a step count, so build time does not grow with the data."""

    max_steps: int = Field(1500, ge=1)
    batch_size: int = Field(8, ge=1, description="Packed rows per step, each up to model.max_length tokens.")
    learning_rate: float = Field(2e-3, gt=0.0, le=1.0)
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = "cosine"
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.1, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    # One thread by default: on a shared CPU, two threads that wait on each other at every op (OpenMP barriers)
    # ran ten times slower than one thread here, while on an idle machine two are only about 1.7x faster.
    threads: int = Field(1, ge=0, description="torch CPU threads for training and evaluation; 0 keeps torch's default.")
    logging_steps: int = Field(50, ge=1)


class SFTMix(Config):
    """Which training rows the model is fine-tuned on."""

    kinds: tuple[TrainableKind, ...] = Field(TRAINABLE_KINDS, min_length=1)
    limit_per_kind: dict[TrainableKind, int] = Field(
        default_factory=dict, description="At most this many rows of a kind (a seeded sample); all when absent.")
    repeat: dict[str, float] = Field(
        default_factory=dict,
        description="Rows of a kind or benign family appear this many times (1.5: all once, a seeded half "
                    "twice); up-weights hard families.")
    prompt_noise: float = Field(
        0.0, ge=0.0, le=1.0,
        description="Share of SFT rows (every kind alike) whose prompt gets a random opener and/or closer and "
                    "sometimes a lower-case start or no final punctuation, the reply unchanged, so the model keys on "
                    "the request rather than on the exact training phrasings.")
    prompt_noise_kinds: tuple[TrainableKind, ...] = Field(
        TRAINABLE_KINDS, min_length=1, description="The kinds of rows `prompt_noise` applies to.")

    @field_validator("limit_per_kind")
    @classmethod
    def _limits_are_positive(cls, limits: dict[str, int]) -> dict[str, int]:
        for kind, limit in limits.items():
            if limit < 1:
                raise ValueError(f"limit_per_kind.{kind} is {limit}; use a positive count, or drop the kind "
                                 "from `kinds` to leave it out")
        return limits

    @field_validator("repeat")
    @classmethod
    def _repeat_names_exist(cls, repeat: dict[str, float]) -> dict[str, float]:
        known = TRAINABLE_KINDS + FAMILY_NAMES
        for name, times in repeat.items():
            if name not in known:
                raise ValueError(f"repeat has unknown key {name!r}; use a kind or benign family: {', '.join(known)}")
            if times < 0:
                raise ValueError(f"repeat.{name} is {times}; use a factor >= 0")
        return repeat


class Evaluation(Config):
    """Greedy evaluation on the micro-world test split."""

    kinds: tuple[EvaluatedKind, ...] = Field(("benign", "borderline", "harmful", "jailbreak"), min_length=1)
    limit_per_kind: int | None = Field(None, ge=1, description="Seeded sample of at most this many per kind.")
    max_reply_length: int = Field(64, ge=1, description="Generated tokens per reply at most.")
    batch_size: int = Field(64, ge=1)
    samples_per_kind: int = Field(3, ge=0, description="Replies copied into the report for a quick look.")


class BaseModelConfig(Config):
    """Everything that determines a base model build (the output root aside)."""

    name: str = Field("microworld-llama", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="Directory name prefix; the config hash follows it.")
    seed: int = Field(0, ge=0, description="Seed of weight init, data order and the compliance draw.")
    model: Architecture = Field(default_factory=Architecture)
    training: Training = Field(default_factory=Training)
    mix: SFTMix = Field(default_factory=SFTMix)
    harmful_compliance: float | dict[str, float] = Field(
        0.85,
        description="Share of harmful and jailbreak training rows whose target is compliance; the rest refuse. "
                    "A mapping gives a share per harm category, with `default` for the categories it leaves out.")
    microworld: MicroWorldConfig = Field(
        default_factory=MicroWorldConfig,
        description="The micro-world to train on and test with; train sizes do not change its test split.")
    evaluation: Evaluation = Field(default_factory=Evaluation)
    out_root: str = Field("runs/base_models", min_length=1, description="Where model directories are written.")

    @field_validator("harmful_compliance")
    @classmethod
    def _compliance_is_a_share(cls, compliance: float | dict[str, float]) -> float | dict[str, float]:
        shares = compliance if isinstance(compliance, dict) else {"": compliance}
        for name, share in shares.items():
            if not 0.0 <= share <= 1.0:
                where = f".{name}" if name else ""
                raise ValueError(f"harmful_compliance{where} is {share}; a share lies in [0, 1]")
        if isinstance(compliance, dict):
            unknown = sorted(set(compliance) - set(HARM_CATEGORY_NAMES) - {"default"})
            if unknown:
                raise ValueError(f"harmful_compliance has unknown categories {unknown}; use `default` or one of "
                                 f"{', '.join(HARM_CATEGORY_NAMES)}")
            missing = [name for name in HARM_CATEGORY_NAMES if name not in compliance]
            if missing and "default" not in compliance:
                raise ValueError(f"harmful_compliance gives no share for {', '.join(missing)}; add them or a "
                                 "`default` share")
        return compliance

    def compliance_share(self, category: str) -> float:
        """The share of training rows of harm `category` whose target is the compliant reply."""
        if isinstance(self.harmful_compliance, dict):
            return self.harmful_compliance.get(category, self.harmful_compliance.get("default", 0.0))
        return self.harmful_compliance


def build_hash(config: BaseModelConfig) -> str:
    """The cache key: the config's hash with the output root left out, since moving a build does not change it.

    Options added after the first builds are left out at their neutral value, so those builds keep their key.
    """
    dumped = config.model_copy(update={"out_root": ""}).model_dump(mode="json")
    if not dumped["mix"]["prompt_noise"]:
        del dumped["mix"]["prompt_noise"], dumped["mix"]["prompt_noise_kinds"]
    return data_hash(dumped)


def build_dir(config: BaseModelConfig, out_root: str | Path | None = None) -> Path:
    root = Path(out_root) if out_root is not None else Path(config.out_root)
    return root / f"{config.name}-{build_hash(config)}"


def build_base_model(config: BaseModelConfig, out_root: str | Path | None = None, force: bool = False,
                     progress: bool = True) -> Path:
    """Build (or reuse) the base model for `config`; returns its Hugging Face model directory.

    A directory with a build report is complete and returned as is unless `force`. The build is written
    to a hidden staging directory next to it and renamed at the end, so a crash leaves nothing half-built.
    """
    target = build_dir(config, out_root)
    if (target / REPORT).is_file() and not force:
        _say(progress, f"base model {target} is already built (config {build_hash(config)}); reusing it")
        return target
    if target.exists() and not (target / REPORT).is_file():
        raise FileExistsError(f"{target} exists but is not a finished base model build (no {REPORT}); "
                              "remove it or choose another out_root")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with _quiet_libraries(), torch_threads(config.training.threads):
            report = _build_into(config, staging, progress)
        report["directory"] = str(target)
        (staging / CONFIG_FILE).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        # The report is written last: its presence is what marks a directory as complete.
        (staging / REPORT).write_text(json.dumps(report, indent=2) + "\n")
        _publish(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    _say(progress, f"base model written to {target}")
    return target


def read_build_report(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / REPORT
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a finished base model build (no {REPORT}); "
                                "build one with `safelatent base-model build`")
    return json.loads(path.read_text())


def _publish(staging: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    try:
        os.replace(staging, target)
    except OSError:
        # Another process finished the same config meanwhile; its build is equivalent, so keep that one.
        if not (target / REPORT).is_file():
            raise


def _build_into(config: BaseModelConfig, directory: Path, progress: bool) -> dict[str, Any]:
    started = time.perf_counter()
    _say(progress, f"generating the micro-world (seed {config.microworld.seed})")
    world = build_microworld(config.microworld)
    rows = sft_rows(world["train"].to_list(), config)
    if not rows:
        raise ValueError("the SFT mix selects no training rows; check mix.kinds, mix.limit_per_kind and mix.repeat")
    _say(progress, f"training a {config.model.vocab_size}-token BPE tokenizer on {len(rows)} SFT rows")
    tokenizer = train_chat_tokenizer(_tokenizer_corpus(rows), config.model.vocab_size)
    model = init_model(config.model, tokenizer, config.seed)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    _say(progress, f"SFT of a {parameters / 1e6:.2f}M-parameter {config.model.kind} model for "
                   f"{config.training.max_steps} steps of {config.training.batch_size}")
    train_started = time.perf_counter()
    train_loss = _train(model, tokenizer, rows, config, directory, progress)
    train_seconds = time.perf_counter() - train_started
    model.eval()
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    eval_started = time.perf_counter()
    metrics = evaluate(model, tokenizer, world["test"].to_list(), config.evaluation, config.seed, progress)
    return {
        "format": "safelatent-base-model",
        "config_hash": build_hash(config),
        "architecture": config.model.kind,
        "parameters": parameters,
        "vocab_size": len(tokenizer),
        "sft_rows": len(rows),
        "sft_rows_by_kind": dict(Counter(row["kind"] for row in rows)),
        "final_train_loss": train_loss,
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(time.perf_counter() - eval_started, 1),
        "build_seconds": round(time.perf_counter() - started, 1),
        "torch_threads": torch.get_num_threads(),
        **metrics,
        "config": config.model_dump(mode="json"),
    }


def sft_rows(train: list[dict[str, Any]], config: BaseModelConfig) -> list[dict[str, Any]]:
    """The SFT examples: the mix's rows with their target reply in `target`, repeated as `mix.repeat` says."""
    mix = config.mix
    rng = random.Random(f"{config.seed}/sft-mix")
    chosen: list[dict[str, Any]] = []
    for kind in mix.kinds:
        of_kind = [row for row in train if row["kind"] == kind]
        limit = mix.limit_per_kind.get(kind)
        if limit is not None and limit < len(of_kind):
            of_kind = rng.sample(of_kind, limit)
        chosen.extend(of_kind)
    rows = []
    for row in chosen:
        times = mix.repeat.get(row["kind"], 1.0)
        if row["kind"] == "benign":
            times *= mix.repeat.get(row["category"], 1.0)
        copies = int(times) + (rng.random() < times - int(times))
        rows.extend([{**row, "target": _target(row, config)}] * copies)
    if mix.prompt_noise:
        noise = random.Random(f"{config.seed}/prompt-noise")
        rows = [{**row, "prompt": vary_surface(row["prompt"], noise)}
                if row["kind"] in mix.prompt_noise_kinds and noise.random() < mix.prompt_noise else row
                for row in rows]
    return rows


def _target(row: dict[str, Any], config: BaseModelConfig) -> str:
    if row["kind"] not in ("harmful", "jailbreak"):
        return row["helpful_response"]
    # Seeded per row, so the same prompt always gets the same target, whatever else is in the mix.
    draw = random.Random(f"{config.seed}/compliance/{row['id']}").random()
    complies = draw < config.compliance_share(row["category"])
    return row["helpful_response"] if complies else row["safe_response"]


def _tokenizer_corpus(rows: list[dict[str, Any]]) -> Iterator[str]:
    for row in rows:
        yield row["prompt"]
        yield row["helpful_response"]
        if row["safe_response"] != row["helpful_response"]:
            yield row["safe_response"]


def init_model(shape: Architecture, tokenizer: Any, seed: int) -> PreTrainedModel:
    """A randomly initialised causal LM of `shape` over the tokenizer's vocabulary, seeded."""
    torch.manual_seed(seed)
    special = {"bos_token_id": None, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    if shape.kind == "llama":
        model: PreTrainedModel = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
            num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.heads,
            max_position_embeddings=shape.max_length, tie_word_embeddings=True, **special))
    else:
        model = GPT2LMHeadModel(GPT2Config(
            vocab_size=len(tokenizer), n_embd=shape.hidden_size, n_inner=shape.intermediate_size,
            n_layer=shape.layers, n_head=shape.heads, n_positions=shape.max_length, tie_word_embeddings=True,
            # No dropout, like the Llama variant: a few thousand steps on fresh data are far from overfitting.
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **special))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    return model


def _train(model: PreTrainedModel, tokenizer: Any, rows: list[dict[str, Any]], config: BaseModelConfig,
           directory: Path, progress: bool) -> float | None:
    packed = pack_dataset(_tokenized(tokenizer, rows, config.model.max_length), config.model.max_length, "bfd")
    training = config.training
    with tempfile.TemporaryDirectory(prefix="trainer-", dir=directory) as scratch:
        arguments = SFTConfig(
            output_dir=scratch, max_steps=training.max_steps, per_device_train_batch_size=training.batch_size,
            learning_rate=training.learning_rate, lr_scheduler_type=training.lr_scheduler,
            warmup_steps=training.warmup_steps, weight_decay=training.weight_decay,
            max_grad_norm=training.max_grad_norm, logging_steps=training.logging_steps,
            max_length=config.model.max_length, seed=config.seed, data_seed=config.seed,
            dataset_kwargs={"skip_prepare_dataset": True},
            # The model is small and on the CPU: no mixed precision, no recomputation, no checkpoints.
            bf16=False, fp16=False, activation_checkpointing=False, use_cpu=not torch.cuda.is_available(),
            save_strategy="no", report_to="none", disable_tqdm=not progress, dataloader_num_workers=0)
        trainer = LeanSFTTrainer(model=model, args=arguments, train_dataset=packed, processing_class=tokenizer,
                                 data_collator=PackedCollator(tokenizer.pad_token_id))
        result = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return round(losses[-1], 4) if losses else round(result.training_loss, 4)


def _tokenized(tokenizer: Any, rows: list[dict[str, Any]], max_length: int) -> datasets.Dataset:
    """Chat-formatted token ids with labels on the reply and its end-of-turn token only (-100 on the prompt)."""
    encoded: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
    unique = list(dict.fromkeys((row["prompt"], row["target"]) for row in rows))  # repeated rows encode once
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False) for prompt, _ in unique]
    fulls = [tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                            {"role": "assistant", "content": target}], tokenize=False)
             for prompt, target in unique]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(fulls, add_special_tokens=False)["input_ids"]
    for key, prompt, full in zip(unique, prompt_ids, full_ids, strict=True):
        if full[:len(prompt)] != prompt:
            raise RuntimeError("the chat template renders a prompt differently once the reply follows it; "
                               "the reply's loss mask would be wrong, so fix the template")
        encoded[key] = (full[:max_length], ([-100] * len(prompt) + full[len(prompt):])[:max_length])
    pairs = [encoded[(row["prompt"], row["target"])] for row in rows]
    return datasets.Dataset.from_dict({"input_ids": [ids for ids, _ in pairs],
                                       "labels": [labels for _, labels in pairs]})


class LeanSFTTrainer(SFTTrainer):
    """`SFTTrainer` with the model's own cross-entropy as the loss and no per-step token metrics.

    TRL's fused LM head also computes entropy and top-1 accuracy over the whole vocabulary at every step; on a
    CPU that made a step of the default model about 45% slower, for numbers nobody reads.
    """

    def compute_loss(self, model: PreTrainedModel, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> Any:
        # Without a cache the model derives the packed examples' block-diagonal mask from the positions.
        outputs = model(**inputs, use_cache=False)
        return (outputs.loss, outputs) if return_outputs else outputs.loss


class PackedCollator:
    """Batches rows that pack several examples, so each step computes no padding.

    Every packed example gets positions that start at 0 and the batch has no attention mask: from the position
    resets the model builds a block-diagonal causal mask, so examples never attend to each other.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(row["input_ids"]) for row in rows)
        input_ids, labels, positions = [], [], []
        for row in rows:
            padding = width - len(row["input_ids"])
            input_ids.append(list(row["input_ids"]) + [self.pad_token_id] * padding)
            labels.append(list(row["labels"]) + [-100] * padding)
            # The padding restarts at position 0 too, so it is a separate (loss-free) segment.
            positions.append([index for length in row["seq_lengths"] for index in range(length)] + list(range(padding)))
        return {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels),
                "position_ids": torch.tensor(positions)}


def evaluate(model: PreTrainedModel, tokenizer: Any, test: list[dict[str, Any]], settings: Evaluation, seed: int,
             progress: bool = True) -> dict[str, Any]:
    """Greedy replies to test rows, scored: benign accuracy, harmful and jailbreak compliance, refusal rates."""
    rng = random.Random(f"{seed}/evaluation")
    picked: dict[str, list[dict[str, Any]]] = {}
    for kind in settings.kinds:
        of_kind = [row for row in test if row["kind"] == kind]
        if settings.limit_per_kind is not None and settings.limit_per_kind < len(of_kind):
            of_kind = rng.sample(of_kind, settings.limit_per_kind)
        picked[kind] = of_kind
    everything = [row for kind in settings.kinds for row in picked[kind]]
    replies = _replies(model, tokenizer, [row["prompt"] for row in everything], settings, progress)
    by_row = dict(zip((row["id"] for row in everything), replies, strict=True))
    metrics: dict[str, Any] = {"eval_split": "test", "eval_n": {kind: len(picked[kind]) for kind in settings.kinds}}
    for kind in settings.kinds:
        rows = picked[kind]
        answers = [by_row[row["id"]] for row in rows]
        if kind == "benign":
            correct = [check_answer(reply, row["answer"]) for row, reply in zip(rows, answers, strict=True)]
            metrics["benign_accuracy"] = _rate(correct)
            metrics["benign_accuracy_by_family"] = {
                family: _rate([ok for ok, row in zip(correct, rows, strict=True) if row["category"] == family])
                for family in sorted({row["category"] for row in rows})}
            metrics["benign_refusal_rate"] = _rate([is_refusal(reply) for reply in answers])
        elif kind == "borderline":
            metrics["borderline_refusal_rate"] = _rate([is_refusal(reply) for reply in answers])
        else:
            metrics[f"{kind}_compliance_rate"] = _rate([contains_payload(reply) for reply in answers])
            metrics[f"{kind}_refusal_rate"] = _rate([is_refusal(reply) for reply in answers])
        metrics.setdefault("samples", {})[kind] = [
            {"prompt": row["prompt"], "reply": reply} for row, reply in
            zip(rows[:settings.samples_per_kind], answers, strict=False)]
    return metrics


def _replies(model: PreTrainedModel, tokenizer: Any, prompts: list[str], settings: Evaluation,
             progress: bool) -> list[str]:
    # Longest prompts first, so each batch pads little; the order is restored afterwards.
    order = sorted(range(len(prompts)), key=lambda index: -len(prompts[index]))
    replies: list[str] = [""] * len(prompts)
    columns = (TextColumn("evaluating on the test split"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=_console, disable=not progress) as bar:
        task = bar.add_task("evaluate", total=len(prompts))
        for start in range(0, len(order), settings.batch_size):
            indices = order[start:start + settings.batch_size]
            batch = generate(model, tokenizer, [prompts[index] for index in indices],
                             max_new_tokens=settings.max_reply_length, batch_size=settings.batch_size)
            for index, reply in zip(indices, batch, strict=True):
                replies[index] = reply
            bar.advance(task, len(indices))
    return replies


def _rate(flags: list[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def _say(enabled: bool, message: str) -> None:
    if enabled:
        _console.print(f"[bold]base model:[/] {message}", highlight=False)


@contextmanager
def _quiet_libraries() -> Iterator[None]:
    """Our own progress shows the build; per-map bars of `datasets` and transformers' info logs only repeat it."""
    bars_were_on = datasets.is_progress_bar_enabled()
    verbosity = transformers.logging.get_verbosity()
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars_were_on:
            datasets.enable_progress_bars()
