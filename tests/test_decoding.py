"""The serving decoder: batched KV-cache decoding with per-request sampling, stop strings and streaming."""

import pytest
import torch

from safelatent.models.loading import load
from safelatent.models.safe_head import attach, detach
from safelatent.serving.decoding import FINISH_LENGTH, FINISH_STOP, Decoder, SamplingParams
from tests.tiny_models import save_memorized_chat_model

EXCHANGES = [("What is 12 plus 7?", "12 + 7 = 19. Answer: 19"),
             ("What is the capital of France?", "The capital of France is Paris. Answer: Paris")]
GREEDY = SamplingParams(max_tokens=40, temperature=0)


@pytest.fixture(scope="module")
def memorized(tmp_path_factory):
    directory = save_memorized_chat_model(tmp_path_factory.mktemp("memorized"), EXCHANGES)
    loaded = load(directory, device="cpu")
    return Decoder(loaded.model, loaded.tokenizer)


def chat_ids(decoder: Decoder, prompt: str) -> list[int]:
    return decoder.encode_chat([{"role": "user", "content": prompt}])


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_greedy_batch_matches_transformers_generate_per_prompt(architecture, tiny_llama_dir, tiny_gpt2_dir):
    loaded = load(tiny_llama_dir if architecture == "llama" else tiny_gpt2_dir, device="cpu")
    decoder = Decoder(loaded.model, loaded.tokenizer)
    prompts = [chat_ids(decoder, "What is 12 plus 7?"), chat_ids(decoder, "How do I kill a Python process, please?")]
    assert len(prompts[0]) != len(prompts[1])  # left padding is exercised
    results = decoder.complete(prompts, [SamplingParams(max_tokens=12, temperature=0)] * 2)
    for prompt, (text, tokens, finish) in zip(prompts, results, strict=True):
        ids = torch.tensor([prompt])
        reference = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                          do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id,
                                          eos_token_id=loaded.tokenizer.eos_token_id)
        new = reference[0, len(prompt):]
        assert text == loaded.tokenizer.decode(new, skip_special_tokens=True)
        ended_on_eos = new[-1].item() == loaded.tokenizer.eos_token_id
        assert tokens == len(new) - int(ended_on_eos)
        assert finish == (FINISH_STOP if ended_on_eos else FINISH_LENGTH)


def test_memorized_replies_end_on_eos_with_stop(memorized):
    results = memorized.complete([chat_ids(memorized, prompt) for prompt, _ in EXCHANGES], [GREEDY, GREEDY])
    assert [(text, finish) for text, _, finish in results] == [(reply, FINISH_STOP) for _, reply in EXCHANGES]


def test_max_tokens_ends_with_length(memorized):
    [(text, tokens, finish)] = memorized.complete([chat_ids(memorized, EXCHANGES[1][0])],
                                                  [SamplingParams(max_tokens=3, temperature=0)])
    assert (tokens, finish) == (3, FINISH_LENGTH)
    assert EXCHANGES[1][1].startswith(text) and text


def test_stop_string_cuts_the_reply_and_is_never_streamed(memorized):
    params = SamplingParams(max_tokens=40, temperature=0, stop=("Paris",))
    stream = list(memorized.stream([chat_ids(memorized, EXCHANGES[1][0])], [params]))
    pieces = [deltas[0].text for deltas in stream if deltas[0] is not None]
    assert "".join(pieces) == "The capital of France is "
    assert stream[-1][0].finish_reason == FINISH_STOP


def test_rows_mix_parameters_and_finished_rows_report_none(memorized):
    prompts = [chat_ids(memorized, prompt) for prompt, _ in EXCHANGES]
    params = [SamplingParams(max_tokens=2, temperature=0), GREEDY]
    steps = list(memorized.stream(prompts, params))
    assert steps[0][0] is not None and steps[1][0].finish_reason == FINISH_LENGTH
    assert all(deltas[0] is None for deltas in steps[2:])
    assert "".join(deltas[1].text for deltas in steps if deltas[1] is not None) == EXCHANGES[1][1]


def test_streamed_pieces_add_up_to_the_completion_and_seeded_sampling_repeats(tiny_llama_dir):
    loaded = load(tiny_llama_dir, device="cpu")
    decoder = Decoder(loaded.model, loaded.tokenizer)
    prompts = [chat_ids(decoder, "What is 12 plus 7?")] * 2
    params = [SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=7),
              SamplingParams(max_tokens=16, temperature=1.0, seed=8)]
    first = decoder.complete(prompts, params)
    second = decoder.complete(prompts, params)
    assert first == second
    streamed = ["", ""]
    for deltas in decoder.stream(prompts, params):
        for index, delta in enumerate(deltas):
            if delta is not None:
                streamed[index] += delta.text
    assert streamed == [text for text, _, _ in first]
    assert first[0][0] != first[1][0]  # different seeds, different samples


def test_the_models_hooks_run_while_decoding(memorized):
    """A safe-projection head attached to the model changes what the decoder produces, and detaching restores it."""
    prompt = [chat_ids(memorized, EXCHANGES[0][0])]
    plain = memorized.complete(prompt, [GREEDY])

    class Collapse(torch.nn.Module):  # moves every state to the origin: an extreme projection
        def forward(self, hidden: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(hidden)

    attach(memorized.model, 0, Collapse())
    try:
        projected = memorized.complete(prompt, [GREEDY])
    finally:
        detach(memorized.model)
    assert projected != plain
    assert memorized.complete(prompt, [GREEDY]) == plain


def test_bad_requests_are_refused_before_decoding(memorized):
    with pytest.raises(ValueError, match="context"):
        next(memorized.stream([[1] * 250], [SamplingParams(max_tokens=10)]))
    with pytest.raises(ValueError, match="no tokens"):
        next(memorized.stream([[]], [SamplingParams()]))
    with pytest.raises(ValueError, match="2 prompts but 1"):
        next(memorized.stream([[1], [2]], [SamplingParams()]))
    for bad in ({"max_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"stop": ("",)}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)
