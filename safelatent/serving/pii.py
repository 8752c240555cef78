"""Find and redact personal data in text: e-mail addresses, phone numbers, card numbers, US SSNs, IP addresses.

Patterns are deliberately conservative so that ordinary numbers (an arithmetic answer, a year, a unit
conversion) are left alone: a phone number needs a leading + or separators, a card number must pass the
Luhn check, an IPv4 address needs four octets of at most 255.
"""

import re
from dataclasses import dataclass

_PATTERNS: dict[str, re.Pattern[str]] = {
    "email": re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"),
    "ssn": re.compile(r"\b\d{3}-\d{2}-\d{4}\b"),
    "card": re.compile(r"\b(?:\d[ -]?){12,18}\d\b"),
    # not part of a longer run of digit groups (a card number that failed the Luhn check stays a number)
    "phone": re.compile(r"(?<![\w+])(?<!\d[ .-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])"
                        r"\d{3,4}[ .-]\d{3,4}\b(?![ .-]?\d)"),
    "ipv4": re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"),
}
KINDS = tuple(_PATTERNS)


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int


def find_pii(text: str) -> list[Finding]:
    """Non-overlapping findings, earliest first; where two overlap, the one found by the earlier kind wins."""
    findings: list[Finding] = []
    for kind, pattern in _PATTERNS.items():
        for match in pattern.finditer(text):
            if kind == "card" and not _luhn_valid(match.group()):
                continue
            if any(match.start() < other.end and other.start < match.end() for other in findings):
                continue
            findings.append(Finding(kind, match.start(), match.end()))
    return sorted(findings, key=lambda finding: finding.start)


def redact(text: str) -> tuple[str, list[str]]:
    """The text with each finding replaced by [REDACTED:KIND], and the kinds found (in order)."""
    findings = find_pii(text)
    pieces: list[str] = []
    cursor = 0
    for finding in findings:
        pieces.append(text[cursor:finding.start])
        pieces.append(f"[REDACTED:{finding.kind.upper()}]")
        cursor = finding.end
    pieces.append(text[cursor:])
    return "".join(pieces), [finding.kind for finding in findings]


def _luhn_valid(candidate: str) -> bool:
    digits = [int(character) for character in candidate if character.isdigit()]
    total = 0
    for position, digit in enumerate(reversed(digits)):
        if position % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0
