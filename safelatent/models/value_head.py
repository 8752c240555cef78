"""A causal LM with a scalar value head on its last hidden state, for PPO's critic: V(s_t) per token."""

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel

VALUE_HEAD_FILE = "value_head.safetensors"


class ValueHeadModel(nn.Module):
    """policy(input) → (logits [batch, seq, vocab], values [batch, seq]). The head reads the final hidden state."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model
        hidden_size = model.config.get_text_config().hidden_size
        self.value_head = nn.Linear(hidden_size, 1)
        # Start from zero values so the critic's first estimates do not bias the first advantages.
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        parameter = next(model.parameters())
        self.value_head.to(device=parameter.device, dtype=parameter.dtype)

    @property
    def config(self):
        return self.model.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, logits_to_keep: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the last `logits_to_keep` positions (all when 0) and values of every position."""
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            output_hidden_states=True, use_cache=False, logits_to_keep=logits_to_keep)
        values = self.value_head(output.hidden_states[-1]).squeeze(-1)
        return output.logits, values

    def save_value_head(self, directory: str | Path) -> Path:
        path = Path(directory) / VALUE_HEAD_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({name: tensor.detach().cpu().contiguous() for name, tensor in self.value_head.state_dict().items()},
                  str(path))
        return path

    def load_value_head(self, directory: str | Path) -> None:
        path = Path(directory) / VALUE_HEAD_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no value head at {path}; save one with save_value_head first")
        self.value_head.load_state_dict(load_file(str(path)))
