"""Residual-stream hooks, value head and LoRA on two architectures (Llama and GPT-2 style)."""

import pytest
import torch
from torch import nn

from safelatent.models.hooks import HiddenStateRecorder, add_vector, hidden_states_at, project, transform_hidden
from safelatent.models.layers import decoder_layers, num_layers, resolve_layer
from safelatent.models.lora import LoraSettings, apply_lora, merge_lora, trainable_parameters
from safelatent.models.value_head import ValueHeadModel
from tests.tiny_models import tiny_model

ARCHITECTURES = ["llama", "gpt2"]
INPUT = torch.tensor([[5, 17, 42, 8, 99, 3], [7, 7, 120, 64, 1, 250]])


def logits(model, input_ids=INPUT):
    with torch.no_grad():
        return model(input_ids=input_ids).logits


@pytest.fixture(params=ARCHITECTURES)
def model(request):
    return tiny_model(request.param, vocab_size=300).eval()


def test_layers_are_found_generically(model):
    blocks = decoder_layers(model)
    assert len(blocks) == num_layers(model) == 3
    assert resolve_layer(model, -1) == 2
    with pytest.raises(IndexError, match="layer 3 is out of range for a model with 3 layers"):
        resolve_layer(model, 3)


def test_recorded_states_are_the_residual_stream(model):
    states = hidden_states_at(model, INPUT, None, layers=[0, -1])
    with torch.no_grad():
        reference = model(input_ids=INPUT, output_hidden_states=True).hidden_states
    assert torch.equal(states[0], reference[1])  # hidden_states[0] is the embedding output
    # The last layer's output is normalised before HF reports it, so compare the layer before instead.
    middle = hidden_states_at(model, INPUT, None, layers=[1])[1]
    assert torch.equal(middle, reference[2])
    assert states[2].shape == (2, 6, 32)


def test_adding_a_vector_changes_logits_and_removal_restores_them_exactly(model):
    before = logits(model)
    vector = torch.randn(32)
    with add_vector(model, 1, vector, scale=4.0):
        steered = logits(model)
    assert not torch.allclose(steered, before)
    assert torch.equal(logits(model), before)


def test_add_vector_adds_exactly_at_the_layer(model):
    vector = torch.randn(32)
    plain = hidden_states_at(model, INPUT, None, layers=[0])[0]
    hook = add_vector(model, 0, vector, scale=2.0)
    # The recorder is registered after the steering hook, so it sees the steered state.
    steered = hidden_states_at(model, INPUT, None, layers=[0])[0]
    hook.remove()
    assert torch.allclose(steered, plain + 2.0 * vector, atol=1e-6)


def test_project_with_a_module(model):
    direction = torch.nn.functional.normalize(torch.randn(32), dim=0)

    class RemoveDirection(nn.Module):
        def forward(self, hidden):
            return hidden - (hidden @ direction).unsqueeze(-1) * direction

    before = logits(model)
    with project(model, 1, RemoveDirection()):
        projected = hidden_states_at(model, INPUT, None, layers=[1])[1]
    assert torch.allclose(projected @ direction, torch.zeros(2, 6), atol=1e-5)
    assert torch.equal(logits(model), before)


def test_hooks_compose_and_validate(model):
    before = logits(model)
    first = transform_hidden(model, 0, lambda hidden: hidden * 2)
    second = add_vector(model, 2, torch.ones(32))
    assert not torch.allclose(logits(model), before)
    first.remove()
    second.remove()
    assert torch.equal(logits(model), before)
    with pytest.raises(ValueError, match="must be 1-D"):
        add_vector(model, 0, torch.ones(2, 32))
    with add_vector(model, 0, torch.ones(7)), pytest.raises(ValueError, match="vector has 7 dims"):
        logits(model)


def test_recorder_collects_every_forward_pass(model):
    with HiddenStateRecorder(model, [0, 2]) as recorder:
        logits(model)
        logits(model, INPUT[:1])
    assert [tuple(state.shape) for state in recorder.states[0]] == [(2, 6, 32), (1, 6, 32)]
    assert torch.equal(logits(model), logits(model))


def test_value_head_outputs_one_value_per_token(model, tmp_path):
    policy = ValueHeadModel(model)
    output_logits, values = policy(INPUT)
    assert output_logits.shape == (2, 6, 300) and values.shape == (2, 6)
    assert torch.equal(values, torch.zeros(2, 6))  # zero-initialised head
    with torch.no_grad():
        policy.value_head.bias.fill_(0.5)
    policy.save_value_head(tmp_path)
    other = ValueHeadModel(model)
    other.load_value_head(tmp_path)
    assert torch.allclose(other(INPUT)[1], torch.full((2, 6), 0.5))


def test_lora_starts_neutral_trains_few_parameters_and_merges(model):
    before = logits(model)
    wrapped = apply_lora(model, LoraSettings(r=4))
    trainable, total = trainable_parameters(wrapped)
    assert 0 < trainable < total / 5
    assert torch.allclose(logits(wrapped), before, atol=1e-6)
    assert len(decoder_layers(wrapped)) == 3  # hooks still find the layers inside the peft wrapper
    with torch.no_grad():
        for name, parameter in wrapped.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    adapted = logits(wrapped)
    assert not torch.allclose(adapted, before)
    merged = merge_lora(wrapped)
    assert torch.allclose(logits(merged), adapted, atol=1e-5)
