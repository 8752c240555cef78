"""Batched chat generation: apply the model's chat template, sample with a KV cache, return the replies."""

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def chat_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """The text the model sees for one user turn, ending where the assistant's reply begins."""
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompts(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]
                   ) -> dict[str, torch.Tensor]:
    """Chat prompts left-padded into one batch on the model's device, so position −1 is every row's last prompt
    token, with position ids that count real tokens only (as generation uses them)."""
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        encoded = tokenizer([chat_prompt(tokenizer, prompt) for prompt in prompts], return_tensors="pt",
                            padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = padding_side
    device = next(model.parameters()).device
    mask = encoded["attention_mask"].to(device)
    return {"input_ids": encoded["input_ids"].to(device), "attention_mask": mask,
            "position_ids": (mask.long().cumsum(-1) - 1).clamp_min(0)}


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], *,
             max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0, batch_size: int = 32,
             seed: int | None = 0) -> list[str]:
    """Reply to each prompt as a chat user turn. temperature 0 is greedy; otherwise sampling with top_p.

    Prompts are left-padded into batches, so any hooks on the model see real batches.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    replies: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [chat_prompt(tokenizer, prompt) for prompt in prompts[start:start + batch_size]]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {
                "do_sample": False}
            output = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                    eos_token_id=tokenizer.eos_token_id, **sampling)
            new_tokens = output[:, batch["input_ids"].shape[1]:]
            replies.extend(text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = padding_side
    return replies
