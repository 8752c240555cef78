"""SafeSteer on Ray Train: distil a steered teacher into the model on a sparse set of safety tokens (DESIGN 6.5).

    1. teacher  ← a Ray task on the starting model: refusal-direction candidates (difference of means of harmful
                  and harmless prompt states, or of the harmful prompts the model refuses and those it answers,
                  at the last prompt positions, every layer), the one that best
                  induces refusal on held-out harmful prompts within the KL filter, then the safety tokens S by
                  voting on the teacher's own continuations
    2. student  ← Ray Train (TorchTrainer, `train.workers` ranks, DDP): each step samples replies from the
                  student to `harmful.count` harmful prompts (only those, 100 by default) and minimises the
                  reverse KL to the teacher over S; checkpoints to local storage or S3, resumable
    3. export the merged model, evaluate it and the starting model on the held-out split, log to MLflow, register

The math is in safelatent.methods.refusal_direction, safelatent.methods.safesteer and
safelatent.methods.vocab_divergence.
"""

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from rich.console import Console

from pipelines.lora_training import (
    EvaluationSettings,
    LoraPipelineConfig,
    LoraRunResult,
    Split,
    StepLog,
    base_report,
    begin,
    build_student,
    checkpoint_due,
    comparison_table,
    conclude,
    evaluate_both,
    export_student,
    rank_slice,
    saver,
    train_on_ray,
    worker_config,
)
from safelatent.config import Config
from safelatent.methods.direction_transfer import sample_rows
from safelatent.methods.learner import step_seed
from safelatent.tracking import TrackingSettings

TEACHER_FILE = "teacher.json"
REPORT_FILE = "safesteer.json"


class DirectionSettings(Config):
    """How the refusal direction is estimated and chosen. Its harmful prompts are the student's own `harmful.count`
    training prompts, split in two: the first `harmful` for the class means, the rest for choosing; so the whole
    method reads no other harmful data."""

    split: Split = "train"
    contrast: Literal["harmful_vs_harmless", "refused_vs_answered"] = Field(
        "harmful_vs_harmless",
        description="The two sets whose mean states differ by r: harmful and benign prompts (DESIGN 6.5), or, for a "
                    "partly aligned model, the harmful prompts it refuses and those it answers (no benign prompt).")
    harmful: int = Field(64, ge=2, description="Of the harmful training prompts, how many estimate the means; the "
                                               "others choose the candidate.")
    harmless: int = Field(128, ge=2, description="Benign prompts (of `split`) for the class means "
                                                 "(harmful_vs_harmless).")
    positions: list[int] = Field([-1, -2], min_length=1, description="Last prompt positions to try (negative).")
    layers: list[int] | None = Field(None, description="Layers to try; null: all.")
    selection_split: Split = "validation"
    selection_prompts: int = Field(64, ge=1, description="Harmless (benign and borderline) prompts of "
                                                         "selection_split for the KL filter.")
    scales: list[float] = Field([0.2, 0.4, 0.6, 0.8, 1.0], min_length=1, description="Strengths α to try.")
    where: Literal["all", "prompt_end"] = Field("prompt_end", description="Add α·r at every position, or only at "
                                                                          "the last prompt position.")
    max_kl: float = Field(0.35, gt=0, description="Largest KL of the first reply token on harmless prompts.")
    max_layer_fraction: float = Field(0.8, gt=0, le=1)
    refusal_prefixes: list[str] = Field(["I can't", "I won't", "Sorry", "I'm not able", "I cannot"], min_length=1)


class VotingSettings(Config):
    """How the safety tokens S are chosen."""

    prompts_from: Literal["harmless", "harmful"] = Field(
        "harmless", description="Whose continuations vote: harmless prompts (DESIGN 6.5), or the same harmful "
                                "training prompts the student sees (for a base model whose steering barely moves "
                                "its replies to harmless prompts).")
    prompts: int = Field(100, ge=1)
    num_tokens: int = Field(50, ge=1, description="|S|.")
    top_k: int = Field(10, ge=1, description="Votes per position.")
    pool: int = Field(20, ge=1, description="Only the teacher's this-many likeliest tokens at a position vote.")
    min_gain: float = Field(0.5, ge=0, description="A vote needs log π_t − log π_base at least this.")
    max_new_tokens: int = Field(16, ge=1)


class HarmfulSettings(Config):
    split: Split = "train"
    count: int = Field(100, ge=1, description="Harmful prompts the student trains on.")
    per_step: int = Field(16, ge=1, description="Prompts per step and rank.")
    max_new_tokens: int = Field(24, ge=1)
    temperature: float = Field(1.0, gt=0)


