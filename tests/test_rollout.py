import pytest
import torch

from safelatent.methods.rollout import sample, score_tokens
from safelatent.models.loading import load

PROMPTS = ["What is 2 plus 3?", "Spell the word cat please, letter by letter.", "Hi"]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def loaded(request, tiny_llama_dir, tiny_gpt2_dir):
    return load(tiny_llama_dir if request.param == "llama" else tiny_gpt2_dir, device="cpu")


def test_sample_shapes_groups_and_masks(loaded):
    batch = sample(loaded.model, loaded.tokenizer, PROMPTS, samples_per_prompt=2, max_new_tokens=12, seed=0)
    assert len(batch) == 6 and batch.prompts[:2] == (PROMPTS[0], PROMPTS[0])
    assert batch.group_ids.tolist() == [0, 0, 1, 1, 2, 2]
    assert batch.response_ids.shape == batch.response_mask.shape == batch.logprobs.shape
    eos = loaded.tokenizer.eos_token_id
    for row in range(len(batch)):
        length = int(batch.response_mask[row].sum())
        assert batch.response_mask[row, :length].all() and not batch.response_mask[row, length:].any()
        assert eos not in batch.response_ids[row, :length - 1].tolist()  # nothing after the end of turn counts
    assert (batch.logprobs[batch.response_mask == 0] == 0).all()
    assert (batch.logprobs[batch.response_mask == 1] < 0).all()


def test_logprobs_match_the_samplers_own_distribution(loaded):
    """Recomputed log-probs equal those of generate's scores: positions and padding are handled right."""
    model, tokenizer = loaded.model, loaded.tokenizer
    batch = sample(model, tokenizer, PROMPTS, max_new_tokens=8, temperature=0.7, seed=3)
    alone = sample(model, tokenizer, [PROMPTS[1]], max_new_tokens=8, temperature=0.7, seed=0)
    torch.manual_seed(0)
    output = model.generate(input_ids=alone.prompt_ids, attention_mask=alone.prompt_mask, do_sample=True,
                            temperature=0.7, top_k=0, max_new_tokens=8, pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=tokenizer.eos_token_id, output_scores=True, return_dict_in_generate=True)
    length = int(alone.response_mask.sum())
    assert output.sequences[0, alone.prompt_ids.shape[1]:][:length].tolist() == alone.response_ids[0, :length].tolist()
    tokens = alone.response_ids[0, :length]
    from_sampler = torch.stack([torch.log_softmax(output.scores[t][0], -1)[token] for t, token in enumerate(tokens)])
    torch.testing.assert_close(alone.logprobs[0, :length], from_sampler, atol=1e-4, rtol=1e-4)
    # A row's log-probs do not depend on the other rows it was padded with.
    for row in range(len(PROMPTS)):
        single = batch.select([row])
        length = int(single.response_mask.sum())
        trimmed = type(single)(**{**single.__dict__, "prompt_ids": single.prompt_ids[:, single.prompt_mask[0] == 1],
                                   "prompt_mask": single.prompt_mask[:, single.prompt_mask[0] == 1]})
        torch.testing.assert_close(score_tokens(model, trimmed, temperature=0.7)[0, :length],
                                   batch.logprobs[row, :length], atol=1e-4, rtol=1e-4)


def test_sampling_is_seeded_and_rejects_greedy(loaded):
    first = sample(loaded.model, loaded.tokenizer, PROMPTS, max_new_tokens=8, seed=5)
    again = sample(loaded.model, loaded.tokenizer, PROMPTS, max_new_tokens=8, seed=5)
    assert torch.equal(first.response_ids, again.response_ids)
    with pytest.raises(ValueError, match="temperature"):
        sample(loaded.model, loaded.tokenizer, PROMPTS, temperature=0.0)


def test_shards_from_several_workers_concatenate_into_one_padded_batch(loaded):
    from safelatent.methods.rollout import concat_batches, sequence_inputs

    model, tokenizer = loaded.model, loaded.tokenizer
    first = sample(model, tokenizer, PROMPTS[:1], samples_per_prompt=2, max_new_tokens=4, seed=0)
    second = sample(model, tokenizer, PROMPTS[1:], samples_per_prompt=2, max_new_tokens=9, seed=1, first_group_id=1)
    joined = concat_batches([first, second], tokenizer.pad_token_id)
    assert len(joined) == 6 and joined.group_ids.tolist() == [0, 0, 1, 1, 2, 2]
    assert joined.prompts == first.prompts + second.prompts
    # Re-padding moves no token: each row's log-probs under the model are unchanged.
    assert torch.allclose(score_tokens(model, joined), joined.logprobs, atol=1e-5)
    assert sequence_inputs(joined)["input_ids"].shape[1] == joined.prompt_ids.shape[1] + joined.response_ids.shape[1]


def test_learner_shards_keep_groups_whole(loaded):
    from safelatent.methods.rollout import split_by_groups

    batch = sample(loaded.model, loaded.tokenizer, PROMPTS[:2], samples_per_prompt=2, max_new_tokens=3, seed=0)
    shards = split_by_groups(batch, 2)
    assert [shard.group_ids.tolist() for shard in shards] == [[0, 0], [1, 1]]
    with pytest.raises(ValueError, match="cannot be split evenly"):
        split_by_groups(batch, 3)
    odd = sample(loaded.model, loaded.tokenizer, PROMPTS[:3], samples_per_prompt=2, max_new_tokens=3, seed=0)
    with pytest.raises(ValueError, match="cut a prompt's group"):
        split_by_groups(odd, 2)
