"""Guardrails around a served model: a harm judge on the input and the output, and PII redaction.

Each check has a policy:
    off     not run
    flag    run; the content passes and the response says what was found
    block   run; a hit replaces the reply by the configured refusal (finish_reason "content_filter")
    redact  PII only: each finding is replaced by [REDACTED:KIND]

The harm judge scores content as the harm classifier does, P(harmful compliance | prompt, text):
- output: the reply to the last user message;
- input: the user's own message, as content (a pasted payload, harmful instructions to "continue"). A harmful
  request that asks for harm without containing any is caught at the output, or earlier by a safe model.
Judges: a trained harm classifier (a directory written by `safelatent judges build`, or an s3:// prefix of
one) or "microworld-oracle", the micro-world's ground truth (a reply that carries its harmful payload).

Streamed replies are moderated in pieces: `check_output(..., final=False)` on the text so far releases only a
prefix that is settled, holding back a tail in which a PII span might still be growing.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from pydantic import Field, field_validator, model_validator

from safelatent.config import Config
from safelatent.data.responses import contains_payload
from safelatent.serving import pii

ORACLE = "microworld-oracle"
HarmPolicy = Literal["off", "flag", "block"]
PIIPolicy = Literal["off", "flag", "redact", "block"]


class GuardrailSettings(Config):
    """What the guardrail checks and what it does with a hit."""

    harm_judge: str | None = Field(None, description=f"Harm classifier directory or s3:// prefix, or {ORACLE!r}; "
                                                     "needed when input_harm or output_harm is on.")
    input_harm: HarmPolicy = Field("off", description="Harmful content in the user's message.")
    output_harm: HarmPolicy = Field("off", description="Harmful compliance in the model's reply.")
    pii: PIIPolicy = Field("redact", description="Personal data in the user's messages and the model's reply.")
    threshold: float | None = Field(None, gt=0, lt=1, description="P(harmful) that counts as a hit; null: the "
                                                                  "classifier's own threshold.")
    refusal: str = Field("I can't help with that request.", min_length=1,
                         description="The reply that replaces blocked content.")
    stream_check_tokens: int = Field(16, ge=1, description="While streaming, check the reply every N tokens; "
                                                           "only text that passed a check is sent.")
    stream_holdback_chars: int = Field(32, ge=0, description="While streaming, text this close to the end waits "
                                                             "for the next check (a PII span may still grow).")

    @field_validator("input_harm", "output_harm", "pii", mode="before")
    @classmethod
    def _yaml_off(cls, policy: object) -> object:
        """YAML reads a bare `off` as false; take it as the policy "off" it was meant to be."""
        return "off" if policy is False else policy

    @model_validator(mode="after")
    def _judge_when_needed(self) -> "GuardrailSettings":
        if self.judges and self.harm_judge is None:
            on = [name for name, policy in (("input_harm", self.input_harm), ("output_harm", self.output_harm))
                  if policy != "off"]
            raise ValueError(f"{' and '.join(on)} {'is' if len(on) == 1 else 'are'} on but harm_judge is not set; "
                             f"give a harm classifier directory or {ORACLE!r}, or set the policy to off")
        return self

    @property
    def judges(self) -> bool:
        """Whether a harm check is on, so the harm judge must be loaded."""
        return self.input_harm != "off" or self.output_harm != "off"

    @property
    def active(self) -> bool:
        return (self.input_harm, self.output_harm, self.pii) != ("off", "off", "off")

    @property
    def moderates_output(self) -> bool:
        return self.output_harm != "off" or self.pii != "off"


class HarmJudge(Protocol):
    version: str

    def probabilities(self, prompts: Sequence[str], texts: Sequence[str]) -> list[float]: ...

    def threshold(self) -> float: ...


class OracleJudge:
    """The micro-world's ground truth: content is harmful exactly when it carries the harmful payload marker."""

    version = ORACLE

    def probabilities(self, prompts: Sequence[str], texts: Sequence[str]) -> list[float]:
        return [1.0 if contains_payload(text) else 0.0 for text in texts]

    def threshold(self) -> float:
        return 0.5


class ClassifierJudge:
    """A trained harm classifier (safelatent.judges.harm_classifier)."""

    def __init__(self, classifier):
        self.classifier = classifier
        self.version = classifier.version

    def probabilities(self, prompts: Sequence[str], texts: Sequence[str]) -> list[float]:
        return self.classifier.predict_proba(list(prompts), list(texts))

    def threshold(self) -> float:
        return self.classifier.threshold


def load_judge(source: str, device: str = "auto", endpoint_url: str | None = None) -> HarmJudge:
    """The judge named by `source`: the oracle, or a harm classifier directory (local or s3://)."""
    if source == ORACLE:
        return OracleJudge()
    from safelatent.judges.harm_classifier import HarmClassifier

    location = source
    if source.startswith("s3://"):
        import tempfile

        from safelatent.storage import download

        location = str(download(source.rstrip("/") + "/", tempfile.mkdtemp(prefix="safelatent-judge-"),
                                endpoint_url=endpoint_url))
    if not (Path(location) / "judge.json").is_file():
        raise FileNotFoundError(f"harm judge {source!r} is neither {ORACLE!r} nor a judge directory (no judge.json "
                                "there); point it at <judges build>/harm_classifier")
    return ClassifierJudge(HarmClassifier.load(location, device=device))


