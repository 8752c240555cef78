"""SafeSteer (safety-token voting, on-policy distillation) and ES2 (separation loss, KL anchor) on tiny models."""

import random

import pytest
import torch

from safelatent.methods.es2 import (
    ES2Trainer,
    class_distance,
    default_layers,
    exchange_inputs,
    last_prompt_states,
    reply_prediction_mask,
    separation_loss,
    separation_reference,
)
from safelatent.methods.refusal_direction import RefusalDirection
from safelatent.methods.rollout import sample
from safelatent.methods.safesteer import (
    SafeSteerDistiller,
    base_weights,
    reply_log_probs,
    teacher,
    vote_safety_tokens,
)
from safelatent.methods.vocab_divergence import forward_kl, reverse_kl
from safelatent.models.generate import chat_prompt, encode_prompts
from safelatent.models.hooks import add_vector
from safelatent.models.loading import load
from safelatent.models.lora import LoraSettings, apply_lora

HARMFUL = ["How do I hack into a bank?", "How do I hack a process?", "Sure, here is how to hack.",
           "How do I kill a bank?"]
HARMLESS = ["What is 12 plus 7?", "What is the capital of France?", "Which response is better? A B",
            "What is 19 plus 12?"]
REPLIES = ["12 + 7 = 19. Answer: 19", "The capital of France is Paris.", "A", "Answer: 31"]


@pytest.fixture
def lora_model(tiny_llama_dir):
    loaded = load(str(tiny_llama_dir))
    torch.manual_seed(0)
    return apply_lora(loaded.model, LoraSettings(r=4, alpha=8)), loaded.tokenizer


def planted_refusal(model, tokens, scale=30.0):
    """Steering at the last layer along the unembedding rows of `tokens`, made orthogonal to every other row: it
    boosts exactly those tokens."""
    unembedding = model.get_output_embeddings().weight.detach()
    with torch.no_grad():
        basis, _ = torch.linalg.qr(unembedding[torch.tensor(tokens)].T)
        others = torch.ones(unembedding.shape[0], dtype=torch.bool)
        others[torch.tensor(tokens)] = False
        unembedding[others] -= (unembedding[others] @ basis) @ basis.T
        unembedding[torch.tensor(tokens)] *= 10  # a random tiny model's logits are all near 0: make it count
    direction = unembedding[torch.tensor(tokens)].sum(0)
    return RefusalDirection(direction=direction / direction.norm(), layer=-1, position=-1, scale=scale, where="all")


def test_voting_picks_the_tokens_the_steering_boosts(lora_model):
    model, tokenizer = lora_model
    boosted = tokenizer.convert_tokens_to_ids(["Sorr", "Ġcan", "Ġhelp"])
    assert tokenizer.unk_token_id not in boosted
    refusal = planted_refusal(model, boosted)
    chosen = vote_safety_tokens(model, tokenizer, refusal, HARMLESS, num_tokens=3, top_k=3, pool=20,
                                max_new_tokens=5)
    assert set(chosen.ids) == set(boosted)
    assert chosen.votes[0] >= chosen.votes[-1] > 0 and set(chosen.tokens) == {"Sorr", " can", " help"}
    special = tokenizer.all_special_ids
    everything = vote_safety_tokens(model, tokenizer, refusal, HARMLESS, num_tokens=400, top_k=20, max_new_tokens=5)
    assert not set(everything.ids) & set(special)


def test_the_teacher_is_the_steered_base_and_leaves_the_student_untouched(lora_model):
    model, tokenizer = lora_model
    for parameter in model.parameters():  # make the adapters matter
        if parameter.requires_grad:
            torch.nn.init.normal_(parameter, std=0.05)
    refusal = planted_refusal(model, [5])
    inputs = exchange_inputs(model, tokenizer, HARMLESS, REPLIES)
    with torch.no_grad():
        student = model(**inputs).logits
        with base_weights(model):
            base = model(**inputs).logits
        with teacher(model, refusal):
            steered = model(**inputs).logits
        after = model(**inputs).logits
    assert not torch.allclose(student, base) and not torch.allclose(steered, base)
    assert torch.equal(after, student)
    assert (steered.argmax(-1) == 5).float().mean() > 0.9


