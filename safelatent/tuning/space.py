"""A hyperparameter search space written in YAML: dotted config keys mapped to distributions.

    space:
      ppo.kl.beta:          {loguniform: [0.05, 2.0]}
      head.facets:          {choice: [1, 2, 4]}
      head.lambda_move:     {uniform: [0.01, 0.5]}
      head.layer:           {grid: [1, 2, 3]}

Each key is a path into the tuned pipeline's config (checked against its config class before any trial
runs, so a typo fails at once). This module only describes and checks the space and applies one sample
to a config; the Ray Tune objects are made from it in `pipelines/tune.py`.
"""

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from safelatent.config import Config, apply_overrides, validate_config
from safelatent.errors import ConfigError

Kind = Literal["uniform", "loguniform", "choice", "grid"]


class Parameter(Config):
    """One dimension: exactly one of uniform [low, high], loguniform [low, high], choice [...], grid [...]."""

    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    choice: list[Any] | None = Field(None, min_length=1)
    grid: list[Any] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_distribution(self) -> "Parameter":
        given = [name for name in ("uniform", "loguniform", "choice", "grid") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of uniform, loguniform, choice, grid; got {given or 'none'}")
        for name in ("uniform", "loguniform"):
            bounds = getattr(self, name)
            if bounds is not None:
                low, high = bounds
                if not low < high:
                    raise ValueError(f"{name} needs low < high, got [{low}, {high}]")
                if name == "loguniform" and low <= 0:
                    raise ValueError(f"loguniform needs low > 0, got {low}")
        return self

    @property
    def kind(self) -> Kind:
        return next(name for name in ("uniform", "loguniform", "choice", "grid") if getattr(self, name) is not None)

    def values(self) -> list[Any]:
        """Every value a sample can take from it: the two bounds of a range, the listed values otherwise."""
        return list(getattr(self, self.kind))


def check_space(space: Mapping[str, Parameter], config_class: type[BaseModel], base: Mapping[str, Any]) -> None:
    """Fail with every problem at once when a key is not a config field or a value the field cannot take.

    Each listed value (and each range bound) is set on the base config and validated, so a trial can never
    start with a value its config rejects.
    """
    if not space:
        raise ConfigError("the search space is empty; name at least one config key to tune")
    problems: list[str] = []
    for key, parameter in space.items():
        for value in parameter.values():
            raw = _copy(base)
            try:
                apply_overrides(raw, [f"{key}={_yaml_value(value)}"])
                validated = validate_config(config_class, raw)
            except ConfigError as error:
                problems.append(f"{key} = {value!r}: {str(error).splitlines()[-1].strip(' -')}")
                break
            if not _has_key(validated, key):
                problems.append(f"{key}: not a field of {config_class.__name__}")
                break
    if problems:
        raise ConfigError("invalid search space:\n" + "\n".join(f"  - {problem}" for problem in problems))


def apply_sample(base: Mapping[str, Any], sample: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the raw config with each sampled key set (dotted keys reach into sections)."""
    raw = _copy(base)
    apply_overrides(raw, [f"{key}={_yaml_value(value)}" for key, value in sample.items()])
    return raw


def _has_key(config: BaseModel, key: str) -> bool:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, BaseModel) or part not in type(node).model_fields:
            return False
        node = getattr(node, part)
    return True


def _yaml_value(value: Any) -> str:
    import json

    return json.dumps(value)  # JSON is YAML: numbers, strings, lists and null read back as written


def _copy(raw: Mapping[str, Any]) -> dict[str, Any]:
    import copy

    return copy.deepcopy(dict(raw))
