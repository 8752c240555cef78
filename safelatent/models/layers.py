"""Find a model's decoder layers generically, so hooks work on Llama-, Qwen-, Mistral- and GPT-2-style models.

The decoder stack is the `nn.ModuleList` whose length is the config's number of hidden layers and whose
entries are all of one class: `model.layers` in Llama/Qwen/Mistral, `transformer.h` in GPT-2, and the same
lists inside a peft or value-head wrapper. Layer ℓ's output is the residual stream h_ℓ after block ℓ.
"""

from torch import nn


def text_config(model: nn.Module):
    """The config of the model's language part (the whole config for a text-only model)."""
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no config; pass a Hugging Face model")
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def hidden_size(model: nn.Module) -> int:
    """d, the width of the residual stream."""
    return int(text_config(model).hidden_size)


def num_layers(model: nn.Module) -> int:
    count = getattr(text_config(model), "num_hidden_layers", None)
    if count is None:
        raise ValueError(f"cannot tell how many layers {type(model).__name__} has: its config has no "
                         "num_hidden_layers")
    return int(count)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks, outermost first match."""
    expected = num_layers(model)
    candidates = [
        (name, module) for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == expected and expected > 0
        and len({type(block) for block in module}) == 1
    ]
    if not candidates:
        raise ValueError(f"found no list of {expected} identical blocks in {type(model).__name__}; "
                         "this architecture's decoder layers cannot be located")
    # A vision tower or an MTP head could also hold a list of that size; the decoder's is the shallowest.
    return min(candidates, key=lambda candidate: candidate[0].count("."))[1]


def resolve_layer(model: nn.Module, layer: int) -> int:
    """A layer index in range, with Python-style negatives (-1 is the last layer)."""
    count = num_layers(model)
    index = layer + count if layer < 0 else layer
    if not 0 <= index < count:
        raise IndexError(f"layer {layer} is out of range for a model with {count} layers "
                         f"(valid: 0..{count - 1} or -{count}..-1)")
    return index
