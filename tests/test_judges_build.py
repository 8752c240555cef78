"""`build_judges`: trains both judges from one config, reports held-out accuracy, caches by config, loads back."""

from pathlib import Path

import pytest
import yaml

from safelatent.config import load_config
from safelatent.errors import ConfigError
from safelatent.judges import build
from safelatent.judges.build import JudgesConfig, build_judges, is_complete, read_report, summary_lines
from safelatent.judges.harm_classifier import HarmClassifier
from safelatent.judges.reward_model import RewardModel
from tests.judge_fixtures import one_torch_thread  # noqa: F401  (a fixture)

TINY_CONFIG = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "judges_tiny.yaml"
DEFAULT_CONFIG = TINY_CONFIG.with_name("judges.yaml")
BASE_MODEL_TINY = TINY_CONFIG.with_name("base_model_tiny.yaml")


def tiny_config(tmp_path, *overrides):
    return load_config(JudgesConfig, TINY_CONFIG, [f"out_root={tmp_path}", *overrides])


def test_the_shipped_configs_are_valid_and_the_default_matches_the_code():
    assert load_config(JudgesConfig, DEFAULT_CONFIG) == JudgesConfig()
    assert load_config(JudgesConfig, TINY_CONFIG).fresh_backbone.hidden_size == 32


@pytest.mark.parametrize(("overrides", "message"), [
    (["backbone=/m", "base_model_config=/b.yaml"], "not both"),
    (["policy_samples.train_prompts=4"], "policy_samples needs a policy"),
    (["reward_model.epochs=0"], "reward_model.epochs"),
])
def test_a_bad_judges_config_fails_before_any_work(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(tmp_path, *overrides)


def test_the_build_key_follows_what_is_built_not_the_thread_count(tmp_path):
    config = tiny_config(tmp_path)
    assert build.build_key(config.model_copy(update={"threads": 2})) == build.build_key(config)
    with_evasions = config.model_copy(update={"pairs": config.pairs.model_copy(update={"evasions": True})})
    assert build.build_key(with_evasions) != build.build_key(config)


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_build_reports_held_out_accuracy_and_is_cached(tmp_path, monkeypatch):
    config = tiny_config(tmp_path)
    directory = build_judges(config, progress=False)
    assert directory == tmp_path / f"judges-{build.build_key(config)}" and is_complete(directory)
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]  # no staging left behind
    report = read_report(directory)
    for judge, metric in (("reward_model", "test_pairwise_accuracy"), ("harm_classifier", "test_accuracy")):
        value = report[judge][metric]
        assert 0.0 <= value["value"] <= 1.0 and value["n"] > 0 and value["ci95"][0] <= value["value"]
        assert report[judge]["train_seconds"] >= 0 and report[judge]["version"].endswith(report["key"])
    assert report["constitution"]["hash"] and report["config_hash"] == report["key"]
    assert report["backbone"]["source"] == "fresh" and not (directory / "fresh_backbone").exists()
    assert len(summary_lines(report)) == 3
    assert load_config(JudgesConfig, directory / "config.yaml") == config

    reward_model = RewardModel.load(directory / "reward_model", device="cpu")
    classifier = HarmClassifier.load(directory / "harm_classifier", device="cpu")
    assert reward_model.version == report["reward_model"]["version"]
    assert len(reward_model.score(["hi"], ["hello"])) == 1 and 0 <= classifier.predict_proba(["hi"], ["yo"])[0] <= 1

    # A second build of the same config trains nothing; force=True trains again.
    def no_training(*args, **kwargs):
        raise AssertionError("a complete build was retrained")

    monkeypatch.setattr(build, "train_reward_model", no_training)
    assert build_judges(config, progress=False) == directory
    with pytest.raises(AssertionError, match="retrained"):
        build_judges(config, force=True, progress=False)
    assert is_complete(directory) and read_report(directory) == report  # a failed rebuild leaves the old one intact


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_build_on_a_given_backbone_adds_its_own_samples(tmp_path, tiny_llama_dir):
    config = tiny_config(tmp_path, f"backbone={tiny_llama_dir}", "policy_samples.train_prompts=4",
                         "policy_samples.test_prompts=4", "policy_samples.samples_per_prompt=2",
                         "policy_samples.response_length=6", "policy_samples.min_margin=0.0")
    report = read_report(build_judges(config, progress=False))
    assert report["backbone"] == {"source": "path", "path": str(tiny_llama_dir), "description": str(tiny_llama_dir)}
    assert report["data"]["policy_samples"] == {"train": 8, "test": 8}
    assert report["labeler"].startswith("oracle:")
    assert any(group.endswith("/policy-samples") for group in report["harm_classifier"]["test_by_group"])


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_build_on_the_base_model_builds_it_first(tmp_path):
    base = yaml.safe_load(BASE_MODEL_TINY.read_text())
    base["out_root"] = str(tmp_path / "base_models")
    base["training"]["max_steps"] = 2  # the integration is under test here, not the base model's quality
    base["evaluation"] = {"limit_per_kind": 1, "max_reply_length": 4, "samples_per_kind": 0}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    config = tiny_config(tmp_path, f"base_model_config={tmp_path / 'base.yaml'}")
    report = read_report(build_judges(config, progress=False))
    assert report["backbone"]["source"] == "base_model"
    assert Path(report["backbone"]["path"]).parent == tmp_path / "base_models"
    assert report["key"] != report["config_hash"]  # the base model's own config is part of the cache key
