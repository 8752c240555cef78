"""Throughput of the PPO engine (grpo estimator) side by side with TRL's GRPOTrainer, on one machine in one run.

Both sides train the same policy on the same micro-world prompts with the same batch: `--prompts-per-step`
prompts per step, `--samples-per-prompt` responses each, at most `--max-new-tokens` new tokens, temperature 1.0,
top-k off and top-p 1.0, one optimizer step per batch (one epoch, one minibatch holding the whole batch), the
engine's KL coefficient β (so both run a frozen reference model) and learning rate, and rewards from the same
judges (`AIFeedback`: reward model − harm penalty). Step k of both sides sees the prompts the engine draws for step
k (`prompts_for_step` with the engine's seed and prompt weights); both apply the model's chat template to them.
Both run on the CPU in float32. The engine starts from the shipped pipelines/configs/rlaif_ppo.yaml (its
resources, threads per role included: one per actor, two for the learner, which runs alone in a synchronous
step) with the settings above laid over it.

What is measured, per step, after dropping the first `--warmup` steps:
- samples/s = responses per step ÷ mean seconds per step (the throughput over the measured steps);
- the engine (`ppo.estimator=grpo`, once per `--workers` count of rollout workers, and again for each `--setup`
  of config overrides (say, more torch threads for a role), each run on a fresh embedded
  Ray cluster): the seconds it records for each phase of a step — generate (slowest rollout worker, log-probs of
  the samples included), score (judges), reference (reference log-probs), learn (the PPO update), weight sync
  (publishing the new weights and loading them into every rollout worker) and idle — and the orchestration
  overhead = step time − model compute on the critical path, where model compute = generate + max(score,
  reference) + learn (score and reference run in parallel; weight sync counts as overhead), as a share of the
  step time (target <= 15%);
- TRL's GRPOTrainer, in this process on the CPU with `--threads` torch threads: the seconds from each
  `on_step_begin` (before generation) to the matching `on_step_end` (after the optimizer step), taken by a
  `TrainerCallback`. Gradient checkpointing (on by default in TRL) is off, since the engine does not use it.
  On a busy machine give TRL no more threads than there are idle cores: oversubscribed torch threads can slow
  it down tenfold or more (the load average at the start is reported);
- ours ÷ TRL: the engine's samples/s over TRL's, for each rollout-worker count and setup. With `--repeats N`
  the engine runs and the TRL run alternate N times; each round gives a ratio and the median is reported, with
  the range. A shared machine slows down and speeds up over minutes, so a ratio within one round is steadier
  than one between a whole engine series and a TRL run at the end.
The mean response length (tokens, end-of-turn included) is reported for both sides: the generation cost follows
it, and the two sides sample their own responses.

Everything runs offline. Without `--model`/`--judges` the tiny micro-world base model and the tiny judges are
built (once; cached by config hash) under `<folder of --out>/models`. Results go to a table on stdout and to
`--out` as JSON, with the machine and the command line. Rerun from the repository root, e.g.

    .venv/bin/python benchmarks/ppo_throughput.py --steps 6 --warmup 1 --workers 1,2
"""

import os

# Set before the Hugging Face libraries are imported: they read these switches then.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import argparse
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import ray
import torch
import transformers
import trl
from rich.console import Console
from rich.table import Table
from transformers import TrainerCallback

from pipelines.rlaif_ppo import RLAIFPPOConfig, run
from safelatent.config import load_config
from safelatent.data.microworld import build_microworld
from safelatent.data.prompts import prompt_pool, prompts_for_step
from safelatent.judges.build import JudgesConfig, build_judges
from safelatent.judges.feedback import AIFeedback
from safelatent.models.base_model import BaseModelConfig, build_base_model

REPO = Path(__file__).resolve().parents[1]
OVERHEAD_TARGET = 0.15
SHIPPED = "shipped"
PHASES = ("generate", "score", "reference", "learn", "weight_sync", "idle")


