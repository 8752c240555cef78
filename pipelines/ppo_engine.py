"""The PPO engine's driver: resolve inputs, place the roles, run the step loop, checkpoint, export, evaluate.

Pipelines that train with PPO from AI feedback (rlaif-ppo, sls-rlaif) share this loop; a pipeline that
prepares its own starting model (SLS fits its head first) overrides `resolve_model`. The math is in
safelatent.methods and each role is an actor in actors/.
"""

import json
import logging
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import ray
from ray.util import metrics as ray_metrics
from rich.console import Console

from actors.learner import LearnerGroup
from actors.reference import ReferenceRole
from actors.reward import RewardGroup
from actors.rollout import RolloutGroup
from cluster.connect import connected, dashboard_url
from cluster.placement import place
from pipelines.rlaif_ppo import (
    RLAIFPPOConfig,
    RunResult,
    StepCallback,
    as_tensor,
    mean,
    progress_bar,
    seconds_since,
    summary_table,
    write_summary,
)
from safelatent import checkpoint
from safelatent.config import config_hash, load_config
from safelatent.data.microworld import build_microworld
from safelatent.data.prompts import prompt_pool, prompts_for_step
from safelatent.errors import SafelatentError
from safelatent.evaluation.harness import EvalConfig, git_commit, run_eval
from safelatent.judges.feedback import FeedbackScores
from safelatent.methods.kl import AdaptiveKLController, FixedKLController
from safelatent.methods.learner import step_seed
from safelatent.methods.rollout import RolloutBatch
from safelatent.tracking import Tracker

log = logging.getLogger("safelatent.pipelines")


class ResumeError(SafelatentError):
    """Checkpoints and the --resume flag disagree."""


class DashboardMetrics:
    """Custom metrics on the Ray dashboard (Prometheus): reward, KL, tokens/s and seconds per phase."""

    def __init__(self, run_name: str):
        tags = {"run": run_name}
        self.reward = ray_metrics.Gauge("safelatent_ppo_reward", "Mean AI-feedback reward per step", tag_keys=("run",))
        self.kl = ray_metrics.Gauge("safelatent_ppo_kl_to_ref", "Mean KL to the reference per response",
                                    tag_keys=("run",))
        self.tokens = ray_metrics.Gauge("safelatent_ppo_tokens_per_second", "Generated tokens per second",
                                        tag_keys=("run",))
        self.phase = ray_metrics.Gauge("safelatent_ppo_phase_seconds", "Seconds per step phase",
                                       tag_keys=("run", "phase"))
        self.steps = ray_metrics.Counter("safelatent_ppo_steps", "PPO steps done", tag_keys=("run",))
        for metric in (self.reward, self.kl, self.tokens, self.phase, self.steps):
            metric.set_default_tags(tags)

    def record(self, metrics: dict[str, float]) -> None:
        self.reward.set(metrics["reward"])
        self.kl.set(metrics["kl_to_ref"])
        self.tokens.set(metrics["tokens_per_second"])
        for name, value in metrics.items():
            if name.startswith("time/"):
                self.phase.set(value, tags={"phase": name[len("time/"):]})
        self.steps.inc()


