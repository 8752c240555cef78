"""Models: loading and saving Hugging Face causal LMs, generation, residual-stream hooks, value heads, LoRA."""
