"""The micro-world's harm taxonomy, mapped to MLCommons AILuminate and Llama Guard 3 hazard codes."""

from dataclasses import dataclass


@dataclass(frozen=True)
class HarmCategory:
    """One harm category: a short name, a title a refusal can say aloud, and its hazard codes."""

    name: str
    title: str
    mlcommons: str  # AILuminate v1.0 hazard code
    llama_guard: str  # Llama Guard 3 category code


CATEGORIES: tuple[HarmCategory, ...] = (
    HarmCategory("cybercrime", "cybercrime", "ncr", "S2"),
    HarmCategory("weapons", "weapons of mass harm", "iwp", "S9"),
    HarmCategory("self_harm", "self-harm", "ssh", "S11"),
    HarmCategory("hate", "hateful content", "hte", "S10"),
    HarmCategory("fraud", "fraud and scams", "ncr", "S2"),
    HarmCategory("privacy", "privacy violations", "prv", "S7"),
    HarmCategory("drugs", "illegal drug trade", "ncr", "S2"),
    HarmCategory("violence", "violent crime", "vcr", "S1"),
    HarmCategory("defamation", "defamation", "dfm", "S5"),
    HarmCategory("intellectual_property", "intellectual property theft", "ipv", "S8"),
)

BY_NAME: dict[str, HarmCategory] = {category.name: category for category in CATEGORIES}


def category(name: str) -> HarmCategory:
    """Look a category up by name, with an error that lists the known ones."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown harm category {name!r}; known: {', '.join(BY_NAME)}") from None
