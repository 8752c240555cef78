"""AI judges for RLAIF: the micro-world oracle, labelers, the reward model and the harm classifier."""