class PPOEngine:
    def __init__(self, config: RLAIFPPOConfig, console: Console):
        self.config = config
        self.console = console

    # -- inputs -----------------------------------------------------------------------------------------
    def resolve_model(self) -> str:
        if self.config.model:
            return self.config.model
        from safelatent.models.base_model import BaseModelConfig, build_base_model

        self.console.print(f"base model from {self.config.base_model_config} (built once, then cached)")
        return str(build_base_model(load_config(BaseModelConfig, self.config.base_model_config), progress=True))

    def resolve_judges(self) -> str:
        if self.config.judges:
            return self.config.judges
        from safelatent.judges.build import JudgesConfig, build_judges

        self.console.print(f"judges from {self.config.judges_config} (built once, then cached)")
        return str(build_judges(load_config(JudgesConfig, self.config.judges_config), progress=True))

    def resume_point(self, resume: bool) -> tuple[int, str, dict] | None:
        root = self.config.checkpoint_root()
        latest = checkpoint.latest_checkpoint(root)
        if latest is None:
            if resume:
                self.console.print(f"--resume: no checkpoint under {root} yet; starting from step 0")
            return None
        if not resume:
            raise ResumeError(f"{root} already holds checkpoints (latest: step {latest[0]}); pass --resume to "
                              "continue that run, or choose another name= or checkpoint.dir=")
        step, location = latest
        state = checkpoint.read_state(location)
        if state.get("config_hash") != self.training_hash():
            self.console.print("[yellow]note: the checkpoint was written with different training settings; "
                               "continuing with the current ones[/yellow]")
        return step, location, state

    def training_hash(self) -> str:
        """Hash of the settings that shape training (not steps, evaluation or where things go)."""
        return config_hash(self.config.model_copy(update={
            "steps": 0, "evaluation": self.config.evaluation.model_copy(update={"enabled": False}),
            "address": None}))

    # -- the run ----------------------------------------------------------------------------------------
    def run(self, resume: bool = False, on_step: StepCallback | None = None) -> RunResult:
        config = self.config
        out = config.out_dir()
        out.mkdir(parents=True, exist_ok=True)
        start = self.resume_point(resume)
        model_path = self.resolve_model()
        judges_dir = self.resolve_judges()
        with self.console.status("generating the micro-world prompts"):
            split = build_microworld(config.microworld)[config.prompts.split]
            pool = prompt_pool(split, [kind for kind, weight in config.prompts.weights.items() if weight > 0])

        with ExitStack() as stack:
            resources = stack.enter_context(connected(config.address))
            shown = ", ".join(f"{name} {amount:g}" for name, amount in sorted(resources.items())
                              if name in ("CPU", "GPU"))
            self.console.print(f"ray: {shown}" + (f"; dashboard {dashboard_url()}" if dashboard_url() else ""))
            placement = place(config.resources.roles(), config.resources.ready_timeout_s, config.resources.strategy)
            stack.callback(placement.remove)
            roles = self.start_roles(placement, model_path, judges_dir)
            run_id = start[2].get("mlflow_run_id") if start else None
            tracker = Tracker.start(config.tracking, config.name, run_id=run_id)
            status = "FAILED"
            try:
                if run_id is None:  # a new MLflow run (a checkpoint adopted from another run starts one too)
                    self.log_inputs(tracker, roles, model_path, judges_dir)
                result = self.loop(roles, tracker, pool, start, on_step)
                result.model_dir = Path(roles["learner"].export(str(out / "model")))
                tracker.log_artifacts(result.model_dir, "model")
                if config.tracking.registered_model:
                    version = tracker.register_model(config.tracking.registered_model, "model",
                                                     f"{config.pipeline} run {config.name}")
                    result.registered = f"{config.tracking.registered_model} version {version}"
                if config.evaluation.enabled:
                    result.evaluation = self.evaluate(result.model_dir, tracker)
                status = "FINISHED"
            except KeyboardInterrupt:
                status = "KILLED"
                raise
            finally:
                tracker.finish(status)
        result.tracking_run = tracker.url()
        result.tracking_run_id = tracker.run_id
        write_summary(result, config)
        self.console.print(summary_table(result, config))
        return result

    def start_roles(self, placement, model_path: str, judges_dir: str) -> dict[str, Any]:
        config, res = self.config, self.config.resources
        with self.console.status("starting the actors (rollout, reward, reference, learner)"):
            threads = {role: resources.threads if resources.threads is not None else res.threads_per_actor
                       for role, (_, resources) in res.roles().items()}
            roles = {
                "rollout": RolloutGroup(placement, res.rollout_workers, res.rollout, model_path, config.policy,
                                        threads["rollout"], res.max_restarts),
                "reward": RewardGroup(placement, res.reward_workers, res.reward, judges_dir, config.feedback,
                                      config.policy.device, threads["reward"], res.max_restarts),
                "reference": ReferenceRole(placement, res.reference, model_path, config.policy.dtype,
                                           config.policy.device, threads["reference"], res.max_restarts),
                "learner": LearnerGroup(placement, res.learners, res.learner, model_path, config.policy, config.ppo,
                                        config.optimizer, config.rollout.temperature, config.seed,
                                        threads["learner"], config.rollout.off_policy_cap,
                                        config.resources.ready_timeout_s),
            }
            roles["rollout"].ready()
            roles["reward"].ready()
            roles["reference"].ready()
        return roles

    def log_inputs(self, tracker: Tracker, roles: dict[str, Any], model_path: str, judges_dir: str) -> None:
        provenance = roles["reward"].provenance()
        tracker.log_params(self.config.model_dump(mode="json"))
        tracker.set_tags({"pipeline": self.config.pipeline, "config_hash": config_hash(self.config),
                          "commit": git_commit(),
                          "base_model": model_path, "judges": judges_dir,
                          **{f"judge.{key}": value for key, value in provenance.items()}})

    def loop(self, roles: dict[str, Any], tracker: Tracker, pool: dict[str, list[str]],
             start: tuple[int, str, dict] | None, on_step: StepCallback | None) -> RunResult:
        config = self.config
        rollout_cfg = config.rollout
        kl = (AdaptiveKLController(config.ppo.kl.beta, config.ppo.kl.target, config.ppo.kl.horizon)
              if config.ppo.kl.target else FixedKLController(config.ppo.kl.beta))
        first_step, history, last_checkpoint = 0, [], None
        if start is not None:
            first_step, last_checkpoint, state = start
            roles["learner"].load_checkpoint(last_checkpoint)
            kl.load_state_dict(state["kl_controller"])
            history = state.get("history", [])
            self.resumed(roles)
            self.console.print(f"resumed from {last_checkpoint} (step {first_step})")
        if first_step:
            roles["rollout"].set_weights(roles["learner"].publish(), first_step)
        result = RunResult(out_dir=config.out_dir(), model_dir=None, steps_done=first_step, history=history,
                           checkpoint=last_checkpoint)
        dashboard = DashboardMetrics(config.name)
        sampling = {"samples_per_prompt": rollout_cfg.samples_per_prompt, "max_new_tokens": rollout_cfg.max_new_tokens,
                    "temperature": rollout_cfg.temperature, "top_p": rollout_cfg.top_p}
        workers = config.resources.rollout_workers
        group_stride = rollout_cfg.prompts_per_step

        def submit(step: int):
            prompts = prompts_for_step(pool, config.prompts.weights, rollout_cfg.prompts_per_step, config.seed, step)
            seeds = [step_seed(config.seed, step, f"rollout-{worker}") for worker in range(workers)]
            version = roles["rollout"].weights_version
            return roles["rollout"].submit(prompts, sampling, seeds, step * group_stride), version

        with progress_bar(self.console, config.pipeline) as progress:
            task = progress.add_task("train", total=config.steps, completed=first_step, status="")
            pending = submit(first_step) if first_step < config.steps else None
            for step in range(first_step, config.steps):
                step_started = time.perf_counter()
                batch, generate_s = roles["rollout"].collect(pending[0])
                sampled_with = pending[1]
                waited_rollout = seconds_since(step_started)
                if rollout_cfg.async_rollout and step + 1 < config.steps:
                    pending = submit(step + 1)
                batch_ref = ray.put(batch)
                judged = roles["reward"].submit(list(batch.prompts), list(batch.responses))
                referenced = roles["reference"].submit(batch_ref, rollout_cfg.temperature)
                scores, score_s = roles["reward"].collect(judged)
                ref_logprobs, reference_s = roles["reference"].collect(referenced)
                learn_started = time.perf_counter()
                stats, learn_s = roles["learner"].train(batch, as_tensor(scores.rewards), ref_logprobs, kl.beta, step,
                                                        off_policy=sampled_with != step)
                learn_wall = seconds_since(learn_started)
                kl.update(stats["kl_to_ref"], len(batch))
                stats.update(self.between_steps(step, roles, batch, scores))
                sync_started = time.perf_counter()
                roles["rollout"].set_weights(roles["learner"].publish(), step + 1)
                sync_s = seconds_since(sync_started)
                if not rollout_cfg.async_rollout and step + 1 < config.steps:
                    pending = submit(step + 1)
                step_s = seconds_since(step_started)
                tokens = float(batch.response_mask.sum())
                metrics = {**stats,
                           "reward_model": mean(scores.components["reward_model"]),
                           "harm_probability": mean(scores.components["harm_probability"]),
                           "judge_cache_hit_rate": scores.cache_hits / len(batch),
                           "beta_next": kl.beta,
                           "samples_per_second": len(batch) / step_s, "tokens_per_second": tokens / step_s,
                           "time/step": step_s, "time/generate": generate_s, "time/score": score_s,
                           "time/reference": reference_s, "time/learn": learn_s, "time/weight_sync": sync_s,
                           "time/rollout_wait": waited_rollout, "time/learn_wall": learn_wall}
                metrics["time/idle"] = max(0.0, step_s - waited_rollout - max(score_s, reference_s) - learn_wall
                                           - sync_s)
                history.append({"step": step + 1, **metrics})
                tracker.log_metrics(metrics, step + 1)
                dashboard.record(metrics)
                result.steps_done = step + 1
                progress.update(task, advance=1, status=f"reward {metrics['reward']:+.3f}  "
                                                        f"harm {metrics['harm_probability']:.2f}  "
                                                        f"kl {metrics['kl_to_ref']:.3f}")
                if (step + 1) % config.checkpoint.every == 0 or step + 1 == config.steps:
                    result.checkpoint = roles["learner"].save_checkpoint(
                        config.checkpoint_root(), step + 1,
                        {"step": step + 1, "seed": config.seed, "kl_controller": kl.state_dict(),
                         "mlflow_run_id": tracker.run_id, "config_hash": self.training_hash(),
                         "rng": "per-step seeds derived from (seed, step)", "history": history},
                        config.checkpoint.keep)
                if on_step is not None:
                    on_step(step + 1, metrics, roles)
        return result

    def between_steps(self, step: int, roles: dict[str, Any], batch: RolloutBatch, scores: FeedbackScores
                      ) -> dict[str, float]:
        """Work between a learner update and the weight sync (SLS updates its head here); extra step metrics."""
        return {}

    def resumed(self, roles: dict[str, Any]) -> None:
        """The learner has loaded a checkpoint; bring roles that keep their own state up to date."""

    def evaluate(self, model_dir: Path, tracker: Tracker) -> dict[str, Any]:
        settings = self.config.evaluation
        out = self.config.out_dir() / "eval"
        eval_config = EvalConfig(model=str(model_dir), data=settings.data, limit=settings.limit, out=out,
                                 max_new_tokens=settings.max_new_tokens, seed=self.config.seed,
                                 device=self.config.policy.device, dtype=self.config.policy.dtype)
        run_eval(eval_config, console=self.console)
        results = json.loads((out / "results.json").read_text())
        tracker.log_metrics({f"eval/{name}": metric["value"] for name, metric in results["metrics"].items()
                             if isinstance(metric, dict) and isinstance(metric.get("value"), (int, float))},
                            self.config.steps)
        tracker.log_artifacts(out, "eval")
        return results["metrics"]

