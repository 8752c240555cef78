"""SLS-RLAIF: Safe Latent Space with PPO from AI feedback in the loop (DESIGN 6.3).

    1. head    ← fit a safe-projection head on the base model's latents (adversarially, against a probe);
                 the base model plus the head is saved as the starting model, under
                 <out_root>/start_models/<key of base model, head settings and micro-world>, so runs that
                 differ only in their PPO settings fit it once
    2. policy  ← PPO from AI feedback on that model (the RLAIF-PPO engine); the head is in every forward
                 pass: rollout, reference, learner
    3. evaluate the exported model (it carries the head, so `safelatent eval` and Serve see the same model)
    4. log the head's fit, the training and the evaluation to MLflow and register the model

Between PPO updates the head is frozen. With `head_updates.every: N` it alternates with PPO: after every
N-th step the learner refits the head on the policy as it is now (the behaviour examples teacher-forced
through the current weights, plus the step's own responses labelled by the harm classifier), continuing the
adversarial game from the current facets; the rollout workers and the reference then take the new head.
The reference is the starting model's weights with the policy's current head, so the KL penalty measures
what PPO changed in the weights and neither pulls the policy back towards the unsafe base nor fights the head.
"""

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, model_validator
from rich.console import Console

from pipelines.rlaif_ppo import RLAIFPPOConfig, RunResult, StepCallback
from safelatent.config import Config
from safelatent.methods.head_training import HeadSettings
from safelatent.tracking import TrackingSettings

START_MODELS_DIR = "start_models"  # under out_root: one fitted start model per head_fit_key, shared by runs
FIT_RECORD = "fit.json"  # written last: a start model without it is incomplete
FIT_REPORT = "fit_report.json"
LATENT_PLOT = "latent_space.png"


class HeadUpdateSettings(Config):
    """Alternating head updates during PPO (step 2): the head follows the policy's changing states."""

    every: int = Field(0, ge=0, description="Refit the head after every N-th PPO step; 0 keeps the head fitted "
                                            "in step 1 frozen for the whole run.")
    adversarial_steps: int = Field(50, ge=1, description="Probe/head rounds per update, from the current facets.")
    examples_per_kind: int = Field(100, ge=1, description="Micro-world train rows per kind teacher-forced through "
                                                          "the current policy at each update.")
    rollouts: bool = Field(True, description="Add the step's own responses, labelled harmful when the harm "
                                             "classifier's probability reaches harm_threshold.")
    harm_threshold: float = Field(0.5, gt=0, lt=1)


class SLSRLAIFConfig(RLAIFPPOConfig):
    """The sls-rlaif pipeline; `safelatent train sls-rlaif -c pipelines/configs/sls_rlaif.yaml key=value ...`."""

    pipeline: ClassVar[str] = "sls-rlaif"
    name: str = Field("sls-rlaif", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Run name: output folder "
                                                                                         "and MLflow run name.")
    head: HeadSettings = Field(default_factory=HeadSettings)
    head_updates: HeadUpdateSettings = Field(default_factory=HeadUpdateSettings)
    tracking: TrackingSettings = Field(default_factory=lambda: TrackingSettings(registered_model="sls-rlaif"))
    out_root: str = Field("runs/sls_rlaif", description="The run writes to <out_root>/<name>/.")

    @model_validator(mode="after")
    def _updates_happen(self) -> "SLSRLAIFConfig":
        every = self.head_updates.every
        if every and every >= self.steps:
            raise ValueError(f"head_updates.every={every} with steps={self.steps}: the head is refitted after "
                             f"every {every}-th step before the last, so no update would happen; lower it or "
                             "set it to 0 to keep the head frozen")
        return self


def run(config: SLSRLAIFConfig, resume: bool = False, console: Console | None = None,
        on_step: StepCallback | None = None) -> RunResult:
    from pipelines.sls_engine import SLSEngine

    console = console or Console(stderr=True)
    return SLSEngine(config, console).run(resume=resume, on_step=on_step)


def start_model_dir(config: SLSRLAIFConfig, base_model: str) -> Path:
    """Where the base model with its fitted head lives; runs (and tuning trials) with the same inputs share it."""
    return Path(config.out_root) / START_MODELS_DIR / head_fit_key(config, base_model)


def head_fit_key(config: SLSRLAIFConfig, base_model: str) -> str:
    """What decides the fitted head: the base model, the head settings and the micro-world."""
    inputs = {"base_model": str(Path(base_model).resolve()) if Path(base_model).exists() else base_model,
              "head": config.head.model_dump(mode="json"), "microworld": config.microworld.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]


def read_fit_record(start_model: Path) -> dict[str, Any] | None:
    try:
        return json.loads((start_model / FIT_RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return None