class SafeSteerConfig(LoraPipelineConfig):
    """The safesteer pipeline; `safelatent train safesteer -c pipelines/configs/safesteer.yaml key=value ...`."""

    pipeline: ClassVar[str] = "safesteer"
    name: str = Field("safesteer", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    direction: DirectionSettings = Field(default_factory=DirectionSettings)
    voting: VotingSettings = Field(default_factory=VotingSettings)
    harmful: HarmfulSettings = Field(default_factory=HarmfulSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    tracking: TrackingSettings = Field(default_factory=lambda: TrackingSettings(registered_model="safesteer"))
    out_root: str = Field("runs/safesteer", description="The run writes to <out_root>/<name>/.")

    @model_validator(mode="after")
    def _harmful_prompts_suffice(self) -> "SafeSteerConfig":
        if self.direction.harmful >= self.harmful.count:
            raise ValueError(f"direction.harmful ({self.direction.harmful}) must be below harmful.count "
                             f"({self.harmful.count}): the remaining harmful prompts choose the direction")
        return self


def run(config: SafeSteerConfig, resume: bool = False, console: Console | None = None) -> LoraRunResult:
    import ray

    from cluster.connect import connected

    console = console or Console(stderr=True)
    setup, _ = begin(config, resume, console)
    data = prompt_sets(config, setup.rows)
    try:
        with connected(config.address):
            teacher = load_teacher(setup.out) if resume and (setup.out / TEACHER_FILE).is_file() else None
            if teacher is None:
                with console.status("choosing the refusal direction and voting for the safety tokens (Ray task)"):
                    teacher = ray.get(ray.remote(prepare_teacher).options(num_cpus=1).remote(
                        setup.model, config.model_dump(mode="json"), data))
                save_teacher(setup.out, teacher)
            console.print(f"teacher: α = {teacher['scale']:g} · r at layer {teacher['layer']} (position "
                          f"{teacher['position']}, {teacher['where']}); safety tokens: "
                          f"{' '.join(teacher['tokens'][:20])}{' ...' if len(teacher['tokens']) > 20 else ''}",
                          highlight=False, markup=False)
            outcome = train_on_ray(config, train_loop, worker_config(
                config, setup, harmful=config.harmful.model_dump(), prompts=data["train_harmful"], teacher=teacher),
                resume, console)
        model_dir = export_student(setup.model, config.student, outcome.checkpoint, setup.out / "model")
        report = build_report(config, setup, teacher, outcome, evaluate_both(config, setup, model_dir, console))
        result = conclude(config, setup, model_dir, report, REPORT_FILE, {})
    except BaseException:
        setup.tracker.finish("FAILED")
        raise
    table = comparison_table(result, "SafeSteer")
    table.caption = f"model: {result.model_dir}; report: {result.out_dir / REPORT_FILE}; mlflow: {result.tracking_run}"
    console.print(table)
    return result


def prompt_sets(config: SafeSteerConfig, rows: dict[str, list[dict]]) -> dict[str, list[str]]:
    """Every prompt list the pipeline uses, drawn with the seed (fixed before anything runs)."""
    def prompts(split: str, kinds: list[str], count: int, stream: int) -> list[str]:
        drawn = sample_rows(rows[split], kinds, count, config.seed + stream)
        if not drawn:
            raise ValueError(f"the micro-world's {split} split has no rows of kind {' or '.join(kinds)}")
        return [row["prompt"] for row in drawn]

    direction, voting = config.direction, config.voting
    train_harmful = prompts(config.harmful.split, ["harmful"], config.harmful.count, 0)
    if len(train_harmful) <= direction.harmful:
        raise ValueError(f"the {config.harmful.split} split has {len(train_harmful)} harmful rows; the direction "
                         f"needs more than direction.harmful={direction.harmful}")
    return {
        "train_harmful": train_harmful,
        "direction_harmful": train_harmful[:direction.harmful],
        "direction_harmless": prompts(direction.split, ["benign"], direction.harmless, 2),
        "selection_harmful": train_harmful[direction.harmful:],
        "selection_harmless": prompts(direction.selection_split, ["benign", "borderline"],
                                      direction.selection_prompts, 4),
        "voting": (train_harmful[:voting.prompts] if voting.prompts_from == "harmful"
                   else prompts(direction.split, ["benign", "borderline"], voting.prompts, 5)),
    }


def prepare_teacher(model_path: str, config_json: dict, data: dict[str, list[str]]) -> dict[str, Any]:
    """The refusal direction and the safety tokens, computed where Ray places the task."""
    from safelatent.methods.refusal_direction import (
        candidate_directions,
        select_refusal_direction,
        split_by_refusal,
    )
    from safelatent.methods.safesteer import vote_safety_tokens
    from safelatent.models.loading import load

    config = SafeSteerConfig.model_validate(config_json)
    direction, voting = config.direction, config.voting
    torch.set_num_threads(max(config.student.threads, 1))
    loaded = load(model_path, dtype="float32")
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    positive, negative = data["direction_harmful"], data["direction_harmless"]
    if direction.contrast == "refused_vs_answered":
        positive, negative = split_by_refusal(model, tokenizer, data["direction_harmful"],
                                              refusal_prefixes=direction.refusal_prefixes)
        if len(positive) < 2 or len(negative) < 2:
            raise ValueError(f"direction.contrast=refused_vs_answered needs at least 2 harmful prompts the model "
                             f"refuses and 2 it answers; of direction.harmful={direction.harmful} it refuses "
                             f"{len(positive)} and answers {len(negative)}. Use contrast=harmful_vs_harmless for "
                             "a model that refuses all or none of them")
    candidates = candidate_directions(model, tokenizer, positive, negative, positions=direction.positions,
                                      layers=direction.layers)
    refusal = select_refusal_direction(model, tokenizer, candidates, data["selection_harmful"],
                                       data["selection_harmless"], direction.scales, where=direction.where,
                                       max_kl=direction.max_kl, max_layer_fraction=direction.max_layer_fraction,
                                       refusal_prefixes=direction.refusal_prefixes)
    from safelatent.models.lora import apply_lora

    student = apply_lora(model, config.student.lora)  # zero adapters: the teacher is `disable_adapter` + steering
    tokens = vote_safety_tokens(student, tokenizer, refusal, data["voting"], num_tokens=voting.num_tokens,
                                top_k=voting.top_k, pool=voting.pool, min_gain=voting.min_gain,
                                max_new_tokens=voting.max_new_tokens, seed=config.seed)
    if not tokens.ids:
        raise ValueError(f"no token gained at least min_gain={voting.min_gain} under the steering on the voting "
                         f"prompts; lower voting.min_gain, raise the steering strengths, or vote on harmful prompts")
    return {"direction": refusal.direction.tolist(), "layer": refusal.layer, "position": refusal.position,
            "scale": refusal.scale, "where": refusal.where, "ids": list(tokens.ids), "tokens": list(tokens.tokens),
            "votes": list(tokens.votes), "selection": refusal.summary(),
            "contrast": {"kind": direction.contrast, "positive": len(positive), "negative": len(negative)},
            "candidates": [score.to_json() for score in refusal.scores]}


def save_teacher(out: Path, teacher: dict[str, Any]) -> None:
    (out / TEACHER_FILE).write_text(json.dumps(teacher))


def load_teacher(out: Path) -> dict[str, Any]:
    return json.loads((out / TEACHER_FILE).read_text())


def refusal_from(teacher: dict[str, Any]):
    from safelatent.methods.refusal_direction import RefusalDirection

    return RefusalDirection(direction=torch.tensor(teacher["direction"]), layer=teacher["layer"],
                            position=teacher["position"], scale=teacher["scale"], where=teacher["where"])


def train_loop(loop_config: dict) -> None:
    """One Ray Train worker: on-policy distillation steps on its share of the harmful prompts."""
    from cluster.train import report
    from pipelines.lora_training import StudentSettings
    from safelatent.methods.safesteer import SafeSteerDistiller

    student_settings = StudentSettings.model_validate(loop_config["student"])
    harmful = HarmfulSettings.model_validate(loop_config["harmful"])
    student = build_student(loop_config)
    distiller = SafeSteerDistiller(student.model, student.tokenizer, refusal_from(loop_config["teacher"]),
                                   loop_config["teacher"]["ids"], student.optimizer, trained=student.trained,
                                   max_new_tokens=harmful.max_new_tokens, temperature=harmful.temperature,
                                   max_grad_norm=student_settings.max_grad_norm)
    log = StepLog(loop_config)
    for step in range(student.start_step, student_settings.steps):
        prompts = rank_slice(loop_config["prompts"], harmful.per_step, loop_config["seed"], step, "harmful")
        metrics = distiller.step(prompts, seed=step_seed(loop_config["seed"], step, "sample"))
        log.log(metrics, step)
        report({"step": step, **metrics},
               saver(student, step) if checkpoint_due(step, student_settings) else None)


def build_report(config: SafeSteerConfig, setup, teacher: dict[str, Any], outcome,
                 evaluations: dict[str, Any]) -> dict[str, Any]:
    return {**base_report(config, setup, outcome, evaluations), "harmful_training_prompts": config.harmful.count,
            "teacher": {key: teacher[key] for key in ("layer", "position", "scale", "where", "selection", "contrast")
                        if key in teacher},
            "safety_tokens": [{"id": token_id, "token": token, "votes": votes} for token_id, token, votes in
                              zip(teacher["ids"], teacher["tokens"], teacher["votes"], strict=True)],
            "candidates": teacher["candidates"]}
