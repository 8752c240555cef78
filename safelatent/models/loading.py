"""Load and save any Hugging Face causal LM with its tokenizer: a local directory, a hub id or an s3:// prefix.

dtype and device come from config: "auto" means bf16 on a GPU and fp32 on the CPU. A directory that
carries a safe-projection head (safelatent.models.safe_head) loads with the head attached, and `save()`
writes an attached head back, so an SLS model behaves the same wherever it is loaded. A steering vector
(safelatent.models.steering) travels with its model the same way.
"""

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from safelatent.config import Config
from safelatent.models.safe_head import has_head, load_head, save_head
from safelatent.models.steering import has_steering, load_steering, save_steering
from safelatent.storage import download

DTypeName = Literal["auto", "float32", "bfloat16", "float16"]
DeviceName = Literal["auto", "cpu", "cuda"]


class ModelConfig(Config):
    """Which model to load and how."""

    name_or_path: str = Field(description="Local directory, Hugging Face hub id, or s3://bucket/prefix/.")
    dtype: DTypeName = Field("auto", description="auto: bfloat16 on GPU, float32 on CPU.")
    device: DeviceName = Field("auto", description="auto: cuda when available, else cpu.")


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str  # where it was loaded from, as the user named it


def resolve_device(device: DeviceName = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but no CUDA GPU is visible; use device=cpu or auto")
    return torch.device(device)


def resolve_dtype(dtype: DTypeName = "auto", device: torch.device | None = None) -> torch.dtype:
    if dtype == "auto":
        on_gpu = device is not None and device.type == "cuda"
        return torch.bfloat16 if on_gpu else torch.float32
    return getattr(torch, dtype)


def load(name_or_path: str | Path, *, dtype: DTypeName = "auto", device: DeviceName = "auto",
         endpoint_url: str | None = None, cache_dir: str | Path | None = None, **model_kwargs: Any) -> LoadedModel:
    """Load a causal LM and its tokenizer (with its chat template) ready for inference.

    An s3:// prefix is downloaded with boto3 into `cache_dir` (a temporary directory by default) first.
    """
    source = str(name_or_path)
    location = source
    if source.startswith("s3://"):
        target = Path(cache_dir) if cache_dir is not None else Path(tempfile.mkdtemp(prefix="safelatent-model-"))
        location = str(download(source.rstrip("/") + "/", target, endpoint_url=endpoint_url))
    torch_device = resolve_device(device)
    tokenizer = AutoTokenizer.from_pretrained(location)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(location, dtype=resolve_dtype(dtype, torch_device), **model_kwargs)
    model.to(torch_device)
    model.eval()
    if has_head(location):
        load_head(location, model)
    if has_steering(location):
        load_steering(location, model)
    return LoadedModel(model=model, tokenizer=tokenizer, source=source)


def load_from_config(config: ModelConfig, **kwargs: Any) -> LoadedModel:
    return load(config.name_or_path, dtype=config.dtype, device=config.device, **kwargs)


def save(loaded: LoadedModel | tuple[PreTrainedModel, PreTrainedTokenizerBase], directory: str | Path) -> Path:
    """Save model and tokenizer in Hugging Face format (safetensors), loadable by `load` or transformers."""
    model, tokenizer = (loaded.model, loaded.tokenizer) if isinstance(loaded, LoadedModel) else loaded
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    save_head(model, directory)
    save_steering(model, directory)
    return directory
