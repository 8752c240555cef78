"""Evaluation: generate replies, judge them, and report harmlessness, over-refusal and helpfulness with intervals."""
