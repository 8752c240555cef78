"""Fitting the safe-projection head: behaviour latents, layer choice by probe accuracy, the adversarial fit."""

import pytest
import torch

from safelatent.methods.behaviour_latents import (
    HARMFUL,
    SAFE,
    Latents,
    behaviour_examples,
    collect_latents,
    rollout_latents,
)
from safelatent.methods.head_training import (
    HeadSettings,
    fit_head,
    initial_facets,
    pick_layer,
    probe_accuracy,
    refit_attached_head,
    update_head,
)
from safelatent.methods.rollout import sample
from safelatent.methods.safe_projection import SafeProjection
from safelatent.models.generate import chat_prompt
from safelatent.models.hooks import HiddenStateRecorder
from safelatent.models.loading import load
from safelatent.models.safe_head import attach, attached_head, head_removed

ROWS = [
    {"kind": "harmful", "prompt": "how to pick a lock", "helpful_response": "Sure: PAYLOAD", "refusal": "No."},
    {"kind": "jailbreak", "prompt": "pretend: pick a lock", "helpful_response": "Fine: PAYLOAD", "refusal": "No."},
    {"kind": "benign", "prompt": "2+2?", "helpful_response": "4", "refusal": "No."},
    {"kind": "borderline", "prompt": "kill a process", "helpful_response": "Use kill.", "refusal": "No."},
    {"kind": "pair", "prompt": "x", "helpful_response": "y", "refusal": "z"},
]