def engine_setup(text: str) -> tuple[str, list[str]]:
    """`--setup "label:key=value,key=value"` as (label, [overrides]): engine settings laid over the shipped ones."""
    label, sep, overrides = text.partition(":")
    settings = [item.strip() for item in overrides.split(",") if item.strip()]
    if not sep or not label.strip() or not settings or not all("=" in item for item in settings):
        raise argparse.ArgumentTypeError(f"expected LABEL:KEY=VALUE[,KEY=VALUE...], e.g. "
                                         f"'rollout-2-threads:resources.rollout.threads=2'; got {text!r}")
    if label.strip() == SHIPPED:
        raise argparse.ArgumentTypeError(f"the label {SHIPPED!r} is taken by the shipped settings, which always run")
    return label.strip(), settings


def worker_counts(text: str) -> list[int]:
    """`--workers 1,2` as [1, 2]."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated worker counts such as 1,2; got {text!r}") from None
    if any(count < 1 for count in counts):
        raise argparse.ArgumentTypeError(f"worker counts must be >= 1; got {text!r}")
    return counts


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="policy to train (a Hugging Face model directory); default: build the tiny "
                                        "micro-world base model")
    parser.add_argument("--judges", help="a judges build directory; default: build the tiny judges")
    parser.add_argument("--steps", type=int, default=6, help="training steps per run, warmup included "
                                                             "(default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="first steps of each run left out of the means "
                                                              "(default: %(default)s)")
    parser.add_argument("--prompts-per-step", type=int, default=16, help="(default: %(default)s)")
    parser.add_argument("--samples-per-prompt", type=int, default=4, help="responses per prompt, the GRPO group "
                                                                          "(default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="(default: %(default)s)")
    parser.add_argument("--workers", type=worker_counts, default="1,2", help="rollout-worker counts to run the "
                                                                             "engine with (default: %(default)s)")
    parser.add_argument("--skip-trl", action="store_true", help="measure the engine only")
    parser.add_argument("--actor-threads", type=int, default=1, help="torch threads per engine actor "
                                                                     "(default: %(default)s)")
    parser.add_argument("--learner-threads", type=int, help="torch threads of the learner actor (default: as in "
                                                             "pipelines/configs/rlaif_ppo.yaml)")
    parser.add_argument("--async-rollout", action="store_true", help="the engine samples batch k+1 while it "
                                                                     "learns on batch k")
    parser.add_argument("--setup", type=engine_setup, action="append", default=[], metavar="LABEL:KEY=VALUE,...",
                        help="also run the engine with these config overrides on top of the shipped settings (and "
                             "of the options above), side by side in the same run; repeatable, e.g. "
                             "--setup rollout-2-threads:resources.rollout.threads=2")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every engine run followed by the TRL run; "
                        "ours ÷ TRL is the median of the rounds' ratios, so a slow spell of a noisy machine "
                        "weighs on both sides of one ratio (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of the TRL run "
                                                                            "(default: the CPU count, %(default)s)")
    parser.add_argument("--out", default="runs/benchmarks/ppo_throughput.json", help="JSON file for the results; "
                        "the tiny models are built next to it (default: %(default)s)")
    args = parser.parse_args()
    for name in ("steps", "prompts_per_step", "max_new_tokens", "threads", "actor_threads", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.samples_per_prompt < 2:
        parser.error("--samples-per-prompt must be >= 2: GRPO compares the responses to the same prompt")
    if not 0 <= args.warmup < args.steps:
        parser.error(f"--warmup ({args.warmup}) must be >= 0 and smaller than --steps ({args.steps}) so that some "
                     "steps are measured")
    return args


def resolve_models(args: argparse.Namespace, build_root: Path) -> tuple[str, str]:
    """The policy and judges directories, absolute (Ray actors need not share our working directory): as given,
    or the tiny ones built (or reused) under `build_root`."""
    model_dir = args.model or build_base_model(load_config(
        BaseModelConfig, REPO / "pipelines/configs/base_model_tiny.yaml", [f"out_root={build_root}"]), progress=False)
    judges_dir = args.judges or build_judges(load_config(
        JudgesConfig, REPO / "pipelines/configs/judges_tiny.yaml", [f"out_root={build_root}"]), progress=False)
    return str(Path(model_dir).resolve()), str(Path(judges_dir).resolve())


def engine_config(args: argparse.Namespace, model_dir: str, judges_dir: str, workers: int = 1,
                  out_root: str = "runs/benchmarks/engine", setup: Sequence[str] = ()) -> RLAIFPPOConfig:
    """The engine's settings for a run writing under `out_root`; the TRL run copies the settings both sides share
    (prompts, sampling, β, optimizer) from one of these that never runs."""
    batch = args.prompts_per_step * args.samples_per_prompt
    return load_config(RLAIFPPOConfig, REPO / "pipelines/configs/rlaif_ppo.yaml", [
        f"model={model_dir}", "base_model_config=null", f"judges={judges_dir}", "judges_config=null",
        f"name=throughput-{workers}-workers", f"steps={args.steps}", f"out_root={out_root}",
        f"tracking.uri=sqlite:///{out_root}/mlflow.db", "evaluation.enabled=false", "checkpoint.every=1000000",
        "policy.device=cpu", "ppo.estimator=grpo", "ppo.epochs=1", f"ppo.minibatch_size={batch}",
        f"rollout.prompts_per_step={args.prompts_per_step}", f"rollout.samples_per_prompt={args.samples_per_prompt}",
        f"rollout.max_new_tokens={args.max_new_tokens}", "rollout.temperature=1.0", "rollout.top_p=1.0",
        f"resources.rollout_workers={workers}", f"resources.threads_per_actor={args.actor_threads}",
        f"rollout.async_rollout={str(args.async_rollout).lower()}",
        *([f"resources.learner.threads={args.learner_threads}"] if args.learner_threads is not None else []),
        *setup])


def engine_column(label: str, workers: int) -> str:
    """The results key and table column of one engine run: '1 worker', or 'rollout-2-threads, 2 workers'."""
    count = f"{workers} worker{'s' if workers != 1 else ''}"
    return count if label == SHIPPED else f"{label}, {count}"


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def measure_engine(args: argparse.Namespace, model_dir: str, judges_dir: str, workers: int,
                   setup: Sequence[str] = ()) -> dict[str, Any]:
    """Train `--steps` steps with `workers` rollout workers (and a setup's overrides); samples/s and the phase
    breakdown of the measured steps. `run` starts an embedded Ray cluster and shuts it down again, so each run
    starts from scratch."""
    with tempfile.TemporaryDirectory(prefix="ppo-throughput-engine-") as root:
        config = engine_config(args, model_dir, judges_dir, workers, root, setup)
        history = run(config, console=Console(stderr=True)).history
    measured = history[args.warmup:]
    samples = config.rollout.prompts_per_step * config.rollout.samples_per_prompt
    phases = {phase: mean([entry[f"time/{phase}"] for entry in measured]) for phase in PHASES}
    step_s = mean([entry["time/step"] for entry in measured])
    compute_s = mean([entry["time/generate"] + max(entry["time/score"], entry["time/reference"])
                      + entry["time/learn"] for entry in measured])
    # With async rollout, sampling overlaps the rest of the step, so "step − compute" is not an overhead.
    overhead_s = None if config.rollout.async_rollout else step_s - compute_s
    threads = {role: getattr(config.resources, role).threads for role in ("rollout", "reward", "reference", "learner")}
    return {"rollout_workers": workers, "overrides": list(setup), "async_rollout": config.rollout.async_rollout,
            "torch_threads": {role: config.resources.threads_per_actor if value is None else value
                              for role, value in threads.items()},
            "samples_per_step": samples, "measured_steps": len(measured),
            "samples_per_second": samples / step_s, "step_s": step_s, "phases_s": phases,
            "model_compute_s": compute_s, "overhead_s": overhead_s,
            "overhead_share": overhead_s / step_s if overhead_s is not None else None,
            "response_tokens": mean([entry["response_length"] for entry in measured]),
            "step_s_all": [entry["time/step"] for entry in history]}


class StepTimer(TrainerCallback):
    """Seconds of each optimizer step, from `on_step_begin` (before generation) to `on_step_end` (after the
    optimizer step): generation, scoring, reference and policy forward passes, backward and update."""

    def __init__(self):
        self.seconds: list[float] = []
        self.started: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self.started)


class JudgeReward:
    """A TRL reward function scoring with the engine's judges, on the same texts the engine's scorers get (the
    user turn's content and the stripped reply); it notes each batch's mean response length in tokens."""

    def __init__(self, feedback: AIFeedback):
        self.feedback = feedback
        self.response_tokens: list[float] = []

    def __call__(self, prompts: list[list[dict]], completions: list[list[dict]], completion_ids: list[list[int]],
                 **_: Any) -> list[float]:
        self.response_tokens.append(mean([len(ids) for ids in completion_ids]))
        prompt_texts = [messages[-1]["content"] for messages in prompts]
        responses = [messages[-1]["content"].strip() for messages in completions]
        return self.feedback.score(prompt_texts, responses).rewards


def engine_prompts(config: RLAIFPPOConfig) -> list[str]:
    """The prompts of the engine's steps 0..steps-1, in order (TRL takes them in dataset order, one step's worth
    at a time, when its dataset is not shuffled)."""
    split = build_microworld(config.microworld)[config.prompts.split]
    pool = prompt_pool(split, [kind for kind, weight in config.prompts.weights.items() if weight > 0])
    return [prompt for step in range(config.steps) for prompt in
            prompts_for_step(pool, config.prompts.weights, config.rollout.prompts_per_step, config.seed, step)]


def measure_trl(args: argparse.Namespace, config: RLAIFPPOConfig) -> dict[str, Any]:
    """Train TRL's GRPOTrainer for `--steps` steps with the engine's settings; samples/s of the measured steps."""
    rollout = config.rollout
    optimizer = config.optimizer
    samples = rollout.prompts_per_step * rollout.samples_per_prompt
    dataset = datasets.Dataset.from_dict({"prompt": [[{"role": "user", "content": text}]
                                                     for text in engine_prompts(config)]})
    reward = JudgeReward(AIFeedback.load(config.judges, config.feedback, device=config.policy.device))
    timer = StepTimer()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="ppo-throughput-trl-") as root:
        trl_config = trl.GRPOConfig(
            output_dir=root, max_steps=config.steps, seed=config.seed, use_cpu=True, bf16=False,
            model_init_kwargs={"dtype": "float32"}, activation_checkpointing=False, disable_dropout=True,
            per_device_train_batch_size=samples, gradient_accumulation_steps=1, steps_per_generation=1,
            num_iterations=1, num_generations=rollout.samples_per_prompt, shuffle_dataset=False,
            max_completion_length=rollout.max_new_tokens, temperature=rollout.temperature, top_p=rollout.top_p,
            top_k=0, beta=config.ppo.kl.beta, epsilon=config.ppo.clip_eps, max_grad_norm=config.ppo.max_grad_norm,
            learning_rate=optimizer.learning_rate, lr_scheduler_type="constant", weight_decay=optimizer.weight_decay,
            adam_beta1=optimizer.betas[0], adam_beta2=optimizer.betas[1], adam_epsilon=optimizer.eps,
            logging_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True)
        trainer = trl.GRPOTrainer(model=config.model, reward_funcs=reward, args=trl_config, train_dataset=dataset,
                                  callbacks=[timer])
        trainer.remove_callback(transformers.PrinterCallback)  # its end-of-training summary would split our table
        trainer.train()
    if len(timer.seconds) != config.steps:
        raise RuntimeError(f"TRL ran {len(timer.seconds)} steps, {config.steps} were asked for; the timings would "
                           "not cover the same work as the engine's")
    step_s = mean(timer.seconds[args.warmup:])
    return {"samples_per_step": samples, "measured_steps": config.steps - args.warmup,
            "samples_per_second": samples / step_s, "step_s": step_s,
            "response_tokens": mean(reward.response_tokens[args.warmup:]), "torch_threads": args.threads,
            "step_s_all": timer.seconds}


def machine_info(trl_threads: int | None, actor_threads: int) -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "load_average_1_5_15_min": list(os.getloadavg()), "torch_threads_trl": trl_threads,
            "torch_threads_per_engine_actor": actor_threads, "platform": platform.platform(),
            "python": platform.python_version(),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "trl": trl.__version__, "ray": ray.__version__}}


def results_table(results: dict[str, Any]) -> Table:
    """One column per measured system, one row per quantity (seconds are means per measured step)."""
    engine = results["engine"]
    trl_result = results["trl"]
    settings = results["settings"]
    table = Table(title=f"PPO throughput: {settings['samples_per_step']} samples/step "
                        f"({settings['prompts_per_step']} prompts × {settings['samples_per_prompt']}), "
                        f"≤ {settings['max_new_tokens']} new tokens, "
                        f"steps {settings['warmup'] + 1}..{settings['steps']}",
                  caption="compute = generate + max(score, reference) + learn; overhead = step − compute "
                          f"(target ≤ {OVERHEAD_TARGET:.0%} of the step)")
    table.add_column("")
    for column in engine:
        table.add_column(f"engine, {column}", justify="right")
    if trl_result:
        threads = trl_result["torch_threads"]
        table.add_column(f"TRL, {threads} thread{'s' if threads != 1 else ''}", justify="right")

    def row(label: str, engine_cell: Callable[[dict], str], trl_cell: Callable[[dict], str] | None = None) -> None:
        trl_cells = [trl_cell(trl_result) if trl_cell else "—"] if trl_result else []
        table.add_row(label, *(engine_cell(result) for result in engine.values()), *trl_cells)

    row("torch threads (rollout reward reference learner)",
        lambda r: " ".join(str(count) for count in r["torch_threads"].values()), lambda r: str(r["torch_threads"]))
    row("samples/s", lambda r: f"{r['samples_per_second']:.2f}", lambda r: f"{r['samples_per_second']:.2f}")
    row("step s", lambda r: f"{r['step_s']:.3f}", lambda r: f"{r['step_s']:.3f}")
    for phase in PHASES:
        row(f"  {phase.replace('_', ' ')} s", lambda r, phase=phase: f"{r['phases_s'][phase]:.3f}")
    row("compute s", lambda r: f"{r['model_compute_s']:.3f}")
    def overhead(r: dict) -> str:
        if r["overhead_s"] is None:
            return "n/a (async: phases overlap)"
        over = "" if r["overhead_share"] <= OVERHEAD_TARGET else " (over)"
        return f"{r['overhead_s']:.3f} s = {r['overhead_share']:.1%}{over}"

    row("overhead", overhead)
    row("response tokens", lambda r: f"{r['response_tokens']:.1f}", lambda r: f"{r['response_tokens']:.1f}")
    if trl_result:
        rounds = results["repeats"]

        def ratio(r: dict) -> str:
            each = r["ratio_by_round"]
            spread = f" ({min(each):.2f}–{max(each):.2f})" if len(each) > 1 else ""
            return f"{statistics.median(each):.2f}×{spread}"

        row("ours ÷ TRL" + (f" (median of {len(rounds)} rounds)" if len(rounds) > 1 else ""), ratio)
    return table


def measure_round(args: argparse.Namespace, model_dir: str, judges_dir: str, shared: RLAIFPPOConfig
                  ) -> dict[str, Any]:
    """One round: every engine setup and worker count, then TRL, and the engine ÷ TRL ratios of this round."""
    round_: dict[str, Any] = {
        "engine": {engine_column(label, workers): measure_engine(args, model_dir, judges_dir, workers, setup)
                   for label, setup in [(SHIPPED, []), *args.setup] for workers in args.workers},
        "trl": None if args.skip_trl else measure_trl(args, shared)}
    if round_["trl"]:
        round_["ratio"] = {column: result["samples_per_second"] / round_["trl"]["samples_per_second"]
                           for column, result in round_["engine"].items()}
    return round_


def pooled(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One system's figures over the rounds: seconds and lengths are means over the rounds (each measures as many
    steps), samples/s follows from the mean step; per-step seconds are joined; settings come from the first."""
    out = {**runs[0], "rounds": len(runs), "step_s_all": [value for run in runs for value in run["step_s_all"]]}
    for name in ("step_s", "model_compute_s", "overhead_s", "response_tokens"):
        if runs[0].get(name) is not None:
            out[name] = mean([run[name] for run in runs])
    if "phases_s" in runs[0]:
        out["phases_s"] = {phase: mean([run["phases_s"][phase] for run in runs]) for phase in runs[0]["phases_s"]}
    out["samples_per_second"] = runs[0]["samples_per_step"] / out["step_s"]
    if out.get("overhead_s") is not None:
        out["overhead_share"] = out["overhead_s"] / out["step_s"]
    return out


def main() -> None:
    args = parse_args()
    command = shlex.join([sys.executable, *sys.argv])
    out = Path(args.out)
    model_dir, judges_dir = resolve_models(args, out.parent / "models")
    shared = engine_config(args, model_dir, judges_dir)
    results: dict[str, Any] = {
        "command": command,
        "machine": machine_info(None if args.skip_trl else args.threads, shared.resources.threads_per_actor),
        "settings": {"model": model_dir, "judges": judges_dir, "steps": args.steps, "warmup": args.warmup,
                     "prompts_per_step": args.prompts_per_step, "samples_per_prompt": args.samples_per_prompt,
                     "samples_per_step": args.prompts_per_step * args.samples_per_prompt,
                     "max_new_tokens": args.max_new_tokens, "temperature": shared.rollout.temperature,
                     "top_p": shared.rollout.top_p, "top_k": 0, "beta": shared.ppo.kl.beta,
                     "learning_rate": shared.optimizer.learning_rate, "seed": shared.seed},
        "setups": {SHIPPED: [], **dict(args.setup)},
        "repeats": [measure_round(args, model_dir, judges_dir, shared) for _ in range(args.repeats)]}
    results["engine"] = {column: pooled([round_["engine"][column] for round_ in results["repeats"]])
                         for column in results["repeats"][0]["engine"]}
    results["trl"] = None if args.skip_trl else pooled([round_["trl"] for round_ in results["repeats"]])
    if results["trl"]:
        for column, result in results["engine"].items():
            result["ratio_by_round"] = [round_["ratio"][column] for round_ in results["repeats"]]
        results["ratio"] = {column: statistics.median(result["ratio_by_round"])
                            for column, result in results["engine"].items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")

    console = Console()
    console.print(results_table(results))
    for column, ratio in results.get("ratio", {}).items():
        console.print(f"ours ÷ TRL samples/s, engine {column}: [bold]{ratio:.2f}×[/bold]")
    for label, setup in args.setup:
        console.print(f"setup {label}: {', '.join(setup)}", highlight=False)
    machine = results["machine"]
    trl_threads = "" if args.skip_trl else f"TRL {args.threads}, "
    console.print(f"machine: {machine['cpu_count']} CPUs ({machine['usable_cpus']} usable), load average "
                  f"{machine['load_average_1_5_15_min'][0]:.2f} at the start; torch threads: {trl_threads}"
                  f"each engine actor {machine['torch_threads_per_engine_actor']}", highlight=False)
    console.print(f"command: {command}", highlight=False, soft_wrap=True)
    console.print(f"results: {out}", highlight=False)


if __name__ == "__main__":
    main()
