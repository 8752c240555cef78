"""SLS-RLAIF: Safe Latent Space with PPO from AI feedback in the loop (DESIGN 6.3).

    1. head    ← fit a safe-projection head on the base model's latents (adversarially, against a probe);
                 the base model plus the head is saved as the starting model, under
                 <out_root>/start_models/<key of base model, head settings and micro-world>, so runs that
                 differ only in their PPO settings fit it once
    2. policy  ← PPO from AI feedback on that model (the RLAIF-PPO engine); the head is in every forward
                 pass: rollout, reference, learner
    3. evaluate the exported model (it carries the head, so `safelatent eval` and Serve see the same model)
    4. log the head's fit, the training and the evaluation to MLflow and register the model

The head is frozen during PPO; the reference is the starting model, head included, so the KL penalty
measures what PPO changed and does not pull the policy back towards the unsafe base.
"""

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field
from rich.console import Console

from pipelines.rlaif_ppo import RLAIFPPOConfig, RunResult, StepCallback
from safelatent.methods.head_training import HeadSettings
from safelatent.tracking import TrackingSettings

START_MODELS_DIR = "start_models"  # under out_root: one fitted start model per head_fit_key, shared by runs
FIT_RECORD = "fit.json"  # written last: a start model without it is incomplete
FIT_REPORT = "fit_report.json"
LATENT_PLOT = "latent_space.png"


class SLSRLAIFConfig(RLAIFPPOConfig):
    """The sls-rlaif pipeline; `safelatent train sls-rlaif -c pipelines/configs/sls_rlaif.yaml key=value ...`."""

    pipeline: ClassVar[str] = "sls-rlaif"
    name: str = Field("sls-rlaif", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Run name: output folder "
                                                                                         "and MLflow run name.")
    head: HeadSettings = Field(default_factory=HeadSettings)
    tracking: TrackingSettings = Field(default_factory=lambda: TrackingSettings(registered_model="sls-rlaif"))
    out_root: str = Field("runs/sls_rlaif", description="The run writes to <out_root>/<name>/.")


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