def test_distillation_moves_the_student_towards_the_teacher_on_the_safety_tokens(lora_model):
    model, tokenizer = lora_model
    boosted = tokenizer.convert_tokens_to_ids(["Sorr", "Ġcan", "Ġhelp"])
    refusal = planted_refusal(model, boosted, scale=4.0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    distiller = SafeSteerDistiller(model, tokenizer, refusal, boosted, optimizer, max_new_tokens=6)
    # The loss of one on-policy step depends on what was sampled; measure on one fixed batch before and after.
    fixed = sample(model, tokenizer, HARMFUL, max_new_tokens=6, seed=123)

    def safety_token_kl() -> float:
        model.eval()
        with torch.no_grad():
            with teacher(model, refusal, prompt_columns=fixed.prompt_ids.shape[1]):
                teacher_log = reply_log_probs(model, fixed)
            student_log = reply_log_probs(model, fixed)
        return float(reverse_kl(student_log, teacher_log, fixed.response_mask, vocab=torch.tensor(boosted)))

    before = safety_token_kl()
    first = distiller.step(HARMFUL, seed=0)
    for step in range(1, 25):
        last = distiller.step(HARMFUL, seed=step)
    assert first["loss"] > 0 and before > 0
    after = safety_token_kl()
    assert after < 0.5 * before
    assert last["first_token_safety_mass/student"] > first["first_token_safety_mass/student"]
    with pytest.raises(ValueError, match="at least one safety token"):
        SafeSteerDistiller(model, tokenizer, refusal, [], optimizer)


def test_separation_loss_is_bounded_and_in_units_of_the_state_scale():
    distances = {0: torch.tensor(1.0), 1: torch.tensor(5.0)}
    loss = separation_loss(distances, base_distances={0: 1.0, 1: 1.0}, base_scales={0: 2.0, 1: 4.0}, margin=2.0)
    assert float(loss) == pytest.approx((1.0 / 2.0 + 0.0) / 2)  # layer 1 is past the margin: no reward
    assert float(class_distance(torch.tensor([[0.0, 0.0], [2.0, 0.0]]), torch.tensor([[1.0, 3.0]]))) == 3.0
    with pytest.raises(ValueError, match="margin must be > 0"):
        separation_loss(distances, {0: 1.0, 1: 1.0}, {0: 1.0, 1: 1.0}, margin=0)


def test_es2_raises_the_class_distance_while_the_kl_on_harmless_inputs_stays_small(lora_model):
    model, tokenizer = lora_model
    layers = default_layers(model)
    assert layers == [0, 1]  # 25% to 75% of three layers
    reference = separation_reference(model, tokenizer, HARMFUL, HARMLESS, layers)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    trainer = ES2Trainer(model, tokenizer, reference, optimizer, margin=3.0, beta=5.0)
    for _ in range(40):
        metrics = trainer.step(HARMFUL, HARMLESS, HARMLESS, REPLIES)
    model.eval()
    states = last_prompt_states(model, tokenizer, HARMFUL + HARMLESS, layers, grad=False)
    for layer in layers:
        # Relative mode (the default): the distance grows in units of the states' own size, not by inflating them.
        relative = float(class_distance(states[layer][:4], states[layer][4:]) / states[layer].pow(2).sum(-1).mean()
                         .sqrt())
        base = reference.distances[layer] / reference.scales[layer]
        assert relative > 2.0 * base, (layer, relative, base)
    inputs = exchange_inputs(model, tokenizer, HARMLESS, REPLIES)
    with torch.no_grad():
        with base_weights(model):
            base = model(**inputs).logits
        kl = float(forward_kl(model(**inputs).logits, base, inputs["attention_mask"]))
    assert kl < 0.05 and metrics["kl_to_base"] < 0.05 and metrics["first_token_kl"] < 0.05
    assert metrics["separation_loss"] < 0.5 * 2.0 * 1.0  # it started at mean relu(3·base − base) = 2·base ≤ 2



def attack_setup(model, tokenizer):
    """(separation reference, unit harmful → safe direction at layer 1, ε·scale of the trainer's first step with
    seed 3 and budget 8), after moving the adapters off zero so the attacked model differs from the start and the
    KL has a gradient."""
    reference = separation_reference(model, tokenizer, HARMFUL, HARMLESS, default_layers(model))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.05)
        states = last_prompt_states(model, tokenizer, HARMFUL + HARMLESS, [1], grad=False)[1]
    direction = states[4:].mean(0) - states[:4].mean(0)
    size = random.Random(3).uniform(0.0, 8.0) * float(states.pow(2).sum(-1).mean().sqrt())
    return reference, direction / direction.norm(), size


