"""Typed pipeline configs: pydantic v2 models loaded from YAML, with `key.sub=value` command-line overrides.

Every pipeline has one config class derived from `Config`. `load_config` layers the YAML file over the
defaults and the overrides over both (sections merge key by key, so `a.b=1` keeps `a.c`), then validates
everything at once, before any work starts. A bad field gives one `ConfigError`
that lists every problem with its field path, where the value came from (file or override) and what is
allowed. Secrets never live in configs: a key that looks like one is refused without echoing its value;
credentials are read from the environment (see `safelatent.credentials`).
"""

import difflib
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from safelatent.errors import ConfigError

# A key is secret-like when its last word names a credential: `token`, `hf_token`, `aws_secret_access_key`,
# `db_password`; but not `max_new_tokens` or `tokenizer`, which only contain such a word.
_SECRET_KEY = re.compile(
    r"(^|_)(secret|secrets|password|passwd|token|api_key|apikey|access_key|secret_key|credential|credentials"
    r"|private_key|auth)$"
)


class Config(BaseModel):
    """Base of every config: unknown keys are errors, defaults are validated, instances are immutable."""

    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True)


C = TypeVar("C", bound=Config)


def load_config(config_class: type[C], path: str | Path | None = None, overrides: Sequence[str] = (),
                options: Mapping[str, Any] | None = None) -> C:
    """Build a config from an optional YAML file, `key.sub=value` overrides and command-line options.

    `options` maps dotted keys to values taken as given (not parsed as YAML); None values are skipped, so
    an option the user did not pass leaves the file's value alone. Options win over overrides.
    """
    source = str(path) if path is not None else None
    raw = _defaults(config_class)
    if path is not None:
        _merge(raw, _read_yaml(Path(path)))
    override_keys = apply_overrides(raw, overrides)
    for key, value in (options or {}).items():
        if value is not None:
            keys = tuple(key.split("."))
            text = f"--{key.replace('_', '-')} {value}"
            _set_nested(raw, keys, value, text)
            override_keys[keys] = text
    return validate_config(config_class, raw, source, override_keys)


def validate_config(config_class: type[C], raw: Mapping[str, Any], source: str | None = None,
                    override_keys: dict[tuple[str, ...], str] | None = None) -> C:
    """Validate a mapping as a config; a ConfigError names every bad field, where it came from and why."""
    _refuse_secrets(raw, source)
    try:
        return config_class.model_validate(raw)
    except ValidationError as error:
        problems = [_describe(config_class, detail, source, override_keys or {}) for detail in error.errors()]
        heading = f"invalid {config_class.__name__}" + (f" from {source}" if source else "")
        raise ConfigError(heading + ":\n" + "\n".join(f"  - {problem}" for problem in problems)) from None


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[tuple[str, ...], str]:
    """Set each `key.sub=value` override in a raw config mapping; which keys each override set."""
    override_keys: dict[tuple[str, ...], str] = {}
    for text in overrides:
        keys, value = parse_override(text)
        _set_nested(raw, keys, value, text)
        override_keys[keys] = text
    return override_keys


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """Split `a.b.c=value` into its key path and a YAML-typed value (`3` is an int, `[1, 2]` a list)."""
    key, separator, value_text = text.partition("=")
    keys = tuple(key.strip().split("."))
    if not separator or not all(keys):
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({error})") from None
    return keys, value


def config_hash(config: Config) -> str:
    """A short, stable hash of a config's content, for cache keys and run lineage."""
    return data_hash(config.model_dump(mode="json"))


def data_hash(data: dict[str, Any]) -> str:
    """The same short hash for a config already dumped to JSON-able data (to leave fields out first)."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def dump_config(config: Config, path: str | Path) -> None:
    """Write a config as YAML that `load_config` reads back to an equal config."""
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"config file {path}{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _defaults(model_class: type[BaseModel]) -> dict[str, Any]:
    """The defaults of every field that has one, as plain data, so files and overrides layer over them."""
    defaults: dict[str, Any] = {}
    for name, field in model_class.model_fields.items():
        if not field.is_required():
            value = field.get_default(call_default_factory=True, validated_data={})
            defaults[name] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return defaults


def _merge(base: dict[str, Any], update: dict[str, Any]) -> None:
    """Layer `update` over `base`: sections merge key by key, anything else is replaced."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _set_nested(raw: dict[str, Any], keys: tuple[str, ...], value: Any, text: str) -> None:
    node = raw
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            where = ".".join(keys[: depth + 1])
            raise ConfigError(f"override {text!r}: {where} is a {type(child).__name__}, not a section")
        node = child
    node[keys[-1]] = value


def _looks_secret(key: str) -> bool:
    return _SECRET_KEY.search(key.lower().replace("-", "_")) is not None


def _refuse_secrets(raw: Any, source: str | None, prefix: str = "") -> None:
    if not isinstance(raw, dict):
        return
    for key, value in raw.items():
        path = f"{prefix}{key}"
        if _looks_secret(str(key)):
            origin = f" in {source}" if source else ""
            raise ConfigError(
                f"{path}{origin} looks like a secret. Secrets are read from the environment only "
                "(for example AWS_SECRET_ACCESS_KEY, OPENAI_API_KEY, RAY_AUTH_TOKEN), never from config "
                "files or overrides; remove the key and set the variable instead."
            )
        _refuse_secrets(value, source, prefix=f"{path}.")


def _describe(config_class: type[BaseModel], detail: dict[str, Any], source: str | None,
              override_keys: dict[tuple[str, ...], str]) -> str:
    location = tuple(str(part) for part in detail["loc"])
    field_path = ".".join(location) or "(top level)"
    origin = _origin(location, source, override_keys)
    if detail["type"] == "extra_forbidden":
        allowed = _allowed_keys(config_class, location[:-1])
        close = difflib.get_close_matches(location[-1], allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{field_path}: unknown key ({origin}); allowed keys here: {', '.join(allowed)}{hint}"
    if detail["type"] == "missing":
        return f"{field_path}: required but not given (set it in the config file or pass {field_path}=VALUE)"
    given = f"; got {_short(detail.get('input'))}"
    return f"{field_path}: {detail['msg']}{given} ({origin})"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _origin(location: tuple[str, ...], source: str | None, override_keys: dict[tuple[str, ...], str]) -> str:
    for keys, text in override_keys.items():
        if location[: len(keys)] == keys or keys[: len(location)] == location:
            return f"from {'option' if text.startswith('--') else 'override'} {text!r}"
    return f"in {source}" if source else "in the defaults"


def _allowed_keys(config_class: type[BaseModel], location: tuple[str, ...]) -> list[str]:
    model: Any = config_class
    for part in location:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return sorted(getattr(model, "model_fields", {}))
