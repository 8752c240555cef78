"""The SLS-RLAIF driver: fit the safe-projection head, then run the PPO engine on the model that carries it."""

import gc
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

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
from safelatent.methods.behaviour_latents import behaviour_examples, collect_latents
from safelatent.methods.head_training import fit_head, pick_layer
from safelatent.models.layers import num_layers, resolve_layer
from safelatent.models.loading import load, save
from safelatent.models.safe_head import attach
from safelatent.tracking import Tracker


class SLSEngine(PPOEngine):
    config: SLSRLAIFConfig

    start_dir: Path | None = None

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

    def log_inputs(self, tracker: Tracker, roles: dict[str, Any], model_path: str, judges_dir: str) -> None:
        super().log_inputs(tracker, roles, model_path, judges_dir)
        start = Path(model_path)
        report = json.loads((start / FIT_REPORT).read_text())
        tracker.log_metrics({f"head/{name}": value for name, value in report.items()
                             if isinstance(value, (int, float))}, 0)
        tracker.set_tags({"head.layer": report["layer"], "start_model": str(start)})
        for name in (FIT_REPORT, LATENT_PLOT, FIT_RECORD):
            tracker.log_artifact(start / name, "head")