def test_the_attack_anchor_descends_the_kl_under_the_embedding_attack(lora_model):
    model, tokenizer = lora_model
    reference, direction, size = attack_setup(model, tokenizer)
    encoded = encode_prompts(model, tokenizer, HARMFUL)

    def attacked_kl() -> float:
        """KL(start ‖ model) of the first reply token on the harmful prompts pushed by ε·scale towards safe."""
        with torch.no_grad():
            with base_weights(model):
                start = model(**encoded).logits[:, -1]
            with add_vector(model, 1, direction, scale=size):
                pushed = model(**encoded).logits[:, -1]
        return float(forward_kl(pushed[:, None], start[:, None], torch.ones(4, 1)))

    before = attacked_kl()
    # The KL and its gradient are small on a random model: a large step shows the descent.
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=10.0)
    # The anchor alone: no separation to reach (a margin below the start's), no other KL term.
    trainer = ES2Trainer(model, tokenizer, reference, optimizer, margin=0.01, beta=0.0, decision_beta=0.0,
                         attack_beta=1.0, attack_budget=8.0, seed=3, max_grad_norm=1e9)
    assert trainer.attack_layer == 1  # the middle of the separated layers [0, 1], where the report attacks
    metrics = trainer.step(HARMFUL, HARMLESS, HARMLESS, REPLIES)
    model.eval()
    assert metrics["separation_loss"] == 0 and metrics["attacked_first_token_kl"] == pytest.approx(before, rel=1e-4)
    assert attacked_kl() < 0.9 * before, (before, attacked_kl())
    off = ES2Trainer(model, tokenizer, reference, optimizer).step(HARMFUL, HARMLESS, HARMLESS, REPLIES)
    assert "attacked_first_token_kl" not in off
    with pytest.raises(ValueError, match="attack layer 2 must be one of the separated layers"):
        ES2Trainer(model, tokenizer, reference, optimizer, attack_beta=1.0, attack_layer=2)


def test_the_reply_anchor_keeps_whole_refusals_under_the_attack(lora_model):
    model, tokenizer = lora_model
    reference, direction, size = attack_setup(model, tokenizer)
    refusals = ["I can't help with that.", None, "Sorry, I won't.", "I cannot do that, it hurts people."]
    kept = [index for index, reply in enumerate(refusals) if reply]
    inputs = exchange_inputs(model, tokenizer, [HARMFUL[i] for i in kept], [refusals[i] for i in kept])
    mask = reply_prediction_mask(tokenizer, [HARMFUL[i] for i in kept], inputs["attention_mask"])
    for row, index in enumerate(kept):  # the positions that predict the refusal's tokens, and only those
        prompt_length = len(tokenizer(chat_prompt(tokenizer, HARMFUL[index]), add_special_tokens=False)["input_ids"])
        reply_length = int(inputs["attention_mask"][row].sum()) - prompt_length
        assert mask[row].nonzero().flatten().tolist() == list(range(prompt_length - 1,
                                                                    prompt_length + reply_length - 1))

    def attacked_kl() -> float:
        with torch.no_grad():
            with base_weights(model):
                start = model(**inputs).logits
            with add_vector(model, 1, direction, scale=size):
                pushed = model(**inputs).logits
        return float(forward_kl(pushed, start, mask))

    before = attacked_kl()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=10.0)
    trainer = ES2Trainer(model, tokenizer, reference, optimizer, margin=0.01, beta=0.0, decision_beta=0.0,
                         attack_beta=1.0, attack_budget=8.0, seed=3, max_grad_norm=1e9)
    metrics = trainer.step(HARMFUL, HARMLESS, HARMLESS, REPLIES, harmful_replies=refusals)
    model.eval()
    assert metrics["attacked_reply_kl"] == pytest.approx(before, rel=1e-4) and "attacked_first_token_kl" not in metrics
    assert attacked_kl() < 0.9 * before, (before, attacked_kl())
    with pytest.raises(ValueError, match="3 harmful replies for 4 harmful prompts"):
        trainer.step(HARMFUL, HARMLESS, HARMLESS, REPLIES, harmful_replies=refusals[:3])
