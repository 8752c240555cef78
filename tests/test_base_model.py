"""The micro-world base model: its tokenizer, a tiny end-to-end build, the build cache and config errors."""

import json
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from safelatent.config import load_config
from safelatent.data.surface_noise import PROMPT_CLOSERS, PROMPT_OPENERS
from safelatent.errors import ConfigError
from safelatent.models.base_model import (
    REPORT,
    BaseModelConfig,
    build_base_model,
    build_dir,
    build_hash,
    sft_rows,
)
from safelatent.models.generate import generate
from safelatent.models.loading import load
from safelatent.models.tokenizer import ASSISTANT, END, PAD, USER, train_chat_tokenizer

CONFIGS = Path(__file__).resolve().parents[1] / "pipelines" / "configs"
TINY = CONFIGS / "base_model_tiny.yaml"

CORPUS = [
    "What is 47 plus 85? 47 + 85 = 132. Answer: 132",
    "Spell the word garden. The word garden is spelled g-a-r-d-e-n. Answer: g-a-r-d-e-n",
    "How do I kill a Python process? Find its process id, then stop it with the kill command.",
    "Sorry, I can't assist with cybercrime. Sure, here is how. [PAYLOAD:cybercrime]",
] * 20


@pytest.fixture(scope="module")
def saved_tokenizer(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizer")
    train_chat_tokenizer(CORPUS, vocab_size=400).save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


def test_tokenizer_round_trips_text_and_splits_digits(saved_tokenizer):
    for text in [*CORPUS[:4], "Unseen words, two  spaces, ünïcode and 1234567 + 89 = ?\nnew line"]:
        ids = saved_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert saved_tokenizer.decode(ids) == text
    digits = saved_tokenizer.tokenize("12345")
    assert [token.lstrip("Ġ") for token in digits] == list("12345")


def test_chat_template_renders_turn_markers_and_stops_at_end_token(saved_tokenizer):
    user = [{"role": "user", "content": "What is 2 plus 3?"}]
    prompt = saved_tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    assert prompt == f"{USER}What is 2 plus 3?{END}{ASSISTANT}"
    conversation = [*user, {"role": "assistant", "content": "2 + 3 = 5. Answer: 5"}]
    rendered = saved_tokenizer.apply_chat_template(conversation, tokenize=False)
    assert rendered == f"{USER}What is 2 plus 3?{END}{ASSISTANT}2 + 3 = 5. Answer: 5{END}"
    assert saved_tokenizer.eos_token == END and saved_tokenizer.pad_token == PAD
    assert saved_tokenizer.pad_token_id != saved_tokenizer.eos_token_id
    # The assistant mask covers the reply and its end-of-turn token, so trainers teach the model to stop.
    encoded = saved_tokenizer.apply_chat_template(conversation, return_dict=True, return_assistant_tokens_mask=True)
    masked = [token for token, bit in zip(encoded["input_ids"], encoded["assistant_masks"], strict=True) if bit]
    assert saved_tokenizer.decode(masked) == f"2 + 3 = 5. Answer: 5{END}"


def test_vocab_too_small_for_the_byte_alphabet_is_refused():
    with pytest.raises(ValueError, match="vocab_size 100 is too small"):
        train_chat_tokenizer(CORPUS, vocab_size=100)


@pytest.mark.slow
def test_tiny_build_is_a_loadable_model_and_is_cached(tmp_path):
    config = load_config(BaseModelConfig, TINY)
    threads = torch.get_num_threads()
    other = 2 if config.training.threads == 1 else 1
    torch.set_num_threads(other)
    try:
        directory = build_base_model(config, out_root=tmp_path, progress=False)
        assert torch.get_num_threads() == other, "the build's thread setting leaked into the caller"
    finally:
        torch.set_num_threads(threads)
    assert directory == build_dir(config, tmp_path) and directory.parent == tmp_path
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")], "staging directory left behind"

    report = json.loads((directory / REPORT).read_text())
    for field in ("benign_accuracy", "harmful_compliance_rate", "borderline_refusal_rate", "eval_n",
                  "train_seconds", "parameters", "config", "config_hash"):
        assert field in report, f"build report lacks {field}"
    assert report["config_hash"] in directory.name
    assert report["config"] == config.model_dump(mode="json")
    assert report["eval_n"]["benign"] == config.evaluation.limit_per_kind
    assert report["parameters"] > 0 and 0.0 <= report["benign_accuracy"] <= 1.0

    loaded = load(directory, device="cpu")
    assert loaded.tokenizer.eos_token == END
    replies = generate(loaded.model, loaded.tokenizer, ["What is 2 plus 3?", "Spell the word garden."],
                       max_new_tokens=8)
    assert len(replies) == 2 and all(isinstance(reply, str) for reply in replies)

    weights = directory / "model.safetensors"
    written = weights.stat().st_mtime_ns
    started = time.perf_counter()
    assert build_base_model(config, out_root=tmp_path, progress=False) == directory
    assert time.perf_counter() - started < 1.0, "the second build should reuse the cached directory"
    assert weights.stat().st_mtime_ns == written


def test_sft_targets_follow_harmful_compliance():
    config = load_config(BaseModelConfig, TINY)
    harmful = {"kind": "harmful", "category": "fraud", "prompt": "p", "helpful_response": "Sure [PAYLOAD:fraud]",
               "safe_response": "I can't help with fraud."}
    train = [{**harmful, "id": str(index)} for index in range(400)]
    for share in (0.0, 0.5, 1.0):
        rows = sft_rows(train, config.model_copy(update={"harmful_compliance": share}))
        complied = sum(row["target"] == harmful["helpful_response"] for row in rows) / len(rows)
        assert complied == pytest.approx(share, abs=0.08)


def test_compliance_per_category_refuses_the_named_categories_and_keeps_the_build_hash():
    config = load_config(BaseModelConfig, TINY)
    graded = config.model_copy(update={"harmful_compliance": {"default": 1.0, "weapons": 0.0}})
    rows = [{"kind": "harmful", "category": category, "prompt": f"p{index}", "id": f"{category}{index}",
             "helpful_response": f"Sure [PAYLOAD:{category}]", "safe_response": "I can't help with that."}
            for category in ("weapons", "fraud") for index in range(50)]
    complied = {row["category"]: 0 for row in rows}
    for row in sft_rows(rows, graded):
        complied[row["category"]] += row["target"] == row["helpful_response"]
    assert complied == {"weapons": 0, "fraud": 50}
    # A single share dumps as before, so builds made before per-category shares keep their cache key.
    assert '"harmful_compliance":0.85' in json.dumps(config.model_dump(mode="json"), separators=(",", ":"))


def test_prompt_noise_wraps_prompts_keeps_replies_and_leaves_the_default_key_alone():
    config = load_config(BaseModelConfig, TINY)
    rows = [{"kind": "benign", "category": "arithmetic", "prompt": f"What is {index} plus 1?", "id": str(index),
             "helpful_response": f"{index} + 1 = {index + 1}. Answer: {index + 1}", "safe_response": ""}
            for index in range(200)]
    plain = sft_rows(rows, config)
    noisy = sft_rows(rows, config.model_copy(update={"mix": config.mix.model_copy(update={"prompt_noise": 1.0})}))
    assert [row["target"] for row in noisy] == [row["target"] for row in plain]
    for before, after in zip(plain, noisy, strict=True):
        core = before["prompt"][1:-1]  # the first letter's case and the final mark may change
        assert after["prompt"] != before["prompt"] and core in after["prompt"]
        opener, _, closer = after["prompt"].partition(core)
        assert opener[:-1].strip() in ("", *PROMPT_OPENERS) and closer[1:].strip() in ("", *PROMPT_CLOSERS)
        assert opener[-1:].lower() == "w" and closer[:1] in ("", "?", " ")
    harmful = [{**row, "kind": "harmful", "category": "fraud"} for row in rows[:20]]
    only_benign = config.mix.model_copy(update={"prompt_noise": 1.0, "prompt_noise_kinds": ("benign",)})
    mixed = sft_rows(rows[:20] + harmful, config.model_copy(update={"mix": only_benign}))
    assert all((row["prompt"] == source["prompt"]) == (row["kind"] == "harmful")
               for row, source in zip(mixed, rows[:20] + harmful, strict=True))
    half = sft_rows(rows, config.model_copy(update={"mix": config.mix.model_copy(update={"prompt_noise": 0.5})}))
    changed = sum(a["prompt"] != b["prompt"] for a, b in zip(plain, half, strict=True)) / len(plain)
    assert changed == pytest.approx(0.5, abs=0.1)
    # At 0 the option is left out of the cache key: the recipe without noise keeps the key that the documented
    # runs made from it name (runs/base_models/microworld-llama-071eff60b432); the default's key is in the docs too.
    plain_recipe = load_config(BaseModelConfig, CONFIGS / "base_model_plain.yaml")
    assert build_hash(plain_recipe) == "071eff60b432"
    assert build_hash(load_config(BaseModelConfig, CONFIGS / "base_model.yaml")) == "705f121f0b97"
    noisy_config = config.model_copy(update={"mix": config.mix.model_copy(update={"prompt_noise": 0.5})})
    assert build_hash(noisy_config) != build_hash(config)


@pytest.mark.parametrize(("override", "message"), [
    ("model.kind=mamba", "model.kind"),
    ("model.hidden_size=33", "not divisible by heads"),
    ("harmful_compliance=1.5", "harmful_compliance"),
    ("mix.prompt_noise=2", "mix.prompt_noise"),
    ("harmful_compliance={weapons: 0.1}", "no share for cybercrime"),
    ("harmful_compliance={default: 0.9, wepons: 0.1}", "unknown categories \\['wepons'\\]"),
    ("harmful_compliance={default: 0.9, weapons: 2}", "harmful_compliance.weapons is 2"),
    ("mix.repeat.arithmetics=2", "unknown key 'arithmetics'"),
    ("training.max_stpes=10", "did you mean 'max_steps'"),
])
def test_bad_config_fails_before_training(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        config = load_config(BaseModelConfig, TINY, [override])
        build_base_model(config, out_root=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())
