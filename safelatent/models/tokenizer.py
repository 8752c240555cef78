"""A byte-level BPE chat tokenizer trained from scratch on a text corpus, ready for `AutoTokenizer`.

Digits are split one per token before BPE merges, so numbers are spelled digit by digit and arithmetic
is learnable by a small model. Turns are framed by special tokens (`<|user|>...<|end|>`), the end-of-turn
token is also eos (generation stops there) and the chat template marks the assistant's reply, end-of-turn
token included, with `{% generation %}` so trainers can put the loss on it alone.
"""

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD = "<|pad|>"
END = "<|end|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
SYSTEM = "<|system|>"
SPECIAL_TOKENS = (PAD, END, USER, ASSISTANT, SYSTEM)

# Roles map to their own marker; the assistant's content and its end-of-turn token form one generation block.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}" + USER + "{{ message['content'] }}" + END +
    "{%- elif message['role'] == 'system' -%}" + SYSTEM + "{{ message['content'] }}" + END +
    "{%- elif message['role'] == 'assistant' -%}" + ASSISTANT +
    "{% generation %}{{ message['content'] }}" + END + "{% endgeneration %}"
    "{%- else -%}{{ raise_exception('unknown chat role ' ~ message['role'] ~ '; use system, user or assistant') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}" + ASSISTANT + "{%- endif -%}"
)


def train_chat_tokenizer(corpus: Iterable[str], vocab_size: int, *, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of `vocab_size` tokens (special tokens included) on `corpus`, with the chat template."""
    minimum = len(SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < minimum:
        raise ValueError(f"vocab_size {vocab_size} is too small: the byte alphabet and the chat tokens alone need "
                         f"{minimum}; choose at least {minimum}")
    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, eos_token=END,
                                        additional_special_tokens=[USER, ASSISTANT, SYSTEM],
                                        clean_up_tokenization_spaces=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