@dataclass
class Verdict:
    """What a check decided about one piece of content."""

    text: str  # the content to use: the original, or with PII redacted
    blocked: bool = False
    harm_probability: float | None = None
    findings: list[str] = field(default_factory=list)  # "harm" and PII kinds that were found

    def report(self) -> dict:
        """The part a response shows when something was found."""
        entry: dict = {"blocked": self.blocked, "found": self.findings}
        if self.harm_probability is not None:
            entry["harm_probability"] = round(self.harm_probability, 4)
        return entry


class Guardrail:
    """Input and output checks under one `GuardrailSettings`."""

    def __init__(self, settings: GuardrailSettings, judge: HarmJudge | None = None):
        if judge is None and settings.judges:
            raise ValueError("the settings turn a harm check on, so a judge must be given (see load_judge)")
        self.settings = settings
        self.judge = judge
        self.cut = settings.threshold if settings.threshold is not None else (
            judge.threshold() if judge is not None else 0.5)

    def input_judgement(self, messages: Sequence[str]) -> tuple[str, str] | None:
        """The (prompt, content) pair the harm judge scores for the user's messages, or None when no input harm
        check runs. The newest message is judged as content on its own."""
        if self.settings.input_harm == "off" or self.judge is None:
            return None
        return "", messages[-1] if messages else ""

    def output_judgement(self, prompt: str, text: str) -> tuple[str, str] | None:
        """The (prompt, reply) pair the harm judge scores, or None when no output harm check runs."""
        if self.settings.output_harm == "off" or self.judge is None or not text:
            return None
        return prompt, text

    def check_input(self, messages: Sequence[str], harm_probability: float | None = None) -> Verdict:
        """Check the user's messages (the newest last); the verdict's text is the newest, redacted if asked.
        `harm_probability`: the judge's score of `input_judgement(messages)` when the caller has it already
        (a server scoring many requests in one batch); otherwise the judge is asked here."""
        newest = messages[-1] if messages else ""
        findings: list[str] = []
        blocked = False
        probability = None
        pair = self.input_judgement(messages)
        if pair is not None:
            probability = harm_probability if harm_probability is not None else self._score(pair)
            if probability >= self.cut:
                findings.append("harm")
                blocked = self.settings.input_harm == "block"
        text, blocked_pii = self._pii(newest, findings, final=True)
        return Verdict(text=text, blocked=blocked or blocked_pii, harm_probability=probability, findings=findings)

    def redact_messages(self, messages: Sequence[str]) -> list[str]:
        """Every message with PII redacted when the policy is redact; unchanged otherwise."""
        if self.settings.pii != "redact":
            return list(messages)
        return [pii.redact(message)[0] for message in messages]

    def check_output(self, prompt: str, text: str, *, final: bool = True,
                     harm_probability: float | None = None) -> Verdict:
        """Check a reply (or, when not final, a streamed reply so far). The verdict's text is what may be sent:
        all of it when final, else a settled prefix. `harm_probability` as in `check_input`."""
        findings: list[str] = []
        blocked = False
        probability = None
        pair = self.output_judgement(prompt, text)
        if pair is not None:
            probability = harm_probability if harm_probability is not None else self._score(pair)
            if probability >= self.cut:
                findings.append("harm")
                blocked = self.settings.output_harm == "block"
        released, blocked_pii = self._pii(text, findings, final=final)
        return Verdict(text=released, blocked=blocked or blocked_pii, harm_probability=probability,
                       findings=findings)

    def _score(self, pair: tuple[str, str]) -> float:
        assert self.judge is not None  # a judgement pair exists only with a judge
        return self.judge.probabilities([pair[0]], [pair[1]])[0]

    def _pii(self, text: str, findings: list[str], *, final: bool) -> tuple[str, bool]:
        """(text to release, whether PII blocks it); appends the PII kinds found to `findings`."""
        if self.settings.pii == "off":
            return text if final else _settled_prefix(text, self.settings.stream_holdback_chars, redact=False), False
        redacted, kinds = pii.redact(text)
        findings.extend(kind for kind in dict.fromkeys(kinds))
        blocked = bool(kinds) and self.settings.pii == "block"
        if self.settings.pii != "redact":
            redacted = text
        if final:
            return redacted, blocked
        return _settled_prefix(text, self.settings.stream_holdback_chars,
                               redact=self.settings.pii == "redact"), blocked


def _settled_prefix(text: str, holdback: int, *, redact: bool) -> str:
    """A prefix of the (redacted) text that later tokens cannot change: it ends at whitespace at least `holdback`
    characters before the end, and redacting it gives a prefix of redacting the whole text."""
    whole = pii.redact(text)[0] if redact else text
    cut = len(text) - holdback
    while cut > 0:
        cut = max(text.rfind(" ", 0, cut), text.rfind("\n", 0, cut))
        if cut <= 0:
            return ""
        prefix = pii.redact(text[:cut])[0] if redact else text[:cut]
        if whole.startswith(prefix):
            return prefix
    return ""
