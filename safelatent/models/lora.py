"""LoRA through peft: wrap a model with low-rank adapters on its linear layers, and merge them back."""

from typing import TYPE_CHECKING

from pydantic import Field
from transformers import PreTrainedModel

from safelatent.config import Config

if TYPE_CHECKING:  # peft takes seconds to import; actors that do not use LoRA never pay for it
    from peft import PeftModel


class LoraSettings(Config):
    """LoRA adapter settings; W' = W + (alpha / r)·B·A with A [r, d_in], B [d_out, r], B starting at zero."""

    r: int = Field(8, ge=1, description="Rank of the adapters.")
    alpha: float = Field(16.0, gt=0, description="Scale numerator: the update is (alpha / r)·B·A.")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | str = Field(
        "all-linear", description="Module names to adapt, or 'all-linear' for every linear layer but the head.")


def apply_lora(model: PreTrainedModel, settings: LoraSettings) -> "PeftModel":
    """Freeze the model and add trainable adapters; outputs are unchanged until the adapters train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=settings.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def merge_lora(model: "PeftModel") -> PreTrainedModel:
    """Fold the adapters into the weights and return the plain model (for saving, serving and eval)."""
    return model.merge_and_unload()


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    return trainable, sum(parameter.numel() for parameter in model.parameters())
