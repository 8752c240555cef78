"""Typed configs: YAML plus overrides, one clear error per bad field, and no secrets in configs."""

from pathlib import Path

import pytest
from pydantic import Field

from safelatent.config import Config, config_hash, dump_config, load_config, parse_override
from safelatent.errors import ConfigError


class Optimizer(Config):
    name: str = "adamw"
    learning_rate: float = Field(1e-4, gt=0)


class Example(Config):
    seed: int = Field(0, ge=0)
    mode: str = "fast"
    optimizer: Optimizer = Field(default_factory=Optimizer)
    layers: list[int] = Field(default_factory=lambda: [1, 2])


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_yaml_then_overrides_with_typed_values(tmp_path):
    path = write(tmp_path, "seed: 3\noptimizer:\n  learning_rate: 0.01\n")
    config = load_config(Example, path, ["optimizer.name=sgd", "layers=[4, 5]", "seed=7"])
    assert config.seed == 7
    assert config.optimizer == Optimizer(name="sgd", learning_rate=0.01)
    assert config.layers == [4, 5]


def test_defaults_without_file():
    assert load_config(Example) == Example()


def test_unknown_key_names_path_file_and_allowed_keys(tmp_path):
    path = write(tmp_path, "optimizer:\n  learning_rat: 0.1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(Example, path)
    message = str(caught.value)
    assert "optimizer.learning_rat" in message
    assert str(path) in message
    assert "learning_rate, name" in message
    assert "did you mean 'learning_rate'" in message


def test_out_of_range_override_names_the_override_and_the_bound(tmp_path):
    path = write(tmp_path, "seed: 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(Example, path, ["optimizer.learning_rate=-1"])
    message = str(caught.value)
    assert "optimizer.learning_rate" in message
    assert "greater than 0" in message
    assert "override 'optimizer.learning_rate=-1'" in message


def test_all_problems_reported_at_once(tmp_path):
    path = write(tmp_path, "seed: -2\nmode: [1]\n")
    with pytest.raises(ConfigError) as caught:
        load_config(Example, path)
    message = str(caught.value)
    assert "seed: Input should be greater than or equal to 0" in message
    assert "mode: Input should be a valid string" in message


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "seed: 1\noptimizer: [unclosed\n")
    with pytest.raises(ConfigError, match=r"config\.yaml, line \d+: invalid YAML"):
        load_config(Example, path)


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Example, write(tmp_path, "- 1\n- 2\n"))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Example, tmp_path / "nope.yaml")


def test_malformed_override():
    with pytest.raises(ConfigError, match=r"key\.sub=value"):
        parse_override("seed")
    with pytest.raises(ConfigError, match=r"key\.sub=value"):
        parse_override("a..b=1")


def test_override_into_a_scalar_is_refused():
    with pytest.raises(ConfigError, match="seed is a int, not a section"):
        load_config(Example, None, ["seed=1", "seed.inner=2"])


@pytest.mark.parametrize("key", ["aws_secret_access_key", "api_key", "hf_token", "db_password", "token",
                                 "OPENAI-API-KEY"])
def test_secret_keys_are_refused_without_echoing_the_value(tmp_path, key):
    path = write(tmp_path, f"optimizer:\n  {key}: hunter2-very-secret\n")
    with pytest.raises(ConfigError) as caught:
        load_config(Example, path)
    message = str(caught.value)
    assert f"optimizer.{key}" in message
    assert "environment" in message
    assert "hunter2" not in message


def test_secret_override_is_refused_without_echoing_the_value():
    with pytest.raises(ConfigError) as caught:
        load_config(Example, None, ["token=hunter2-very-secret"])
    assert "hunter2" not in str(caught.value)


def test_dump_and_reload_round_trip_and_hash(tmp_path):
    config = load_config(Example, None, ["seed=5", "optimizer.name=sgd"])
    dump_config(config, tmp_path / "saved.yaml")
    again = load_config(Example, tmp_path / "saved.yaml")
    assert again == config
    assert config_hash(again) == config_hash(config)
    assert config_hash(config) != config_hash(Example())


def test_configs_are_immutable():
    config = Example()
    with pytest.raises(Exception, match="frozen"):
        config.seed = 3  # type: ignore[misc]


def test_overriding_one_nested_key_keeps_its_siblings(tmp_path):
    class Sizes(Config):
        train: int
        test: int

    class WithRequiredSection(Config):
        sizes: Sizes = Field(default_factory=lambda: Sizes(train=10, test=2))

    assert load_config(WithRequiredSection, None, ["sizes.train=50"]).sizes == Sizes(train=50, test=2)
    path = write(tmp_path, "sizes:\n  test: 7\n")
    assert load_config(WithRequiredSection, path, ["sizes.train=1"]).sizes == Sizes(train=1, test=7)


def test_names_that_only_contain_a_secret_word_are_ordinary_keys():
    class Generation(Config):
        max_new_tokens: int = 64
        tokenizer: str = "bpe"

    assert load_config(Generation, None, ["max_new_tokens=8", "tokenizer=wordpiece"]).max_new_tokens == 8
