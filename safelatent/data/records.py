"""The one record type every safety-benchmark loader returns, whatever the source format."""

from dataclasses import dataclass, field
from typing import Any

# "unknown" is reserved for sources that do not say and callers that did not pass a kind.
KINDS = ("harmful", "benign", "borderline", "unknown")


@dataclass(frozen=True)
class PromptRecord:
    """One prompt from a benchmark, with what the source says about it.

    prompt: the text a model would be asked.
    kind: one of KINDS.
    category: the source's category for the prompt, "" when it has none.
    source: the format name and the location it was read from, e.g. "advbench:/data/advbench.csv".
    extra: every other field of the source row, as JSON-able values.
    """

    prompt: str
    kind: str
    category: str = ""
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"PromptRecord kind {self.kind!r} is not one of {', '.join(KINDS)}")
