"""A safe-projection head travels with its model: hooked into every forward pass, saved and loaded with it."""

import json

import pytest
import torch

from safelatent.methods.safe_projection import SafeProjection
from safelatent.models.hooks import hidden_states_at
from safelatent.models.loading import load, save
from safelatent.models.lora import LoraSettings
from safelatent.models.policy import PolicySettings, export_policy, load_policy, trainable_state
from safelatent.models.safe_head import HEAD_CONFIG, HEAD_WEIGHTS, attach, attached_head, detach, has_head

LAYER = 1
INPUT = torch.tensor([[5, 17, 42, 8, 99, 3], [7, 7, 120, 64, 1, 250]])


def logits(model):
    with torch.no_grad():
        return model(input_ids=INPUT).logits


def cutting_head(model, facets: int = 2) -> SafeProjection:
    """Facets through the middle of the layer's states, so some states move and some do not."""
    states = hidden_states_at(model, INPUT, None, [LAYER])[LAYER].reshape(-1, model.config.hidden_size)
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(facets, states.shape[1], generator=generator)
    head = SafeProjection(states.shape[1], facets=facets)
    return head.set_facets(weight, torch.quantile(states @ weight.T, 0.5, dim=0))


@pytest.fixture(params=["llama", "gpt2"])
def model_dir(request, tiny_llama_dir, tiny_gpt2_dir):
    return tiny_llama_dir if request.param == "llama" else tiny_gpt2_dir


def test_the_head_changes_the_model_and_removing_it_restores_the_logits_exactly(model_dir):
    model = load(model_dir, device="cpu").model
    before = logits(model)
    attach(model, LAYER, cutting_head(model))
    with_head = logits(model)
    assert not torch.allclose(with_head, before)
    detach(model)
    assert torch.equal(logits(model), before)
    assert attached_head(model) is None


def test_a_saved_sls_model_loads_with_its_head_and_identical_logits(model_dir, tmp_path):
    loaded = load(model_dir, device="cpu")
    attach(loaded.model, LAYER, cutting_head(loaded.model))
    expected = logits(loaded.model)
    save(loaded, tmp_path / "sls")
    assert has_head(tmp_path / "sls") and (tmp_path / "sls" / HEAD_WEIGHTS).is_file()
    spec = json.loads((tmp_path / "sls" / HEAD_CONFIG).read_text())
    assert spec["layer"] == LAYER and spec["facets"] == 2

    again = load(tmp_path / "sls", device="cpu")
    assert attached_head(again.model).layer == LAYER
    assert torch.equal(logits(again.model), expected)
    # A plain transformers load ignores the head's files: the same base model, no head.
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "sls").eval()
    assert torch.equal(logits(plain), logits(load(model_dir, device="cpu").model))


def test_a_lora_policy_keeps_the_head_frozen_and_exports_it(tiny_llama_dir, tmp_path):
    loaded = load(tiny_llama_dir, device="cpu")
    attach(loaded.model, LAYER, cutting_head(loaded.model))
    save(loaded, tmp_path / "start")
    policy = load_policy(str(tmp_path / "start"), PolicySettings(device="cpu", lora=LoraSettings(r=2)), trainable=True)
    assert attached_head(policy.model) is not None
    assert not any("safe" in name for name in trainable_state(policy.model)), "the head must not train with PPO"
    with torch.no_grad():  # move the adapters so the export differs from the start
        for name, parameter in policy.model.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.05)
    trained = logits(policy.model)
    export_policy(policy.model, policy.tokenizer, tmp_path / "export")
    exported = load(tmp_path / "export", device="cpu")
    assert attached_head(exported.model) is not None
    torch.testing.assert_close(logits(exported.model), trained, atol=1e-5, rtol=1e-5)


def test_a_head_from_another_model_is_refused_with_the_reason(tiny_llama_dir, tmp_path):
    loaded = load(tiny_llama_dir, device="cpu")
    attach(loaded.model, LAYER, cutting_head(loaded.model))
    save(loaded, tmp_path / "sls")
    spec = json.loads((tmp_path / "sls" / HEAD_CONFIG).read_text())
    (tmp_path / "sls" / HEAD_CONFIG).write_text(json.dumps({**spec, "hidden_size": spec["hidden_size"] + 1}))
    with pytest.raises(ValueError, match="belongs to another model"):
        load(tmp_path / "sls", device="cpu")
    (tmp_path / "sls" / HEAD_CONFIG).write_text("{not json")
    with pytest.raises(ValueError, match="not a readable safe-projection config"):
        load(tmp_path / "sls", device="cpu")


def test_a_follower_and_a_resumed_learner_take_the_updated_head(tiny_llama_dir, tmp_path):
    from safelatent.methods.learner import OptimizerSettings, PPOLearner
    from safelatent.methods.ppo import PPOSettings
    from safelatent.models.policy import follower_state, load_follower_state
    from safelatent.models.safe_head import head_state, load_head_state

    loaded = load(tiny_llama_dir, device="cpu")
    attach(loaded.model, LAYER, cutting_head(loaded.model))
    save(loaded, tmp_path / "start")
    settings = PolicySettings(device="cpu")
    learner = load_policy(str(tmp_path / "start"), settings, trainable=True).model
    follower = load_policy(str(tmp_path / "start"), settings, trainable=False).model
    with torch.no_grad():  # an SLS head update between PPO steps
        attached_head(learner).head.bias.sub_(0.5)
    learner.eval()
    assert not torch.allclose(logits(learner), logits(follower))
    load_follower_state(follower, follower_state(learner))
    assert torch.equal(logits(follower), logits(learner))
    assert follower_state(load(tiny_llama_dir, device="cpu").model)["head"] is None, "a model without a head"

    ppo = PPOSettings(estimator="grpo")
    state = PPOLearner(learner, ppo, OptimizerSettings()).state_dict()
    fresh = load_policy(str(tmp_path / "start"), settings, trainable=True).model
    PPOLearner(fresh, ppo, OptimizerSettings()).load_state_dict(state)
    assert torch.equal(head_state(fresh)["bias"], head_state(learner)["bias"])
    with pytest.raises(ValueError, match="carries no safe-projection head"):
        load_head_state(load(tiny_llama_dir, device="cpu").model, head_state(learner))
    with pytest.raises(ValueError, match="do not fit the attached head"):
        load_head_state(fresh, {"weight": torch.zeros(3, 32), "bias": torch.zeros(3)})
