"""safelatent: train language models that are harmless by construction and stay helpful."""

__version__ = "0.1.0"
