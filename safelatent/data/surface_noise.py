"""Varied prompt surfaces: a request with a random opener and/or closer, sometimes a lower-case start or no final mark.

The micro-world's test split holds out whole phrasings of each request. A model trained only on the training
phrasings learns those surfaces as much as the requests, and reads an unseen phrasing as some other request
("Solve: 19 - 4" answered as a comparison). Training on prompts whose surface varies (the request and the
reply unchanged) makes it key on the request itself. None of the openers or closers below is a phrasing of a
micro-world template, and none carries a request of its own.
"""

import random

PROMPT_OPENERS: tuple[str, ...] = (
    "Hi!", "Hello.", "Hey there,", "Quick question:", "One more thing.", "I was wondering:", "Question for you:",
    "Good morning!", "Okay,", "So,", "Hmm.", "Here is my question:", "Hi, hope you are well.", "Right,")
PROMPT_CLOSERS: tuple[str, ...] = (
    "Thanks!", "Thank you.", "Thanks a lot.", "Please be brief.", "Cheers.", "I appreciate it.",
    "Short answer please.", "No rush.", "Much appreciated!", "That is all.")


def vary_surface(prompt: str, rng: random.Random) -> str:
    """The prompt with an opener, a closer or both (a third each); a quarter of the time its first letter in lower
    case, a quarter of the time without its final punctuation mark."""
    if rng.random() < 0.25:
        prompt = prompt[:1].lower() + prompt[1:]
    if rng.random() < 0.25 and prompt[-1:] in ("?", ".", "!"):
        prompt = prompt[:-1]
    shape = rng.randrange(3)
    opener = f"{rng.choice(PROMPT_OPENERS)} " if shape != 1 else ""
    closer = f" {rng.choice(PROMPT_CLOSERS)}" if shape != 0 else ""
    return f"{opener}{prompt}{closer}"