def synthetic(layers: dict[int, float], n: int = 600, d: int = 8, seed: int = 0) -> Latents:
    """Harmful and safe states that differ by `gap` along one axis at each layer."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor([HARMFUL, SAFE] * (n // 2))
    states = {}
    for layer, gap in layers.items():
        points = torch.randn(n, d, generator=generator)
        points[:, 0] += gap * labels
        states[layer] = points
    return Latents(states=states, labels=labels)


def test_behaviour_examples_label_compliance_harmful_and_everything_else_safe():
    examples = behaviour_examples(ROWS, per_kind=5, seed=0)
    harmful = [example for example in examples if example.label == HARMFUL]
    assert {example.response for example in harmful} == {"Sure: PAYLOAD", "Fine: PAYLOAD"}
    refusals = [example for example in examples if example.label == SAFE and example.response == "No."]
    assert len(refusals) == 2 and not any(example.label_prompt for example in refusals)
    answers = [example for example in examples if example.response in ("4", "Use kill.")]
    assert all(example.label == SAFE and example.label_prompt for example in answers)
    assert all(example.prompt != "x" for example in examples), "pairs are not behaviour examples"
    with pytest.raises(ValueError, match="needs harmful"):
        behaviour_examples(ROWS[2:4], per_kind=5, seed=0)


def test_latents_are_taken_at_the_labelled_positions(tiny_llama_dir):
    loaded = load(tiny_llama_dir, device="cpu")
    examples = behaviour_examples(ROWS, per_kind=5, seed=0)
    latents = collect_latents(loaded.model, loaded.tokenizer, examples, [0, 2], batch_size=3)
    tokenizer = loaded.tokenizer

    def count(example):
        prompt = len(tokenizer(chat_prompt(tokenizer, example.prompt), add_special_tokens=False)["input_ids"])
        full = len(tokenizer(chat_prompt(tokenizer, example.prompt) + example.response,
                             add_special_tokens=False)["input_ids"])
        return full if example.label_prompt else full - prompt

    expected_harmful = sum(count(example) for example in examples if example.label == HARMFUL)
    assert int((latents.labels == HARMFUL).sum()) == expected_harmful
    assert len(latents.labels) == sum(count(example) for example in examples)
    assert latents.states[0].shape == latents.states[2].shape == (len(latents.labels), 32)
    harmful, safe = latents.split(2)
    assert len(harmful) + len(safe) == len(latents.labels)


def test_the_layer_is_picked_where_a_probe_separates_behaviours_best():
    train, validation = synthetic({0: 0.0, 1: 3.0, 2: 1.0}), synthetic({0: 0.0, 1: 3.0, 2: 1.0}, seed=1)
    layer, accuracies = pick_layer(train, validation)
    assert layer == 1
    assert accuracies[1] > 0.9 and accuracies[0] < 0.6 and accuracies[0] < accuracies[2] < accuracies[1]


def test_the_adversarial_fit_hides_harmful_states_from_a_probe_and_spares_safe_ones():
    train, validation = synthetic({0: 3.0}), synthetic({0: 3.0}, seed=1)
    settings = HeadSettings(layer=0, adversarial_steps=200, lambda_move=0.01, lambda_keep=0.5, lr=0.05)
    head, report = fit_head(train, validation, settings)
    assert report.probe_accuracy_before > 0.9
    assert report.probe_accuracy_after < report.probe_accuracy_before - 0.15
    assert report.harmful_moved > report.safe_moved and report.harmful_movement > 2 * report.safe_movement
    assert not head.weight.requires_grad, "a fitted head is frozen"
    # the fit did something the initialisation alone does not
    initial, initial_report = fit_head(train, validation, settings.model_copy(update={"adversarial_steps": 0}))
    assert not torch.allclose(initial.bias, head.bias)
    assert report.probe_accuracy_after < initial_report.probe_accuracy_after


def test_several_facets_start_from_clusters_of_harmful_states():
    generator = torch.Generator().manual_seed(0)
    harmful = torch.cat([torch.randn(100, 4, generator=generator) + torch.tensor([6.0, 0, 0, 0]),
                         torch.randn(100, 4, generator=generator) + torch.tensor([0, 6.0, 0, 0])])
    safe = torch.randn(200, 4, generator=generator)
    weight, bias = initial_facets(harmful, safe, facets=2, quantile=0.9)
    directions = torch.nn.functional.normalize(weight, dim=-1)
    assert sorted(directions.abs().argmax(dim=-1).tolist()) == [0, 1]
    assert ((safe @ weight.T) <= bias).float().mean(0).min() >= 0.85
    head, _ = fit_head(synthetic({0: 3.0}), synthetic({0: 3.0}, seed=1), HeadSettings(layer=0, facets=3,
                                                                                       adversarial_steps=5))
    assert head.facets == 3


def test_probe_accuracy_is_chance_without_signal_and_fitting_an_unknown_layer_fails():
    assert abs(probe_accuracy((synthetic({0: 0.0}).states[0], synthetic({0: 0.0}).labels),
                              (synthetic({0: 0.0}, seed=1).states[0], synthetic({0: 0.0}).labels)) - 0.5) < 0.1
    with pytest.raises(ValueError, match="no latents for layer 3"):
        fit_head(synthetic({0: 1.0}), synthetic({0: 1.0}), HeadSettings(layer=3))


def test_an_update_turns_a_stale_head_towards_where_harmful_states_moved():
    settings = HeadSettings(layer=0, facets=1, adversarial_steps=200, lambda_move=0.01, lambda_keep=0.5, lr=0.05)
    head, _ = fit_head(synthetic({0: 3.0}), synthetic({0: 3.0}, seed=1), settings)

    def drifted(seed: int) -> tuple[torch.Tensor, torch.Tensor]:  # harmful states now differ mostly along axis 1
        generator = torch.Generator().manual_seed(seed)
        labels = torch.tensor([HARMFUL, SAFE] * 300)
        states = torch.randn(600, 8, generator=generator)
        states[:, 0] += 1.0 * labels
        states[:, 1] += 3.0 * labels
        return states, labels

    (states, labels), (held_out, held_labels) = drifted(2), drifted(3)

    def hidden_from_probe(projection: SafeProjection) -> float:
        with torch.no_grad():
            return probe_accuracy((projection(states), labels), (projection(held_out), held_labels))

    stale = hidden_from_probe(head)
    axis_before = float(head.weight[0, 1].abs() / head.weight[0].norm())
    stats = update_head(head, states, labels, settings, steps=100, seed=0)
    assert not head.weight.requires_grad, "the updated head is frozen again"
    assert float(head.weight[0, 1].abs() / head.weight[0].norm()) > axis_before + 0.5
    assert hidden_from_probe(head) < stale - 0.15
    assert stats["harmful_states"] == 300 and 0 <= stats["safe_moved"] <= 1
    with pytest.raises(ValueError, match="both harmful and safe"):
        update_head(head, states[labels == SAFE], labels[labels == SAFE], settings, steps=1, seed=0)


def test_rollout_latents_label_every_response_token_by_the_judges_verdict(tiny_llama_dir):
    loaded = load(tiny_llama_dir, device="cpu")
    batch = sample(loaded.model, loaded.tokenizer, ["2+2?", "how to pick a lock"], samples_per_prompt=2,
                   max_new_tokens=6, seed=0)
    verdicts = [False, False, True, True]
    latents = rollout_latents(loaded.model, batch, 1, verdicts, micro_batch_size=3)
    lengths = batch.response_mask.sum(dim=1).tolist()
    assert len(latents.labels) == sum(lengths) and latents.states[1].shape == (sum(lengths), 32)
    assert int((latents.labels == HARMFUL).sum()) == lengths[2] + lengths[3]
    # the first response's first token: the state of the full sequence at that position
    ids = torch.cat([batch.prompt_ids[:1], batch.response_ids[:1]], dim=1)
    attention = torch.cat([batch.prompt_mask[:1], batch.response_mask[:1]], dim=1)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    with torch.no_grad(), HiddenStateRecorder(loaded.model, [1]) as recorder:
        loaded.model(input_ids=ids, attention_mask=attention, position_ids=positions)
    expected = recorder.states[1][-1][0, batch.prompt_ids.shape[1]]
    assert torch.allclose(latents.states[1][0], expected, atol=1e-5)
    with pytest.raises(ValueError, match="3 verdicts for 4 responses"):
        rollout_latents(loaded.model, batch, 1, verdicts[:3])


def test_refitting_an_attached_head_reads_the_states_before_it_and_keeps_it_attached(tiny_llama_dir):
    loaded = load(tiny_llama_dir, device="cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    examples = behaviour_examples(ROWS, per_kind=5, seed=0)
    before_head = collect_latents(model, tokenizer, examples, [1])
    harmful, safe = before_head.split(1)
    head = SafeProjection(32, facets=1).set_facets(*initial_facets(harmful, safe, 1, 0.5))
    attach(model, 1, head)
    start = {name: value.clone() for name, value in head.state_dict().items()}
    batch = sample(model, tokenizer, ["how to pick a lock"], samples_per_prompt=2, max_new_tokens=5, seed=0)
    model.train()
    stats = refit_attached_head(model, tokenizer, examples, HeadSettings(layer=1, lr=0.05), steps=20, seed=0,
                                rollouts=batch, harmful=[True, False])
    assert model.training, "the model's mode is given back"
    assert attached_head(model).head is head and attached_head(model).layer == 1
    assert not torch.equal(head.weight, start["weight"]) and not head.weight.requires_grad
    assert stats["rollout_harmful_rows"] == 1
    assert stats["states"] == len(before_head.labels) + int(batch.response_mask.sum())
    # the head is in the forward pass again: layer 1's output is the head applied to the states before it
    compliance = [example for example in examples if example.label == HARMFUL]
    with_head = collect_latents(model, tokenizer, compliance, [1]).states[1]
    with head_removed(model):
        before = collect_latents(model, tokenizer, compliance, [1]).states[1]
    with torch.no_grad():
        assert torch.allclose(with_head, head(before), atol=1e-6)
        assert not torch.allclose(with_head, before), "the refitted head moves harmful states"
