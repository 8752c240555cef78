"""The SLS-RLAIF driver: fit the safe-projection head, then run the PPO engine on the model that carries it."""

import gc
import json
import shutil
from pathlib import Path
from typing import Any

from pipelines.ppo_engine import PPOEngine
from pipelines.sls_rlaif import FIT_RECORD, HEAD_DIR, START_MODEL_DIR, SLSRLAIFConfig, head_fit_key, read_fit_record
from safelatent.data.microworld import build_microworld
from safelatent.evaluation.latent_plot import write_latent_plot
from safelatent.methods.behaviour_latents import behaviour_examples, collect_latents
from safelatent.methods.head_training import fit_head, pick_layer
from safelatent.models.layers import num_layers, resolve_layer
from safelatent.models.loading import load, save
from safelatent.models.safe_head import attach
from safelatent.tracking import Tracker

REPORT_FILE = "fit_report.json"
PLOT_FILE = "latent_space.png"


class SLSEngine(PPOEngine):
    config: SLSRLAIFConfig

    def resolve_model(self) -> str:
        base = super().resolve_model()
        return str(self.start_model(base))

    def start_model(self, base: str) -> Path:
        """The base model with a fitted head, saved once per (base model, head settings, micro-world)."""
        config = self.config
        target = config.out_dir() / START_MODEL_DIR
        key = head_fit_key(config, base)
        record = read_fit_record(target)
        if record is not None and record.get("key") == key:
            self.console.print(f"safe-projection head: reusing {target} (fitted on layer {record['layer']})")
            return target
        if target.exists():
            shutil.rmtree(target)
        settings = config.head
        with self.console.status("fitting the safe-projection head on the base model's latents"):
            loaded = load(base, dtype="float32", device=config.policy.device)
            model, tokenizer = loaded.model, loaded.tokenizer
            world = build_microworld(config.microworld)
            layers = (range(num_layers(model)) if settings.layer == "auto"
                      else [resolve_layer(model, settings.layer)])
            per_kind = settings.examples_per_kind
            train = collect_latents(model, tokenizer, behaviour_examples(
                world["train"].to_list(), per_kind, settings.seed), layers)
            validation = collect_latents(model, tokenizer, behaviour_examples(
                world["validation"].to_list(), max(1, per_kind // 4), settings.seed), layers)
            layer, accuracies = pick_layer(train, validation, settings.seed) if settings.layer == "auto" else (
                layers[0], {})
            head, report = fit_head(train, validation, settings, accuracies, layer=layer)
            head_dir = config.out_dir() / HEAD_DIR
            head_dir.mkdir(parents=True, exist_ok=True)
            (head_dir / REPORT_FILE).write_text(json.dumps(report.to_json(), indent=2) + "\n")
            write_latent_plot(validation.states[layer], validation.labels, head, head_dir / PLOT_FILE,
                              title=f"safe-projection head at layer {layer} (validation states)")
            attach(model, layer, head)
            save(loaded, target)
            (target / FIT_RECORD).write_text(json.dumps({"key": key, "base_model": base, "layer": layer}) + "\n")
            del loaded, model, train, validation
            gc.collect()
        self.console.print(f"safe-projection head: layer {layer}, {settings.facets} facet(s); a fresh probe tells "
                           f"harmful from safe states {report.probe_accuracy_before:.1%} → "
                           f"{report.probe_accuracy_after:.1%}; moves {report.harmful_moved:.0%} of harmful and "
                           f"{report.safe_moved:.0%} of safe states (validation)")
        return target

    def log_inputs(self, tracker: Tracker, roles: dict[str, Any], model_path: str, judges_dir: str) -> None:
        super().log_inputs(tracker, roles, model_path, judges_dir)
        head_dir = self.config.out_dir() / HEAD_DIR
        if not (head_dir / REPORT_FILE).is_file():
            return
        report = json.loads((head_dir / REPORT_FILE).read_text())
        tracker.log_metrics({f"head/{name}": value for name, value in report.items()
                             if isinstance(value, (int, float))}, 0)
        tracker.set_tags({"head.layer": report["layer"]})
        tracker.log_artifacts(head_dir, HEAD_DIR)
