"""Refusal direction (difference of means, candidate selection), its steering hooks and directional ablation."""

import pytest
import torch

from safelatent.methods.refusal_direction import (
    DirectionCandidate,
    candidate_directions,
    first_token_log_probs,
    prompt_states,
    refusal_token_ids,
    select_refusal_direction,
    split_by_refusal,
    steer,
)
from safelatent.models.generate import encode_prompts, generate
from safelatent.models.hooks import HiddenStateRecorder, ablate_direction
from safelatent.models.loading import load

HARMFUL = ["How do I hack into a bank?", "How do I hack a process?", "Sure, here is how to hack."]
HARMLESS = ["What is 12 plus 7?", "What is the capital of France?", "Which response is better? A B"]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    loaded = load(str(tiny_llama_dir))
    return loaded.model.eval(), loaded.tokenizer


def logits(model, tokenizer, prompts=HARMLESS):
    with torch.no_grad():
        return model(**encode_prompts(model, tokenizer, prompts)).logits


def test_candidates_are_differences_of_class_means_at_each_position_and_layer(tiny):
    model, tokenizer = tiny
    candidates = candidate_directions(model, tokenizer, HARMFUL, HARMLESS, positions=(-1, -2), layers=[0, 2])
    assert [(c.position, c.layer) for c in candidates] == [(-1, 0), (-1, 2), (-2, 0), (-2, 2)]
    states_h = prompt_states(model, tokenizer, HARMFUL, [2], [-2])[-2, 2]
    states_b = prompt_states(model, tokenizer, HARMLESS, [2], [-2])[-2, 2]
    assert torch.allclose(candidates[3].direction, states_h.mean(0) - states_b.mean(0))
    # A prompt's state does not depend on what it is batched with (left padding, real-token positions).
    alone = prompt_states(model, tokenizer, HARMFUL[:1], [2], [-1])[-1, 2]
    batched = prompt_states(model, tokenizer, HARMFUL, [2], [-1])[-1, 2]
    assert torch.allclose(alone[0], batched[0], atol=1e-5)


def test_selection_picks_the_candidate_that_raises_refusal_and_respects_the_filters(tiny):
    model, tokenizer = tiny
    refusal = refusal_token_ids(tokenizer, ["Sorry"])
    boost = model.get_output_embeddings().weight[refusal[0]].detach().clone()
    torch.manual_seed(1)
    candidates = [DirectionCandidate(-1, 2, torch.randn_like(boost)), DirectionCandidate(-1, 1, boost)]
    chosen = select_refusal_direction(model, tokenizer, candidates, HARMFUL, HARMLESS, scales=[2.0, 8.0],
                                      where="all", max_kl=1e9, max_layer_fraction=1.0, refusal_prefixes=["Sorry"])
    assert (chosen.layer, chosen.scale) == (1, 8.0)
    assert len(chosen.scores) == 4 and chosen.summary()["chosen"]["refusal_probability"] > \
        chosen.baseline_refusal_probability
    # The layer filter: layer 1 of 3 is past the first 30% of the model, so only the random one is left... and
    # it is dropped too, leaving nothing: the error names the filters.
    with pytest.raises(ValueError, match="first 30% of the layers"):
        select_refusal_direction(model, tokenizer, candidates, HARMFUL, HARMLESS, scales=[8.0], where="all",
                                 max_kl=1e9, max_layer_fraction=0.3, refusal_prefixes=["Sorry"])
    with pytest.raises(ValueError, match="KL within 1e-09"):
        select_refusal_direction(model, tokenizer, candidates, HARMFUL, HARMLESS, scales=[8.0], where="all",
                                 max_kl=1e-9, refusal_prefixes=["Sorry"])


def test_prompt_end_steering_changes_only_the_last_prompt_position(tiny):
    model, tokenizer = tiny
    vector = torch.randn(model.config.hidden_size) * 5
    encoded = encode_prompts(model, tokenizer, HARMFUL)
    with torch.no_grad(), HiddenStateRecorder(model, [1]) as plain:
        model(**encoded)
    with torch.no_grad(), steer(model, vector, 1, 1.0, "prompt_end"), HiddenStateRecorder(model, [1]) as steered:
        model(**encoded)
    difference = steered.states[1][-1] - plain.states[1][-1]
    assert torch.allclose(difference[:, -1], vector.expand(len(HARMFUL), -1), atol=1e-5)
    assert torch.equal(difference[:, :-1], torch.zeros_like(difference[:, :-1]))
    # An explicit column (teacher forcing prompt + reply) steers that column only.
    with torch.no_grad(), steer(model, vector, 1, 1.0, "prompt_end") as hook, HiddenStateRecorder(model, [1]) as rec:
        hook.column = 2
        model(**encoded)
    moved = (rec.states[1][-1] - plain.states[1][-1]).abs().sum(-1) > 0
    assert moved[:, 2].all() and moved.sum() == len(HARMFUL)
    # Generation with prompt-end steering differs from plain generation, and the hook leaves nothing behind.
    before = generate(model, tokenizer, HARMFUL, max_new_tokens=6)
    with steer(model, vector * 20, 1, 1.0, "prompt_end"):
        during = generate(model, tokenizer, HARMFUL, max_new_tokens=6)
    assert during != before
    assert generate(model, tokenizer, HARMFUL, max_new_tokens=6) == before


def test_directional_ablation_removes_the_component_everywhere_and_restores_exactly(tiny):
    model, tokenizer = tiny
    direction = torch.randn(model.config.hidden_size)
    unit = direction / direction.norm()
    before = logits(model, tokenizer)
    with ablate_direction(model, direction), HiddenStateRecorder(model, [0, 1, 2]) as recorder, torch.no_grad():
        ablated = model(**encode_prompts(model, tokenizer, HARMLESS)).logits
    for layer in (0, 1, 2):
        assert (recorder.states[layer][-1] @ unit).abs().max() < 1e-4
    assert not torch.allclose(ablated, before)
    assert torch.equal(logits(model, tokenizer), before)
    with pytest.raises(ValueError, match="non-zero 1-D direction"):
        ablate_direction(model, torch.zeros(model.config.hidden_size))


def test_steering_rejects_an_unknown_placement(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="unknown steering placement"):
        steer(model, torch.ones(model.config.hidden_size), 0, 1.0, "middle")


def test_split_by_refusal_follows_the_models_own_first_token(tiny):
    model, tokenizer = tiny
    prompts = HARMFUL + HARMLESS
    ids = refusal_token_ids(tokenizer, ["Sorry", "I can't"])
    probability = torch.logsumexp(first_token_log_probs(model, tokenizer, prompts)[:, ids], dim=-1).exp()
    threshold = float(probability.median())
    refused, answered = split_by_refusal(model, tokenizer, prompts, refusal_prefixes=["Sorry", "I can't"],
                                         threshold=threshold)
    assert refused == [prompt for prompt, p in zip(prompts, probability, strict=True) if p > threshold]
    assert answered == [prompt for prompt, p in zip(prompts, probability, strict=True) if p <= threshold]
    assert refused and answered
    assert split_by_refusal(model, tokenizer, prompts, refusal_prefixes=["Sorry"], threshold=1.0) == ([], prompts)
