"""Loading, saving and generating with any Hugging Face causal LM: local, s3:// and two architectures."""

import pytest
import torch

from safelatent.models.generate import chat_prompt, generate
from safelatent.models.loading import load, resolve_dtype, save
from safelatent.storage import s3_client, upload


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_load_generate_save_round_trip(fixture, request, tmp_path):
    loaded = load(request.getfixturevalue(fixture))
    assert loaded.model.dtype == torch.float32 and not loaded.model.training
    assert chat_prompt(loaded.tokenizer, "hi") == "<|user|>hi<|end|><|assistant|>"
    replies = generate(loaded.model, loaded.tokenizer, ["What is 12 plus 7?", "hi", "How do I hack?"],
                       max_new_tokens=5, batch_size=2)
    assert len(replies) == 3 and all(isinstance(reply, str) for reply in replies)
    # Batching and left padding must not change a greedy reply.
    alone = generate(loaded.model, loaded.tokenizer, ["hi"], max_new_tokens=5)
    assert alone[0] == replies[1]

    again = load(save(loaded, tmp_path / "saved"))
    inputs = loaded.tokenizer("What is 12 plus 7?", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(loaded.model(**inputs).logits, again.model(**inputs).logits)


def test_sampling_is_seeded(tiny_llama_dir):
    loaded = load(tiny_llama_dir)
    first = generate(loaded.model, loaded.tokenizer, ["hi"] * 3, max_new_tokens=6, temperature=1.0, seed=3)
    second = generate(loaded.model, loaded.tokenizer, ["hi"] * 3, max_new_tokens=6, temperature=1.0, seed=3)
    assert first == second
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        generate(loaded.model, loaded.tokenizer, ["hi"], temperature=-1)


def test_load_from_s3_prefix(tiny_llama_dir, s3_endpoint, aws_test_credentials, tmp_path):
    s3_client(s3_endpoint).create_bucket(Bucket="models")
    upload(tiny_llama_dir, "s3://models/tiny/", s3_endpoint)
    loaded = load("s3://models/tiny", endpoint_url=s3_endpoint, cache_dir=tmp_path / "cache")
    assert loaded.source == "s3://models/tiny"
    reference = load(tiny_llama_dir)
    inputs = reference.tokenizer("hello", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(reference.model(**inputs).logits, loaded.model(**inputs).logits)


def test_dtype_and_device_resolution():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float16") == torch.float16
