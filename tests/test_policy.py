import pytest
import torch

from safelatent.models.loading import load
from safelatent.models.lora import LoraSettings
from safelatent.models.policy import PolicySettings, export_policy, load_policy, load_trainable_state, trainable_state


@pytest.mark.parametrize("lora", [None, LoraSettings(r=2)])
def test_a_follower_policy_matches_the_learner_after_loading_its_trainable_state(tiny_llama_dir, lora):
    settings = PolicySettings(device="cpu", lora=lora)
    learner = load_policy(str(tiny_llama_dir), settings, trainable=True).model
    follower = load_policy(str(tiny_llama_dir), settings, trainable=False).model
    with torch.no_grad():
        for parameter in learner.parameters():
            if parameter.requires_grad:
                parameter.add_(0.01)
    state = trainable_state(learner)
    if lora is not None:
        assert state and all("lora_" in name for name in state)  # only the adapters travel
    load_trainable_state(follower, state)
    tokens = torch.tensor([[5, 6, 7, 8]])
    assert torch.allclose(learner(input_ids=tokens).logits, follower(input_ids=tokens).logits, atol=1e-6)


def test_weights_of_another_policy_are_refused(tiny_llama_dir):
    follower = load_policy(str(tiny_llama_dir), PolicySettings(device="cpu"), trainable=False).model
    with pytest.raises(KeyError, match="do not belong to this policy"):
        load_trainable_state(follower, {"not.a.weight": torch.zeros(1)})


def test_a_lora_policy_exports_as_a_plain_model_with_its_behaviour(tiny_llama_dir, tmp_path):
    loaded = load_policy(str(tiny_llama_dir), PolicySettings(device="cpu", lora=LoraSettings(r=2)), trainable=True)
    with torch.no_grad():
        for name, parameter in loaded.model.named_parameters():
            if "lora_B" in name:
                parameter.fill_(0.05)
    export_policy(loaded.model, loaded.tokenizer, tmp_path / "exported")
    plain = load(tmp_path / "exported", device="cpu").model
    tokens = torch.tensor([[5, 6, 7, 8]])
    assert torch.allclose(loaded.model(input_ids=tokens).logits, plain(input_ids=tokens).logits, atol=1e-5)
    assert "lora" not in " ".join(name for name, _ in plain.named_parameters())
