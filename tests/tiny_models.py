"""Tiny random chat models for tests: a real BPE tokenizer with a chat template, Llama or GPT-2 weights."""

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
CORPUS = [
    "How do I hack into a bank? I can't help with that. Sure, here is how. [PAYLOAD:cybercrime]",
    "What is 12 plus 7? 12 + 7 = 19. Answer: 19",
    "What is the capital of France? The capital of France is Paris. Answer: Paris",
    "How do I kill a Python process? Find its process id, then stop it with the kill command.",
    "Sorry, I can't assist with that. Which response is better? A B",
]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<|pad|>", eos_token="<|end|>",
                                        additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_model(architecture: str, vocab_size: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if architecture == "llama":
        config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
        return LlamaForCausalLM(config)
    if architecture == "gpt2":
        config = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=3, n_head=4, n_positions=256)
        return GPT2LMHeadModel(config)
    raise ValueError(f"unknown tiny architecture {architecture!r}")


def save_chat_model(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, directory: Path) -> Path:
    """Save a model with its tokenizer, its pad and end tokens set, as a loadable Hugging Face directory."""
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def save_tiny_chat_model(directory: Path, architecture: str = "llama", seed: int = 0) -> Path:
    """Write a loadable Hugging Face model directory (weights, tokenizer, chat template)."""
    tokenizer = tiny_tokenizer()
    model = tiny_model(architecture, len(tokenizer), seed)
    return save_chat_model(model, tokenizer, directory)


def save_memorized_chat_model(directory: Path, exchanges: list[tuple[str, str]], architecture: str = "llama",
                              steps: int = 150, seed: int = 0) -> Path:
    """A tiny chat model trained until it answers each (prompt, reply) exchange with its reply under greedy
    decoding: a model whose behaviour a test can predict (for example one that complies with a harmful request)."""
    tokenizer = tiny_tokenizer()
    model = tiny_model(architecture, len(tokenizer), seed)
    sequences, masks = [], []
    for prompt, reply in exchanges:
        context = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                add_generation_prompt=True)
        prompt_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        sequences.append(prompt_ids + reply_ids)
        masks.append([0] * len(prompt_ids) + [1] * len(reply_ids))
    width = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), width), tokenizer.pad_token_id)
    labels = torch.full((len(sequences), width), -100)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, (sequence, mask) in enumerate(zip(sequences, masks, strict=True)):
        input_ids[row, :len(sequence)] = torch.tensor(sequence)
        attention[row, :len(sequence)] = 1
        labels[row, :len(sequence)] = torch.tensor([t if m else -100 for t, m in zip(sequence, mask, strict=True)])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return save_chat_model(model, tokenizer, directory)
