"""One Ray actor per role of RL from AI feedback, and the groups the pipelines drive them through.

Actors hold state (a model, judges, an optimizer) and call the library; the math lives in safelatent/.
"""
