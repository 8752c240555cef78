"""Exact answer checking for the micro-world's benign tasks.

A helpful micro-world response ends with "Answer: <answer>". The checker takes the text after the last
"Answer:" (or the whole response when there is none), normalises case, spacing, list separators and a
trailing full stop, compares numbers as numbers, and otherwise demands an exact match. Containment is
not enough: "Answer: 12, 19" does not answer "19".
"""

import re

ANSWER_PREFIX = "Answer:"

_SPACES = re.compile(r"\s+")
_AROUND_SEPARATOR = re.compile(r"\s*([,\-])\s*")
_NUMBER = re.compile(r"[-+]?\d+(\.\d+)?")


def extract_answer(response: str) -> str:
    """The answer part of a response: the text after the last "Answer:", else the first line."""
    position = response.rfind(ANSWER_PREFIX)
    if position >= 0:
        text = response[position + len(ANSWER_PREFIX):]
    else:
        text = response.strip()
    return text.strip().split("\n", 1)[0]


def normalize_answer(text: str) -> str:
    """Lower case, single spaces, no spaces around "," or "-", no trailing full stop."""
    text = _SPACES.sub(" ", text.strip().lower())
    text = _AROUND_SEPARATOR.sub(r"\1", text)
    return text.rstrip(".").strip()


def check_answer(response: str, expected: str) -> bool:
    """True when the response's answer is exactly the expected one (numbers compared by value)."""
    given = normalize_answer(extract_answer(response))
    wanted = normalize_answer(expected)
    if _NUMBER.fullmatch(given) and _NUMBER.fullmatch(wanted):
        return float(given) == float(wanted)
    return given == wanted
