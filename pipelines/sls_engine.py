"""The SLS-RLAIF driver: fit the safe-projection head, then run the PPO engine on the model that carries it."""

import gc
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

from pipelines.ppo_engine import PPOEngine
from pipelines.sls_rlaif import (
    FIT_RECORD,
    FIT_REPORT,
    LATENT_PLOT,
    SLSRLAIFConfig,
    head_fit_key,
    read_fit_record,
    start_model_dir,
)
from safelatent.data.microworld import build_microworld
from safelatent.errors import ConfigError
from safelatent.evaluation.latent_plot import write_latent_plot
from safelatent.judges.feedback import FeedbackScores
from safelatent.methods.behaviour_latents import behaviour_examples, collect_latents
from safelatent.methods.head_training import fit_head, pick_layer
from safelatent.methods.learner import step_seed
from safelatent.methods.rollout import RolloutBatch
from safelatent.models.layers import num_layers, resolve_layer
from safelatent.models.loading import load, save
from safelatent.models.safe_head import attach
from safelatent.tracking import Tracker


class SLSEngine(PPOEngine):
    config: SLSRLAIFConfig

    start_dir: Path | None = None
    examples_ref: ray.ObjectRef | None = None  # behaviour examples for head updates, put once

    def resolve_model(self) -> str:
        base = super().resolve_model()
        self.start_dir = self.start_model(base)
        return str(self.start_dir)

    def start_model(self, base: str) -> Path:
        """The base model with a fitted head, saved once per (base model, head settings, micro-world)."""
        config = self.config
        target = start_model_dir(config, base)
        key = head_fit_key(config, base)
        record = read_fit_record(target)
        if record is not None and record.get("key") == key:
            self.console.print(f"safe-projection head: reusing {target} (fitted on layer {record['layer']})")
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        # Fit into a scratch folder and rename it into place, so concurrent runs never see half a model.
        scratch = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
        settings = config.head
        try:
            with self.console.status("fitting the safe-projection head on the base model's latents"):
                loaded = load(base, dtype="float32", device=config.policy.device)
                model, tokenizer = loaded.model, loaded.tokenizer
                world = build_microworld(config.microworld)
                try:
                    layers = (range(num_layers(model)) if settings.layer == "auto"
                              else [resolve_layer(model, settings.layer)])
                except IndexError as error:
                    raise ConfigError(f"head.layer: {error}") from None
                per_kind = settings.examples_per_kind
                train = collect_latents(model, tokenizer, behaviour_examples(
                    world["train"].to_list(), per_kind, settings.seed), layers)
                validation = collect_latents(model, tokenizer, behaviour_examples(
                    world["validation"].to_list(), max(1, per_kind // 4), settings.seed), layers)
                layer, accuracies = pick_layer(train, validation, settings.seed) if settings.layer == "auto" else (
                    layers[0], {})
                head, report = fit_head(train, validation, settings, accuracies, layer=layer)
                attach(model, layer, head)
                save(loaded, scratch)
                (scratch / FIT_REPORT).write_text(json.dumps(report.to_json(), indent=2) + "\n")
                write_latent_plot(validation.states[layer], validation.labels, head, scratch / LATENT_PLOT,
                                  title=f"safe-projection head at layer {layer} (validation states)")
                (scratch / FIT_RECORD).write_text(json.dumps({"key": key, "base_model": base, "layer": layer}) + "\n")
                del loaded, model, train, validation
                gc.collect()
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        if target.exists():  # an incomplete leftover, or a concurrent run finished first
            if read_fit_record(target) is not None:
                shutil.rmtree(scratch)
                return target
            shutil.rmtree(target)
        os.replace(scratch, target)
        self.console.print(f"safe-projection head in {target}: layer {layer}, {settings.facets} facet(s); a fresh "
                           "probe tells "
                           f"harmful from safe states {report.probe_accuracy_before:.1%} → "
                           f"{report.probe_accuracy_after:.1%}; moves {report.harmful_moved:.0%} of harmful and "
                           f"{report.safe_moved:.0%} of safe states (validation)")
        return target

    def between_steps(self, step: int, roles: dict[str, Any], batch: RolloutBatch, scores: FeedbackScores
                      ) -> dict[str, float]:
        """Alternating head updates: after every N-th step (not the last) the learner refits the head on the
        policy's current states; the reference takes it here, the rollout workers with the weight sync."""
        settings, done = self.config.head_updates, step + 1
        if not settings.every or done % settings.every or done >= self.config.steps:
            return {}
        started = time.perf_counter()
        if self.examples_ref is None:
            train = build_microworld(self.config.microworld)["train"].to_list()
            self.examples_ref = ray.put(behaviour_examples(train, settings.examples_per_kind, self.config.head.seed))
        harmful = ([probability >= settings.harm_threshold for probability in scores.components["harm_probability"]]
                   if settings.rollouts else [])
        stats, state = roles["learner"].update_head(self.examples_ref, self.config.head, settings.adversarial_steps,
                                                    step_seed(self.config.seed, step, "head-update"),
                                                    batch if settings.rollouts else None, harmful)
        roles["reference"].set_head(state)
        return {**{f"head_update/{name}": value for name, value in stats.items()},
                "time/head_update": time.perf_counter() - started}

    def resumed(self, roles: dict[str, Any]) -> None:
        if self.config.head_updates.every:  # the checkpoint's head may differ from the start model's
            roles["reference"].set_head(roles["learner"].head_state())

    def log_inputs(self, tracker: Tracker, roles: dict[str, Any], model_path: str, judges_dir: str) -> None:
        super().log_inputs(tracker, roles, model_path, judges_dir)
        start = Path(model_path)
        report = json.loads((start / FIT_REPORT).read_text())
        tracker.log_metrics({f"head/{name}": value for name, value in report.items()
                             if isinstance(value, (int, float))}, 0)
        tracker.set_tags({"head.layer": report["layer"], "start_model": str(start)})
        for name in (FIT_REPORT, LATENT_PLOT, FIT_RECORD):
            tracker.log_artifact(start / name, "head")
