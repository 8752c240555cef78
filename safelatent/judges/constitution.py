"""The written constitution AI judges apply: principles as validated data, rendered into a judge prompt, hashed.

A constitution is a YAML file (the packaged `constitution.yaml`, or a user's own file of the same shape):
a name, a version, a preamble and principles, each with an id, its text and the aspects it applies to
(harmlessness, helpfulness, honesty). `version_hash` is a hash of the whole content, so any edit, even to
one word, gives a new version that every label and reward made with it records.
"""

import hashlib
import importlib.resources
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from safelatent.config import Config, load_config

Aspect = Literal["harmlessness", "helpfulness", "honesty"]
ASPECTS: tuple[str, ...] = ("harmlessness", "helpfulness", "honesty")
PACKAGED_CONSTITUTION = "constitution.yaml"

JUDGE_QUESTION = "Which response better follows the principles? Answer with A or B."


class Principle(Config):
    """One rule a judge applies, and the aspects of a reply it is about."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", description="Stable name: lower case, digits and dashes.")
    text: str = Field(min_length=1)
    applies_to: list[Aspect] = Field(min_length=1)


class Constitution(Config):
    """A named, versioned list of principles with a preamble that frames the judge's task."""

    name: str = Field(min_length=1)
    version: str = Field(min_length=1, description="The authors' version label; the hash tracks the content.")
    preamble: str = ""
    principles: list[Principle] = Field(min_length=1)

    @field_validator("principles")
    @classmethod
    def _ids_are_unique(cls, principles: list[Principle]) -> list[Principle]:
        counts = Counter(principle.id for principle in principles)
        repeated = sorted(principle_id for principle_id, count in counts.items() if count > 1)
        if repeated:
            raise ValueError(f"principle ids must be unique; repeated: {', '.join(repeated)}")
        return principles

    @property
    def version_hash(self) -> str:
        """12 hex digits of a hash of the whole content: equal constitutions, equal hashes."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def principles_for(self, aspects: Sequence[str] | None = None) -> list[Principle]:
        """The principles that apply to any of `aspects` (all of them when `aspects` is None)."""
        if aspects is None:
            return list(self.principles)
        unknown = sorted(set(aspects) - set(ASPECTS))
        if unknown:
            raise ValueError(f"unknown aspect(s) {', '.join(unknown)}; choose among {', '.join(ASPECTS)}")
        chosen = [principle for principle in self.principles if set(principle.applies_to) & set(aspects)]
        if not chosen:
            raise ValueError(f"constitution {self.name!r} has no principle for aspect(s) {', '.join(aspects)}")
        return chosen

    def render(self, aspects: Sequence[str] | None = None) -> str:
        """The preamble and the numbered principles, as a judge reads them."""
        lines = [self.preamble.strip(), ""] if self.preamble.strip() else []
        lines.append("Principles:")
        lines += [f"{number}. {principle.text.strip()}"
                  for number, principle in enumerate(self.principles_for(aspects), start=1)]
        return "\n".join(lines)


def load_constitution(path: str | Path | None = None) -> Constitution:
    """Load and validate a constitution: the packaged one, or the YAML file at `path`.

    A bad file raises ConfigError naming the file and every invalid field.
    """
    if path is not None:
        return load_config(Constitution, path)
    packaged = importlib.resources.files("safelatent.judges") / PACKAGED_CONSTITUTION
    with importlib.resources.as_file(packaged) as packaged_path:
        return load_config(Constitution, packaged_path)


def judge_prompt(constitution: Constitution, prompt: str, response_a: str, response_b: str,
                 aspects: Sequence[str] | None = None) -> str:
    """The user turn a judge model sees: the constitution, the user's message, both responses, the question."""
    return (f"{constitution.render(aspects)}\n\n"
            f"User message:\n{prompt}\n\n"
            f"Response A:\n{response_a}\n\n"
            f"Response B:\n{response_b}\n\n"
            f"{JUDGE_QUESTION}")


def judge_messages(constitution: Constitution, prompt: str, response_a: str, response_b: str,
                   aspects: Sequence[str] | None = None) -> list[dict[str, str]]:
    """The judge prompt as chat messages. One user turn, because some chat templates reject a system role."""
    return [{"role": "user", "content": judge_prompt(constitution, prompt, response_a, response_b, aspects)}]
