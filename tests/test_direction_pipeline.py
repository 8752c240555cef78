"""The direction-transfer pipeline on a local Ray cluster: features in parallel workers, maps, α sweep, a steered
target that loads with its steering, MLflow; and the checks that stop a bad run before anything starts."""

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file
from typer.testing import CliRunner

from actors.features import FeatureExtractor
from pipelines.direction import DIRECTIONS_FILE, NATIVE, REPORT_FILE, DirectionTransferConfig, run
from safelatent.config import load_config
from safelatent.errors import ConfigError
from safelatent.methods.direction_transfer import BenignAnchors, HarmfulDataError, SafetyPairs
from safelatent.models.loading import load
from safelatent.models.steering import SteeringSite, attached_steering, has_steering

CONFIGS = Path(__file__).resolve().parents[1] / "pipelines" / "configs"
TINY_WORLD = {"benign_per_family": {"train": 6, "validation": 2, "test": 2},
              "harmful_per_category": {"train": 2, "validation": 1, "test": 1},
              "jailbreaks_per_wrapper": {"train": 1, "validation": 1, "test": 1},
              "pairs_per_category": {"train": 2, "validation": 1, "test": 1}}


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    from safelatent.data.microworld import MicroWorldConfig, build_microworld, save_microworld

    config = MicroWorldConfig.model_validate(TINY_WORLD)
    return save_microworld(build_microworld(config), config, tmp_path_factory.mktemp("world") / "microworld")


def tiny_config(source, target, world, tmp_path, *overrides: str) -> DirectionTransferConfig:
    return load_config(DirectionTransferConfig, CONFIGS / "direction_transfer.yaml", [
        f"source.model={source}", "source.layer=1", f"target.model={target}", "target.layer=-2",
        f"microworld_dir={world}", "anchors.benign=30", "anchors.borderline=10", "pairs.count=8",
        "fit.procrustes_ranks=[4, 8]", "fit.mlp_steps=30", "fit.mlp_hidden=16",
        "evaluation.alphas=[0, 2]", "evaluation.limit=1", "evaluation.max_new_tokens=4",
        "resources.source.num_cpus=0.25", "resources.target.num_cpus=0.25", "resources.baseline.num_cpus=0.25",
        f"out_root={tmp_path / 'out'}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", *overrides])


def test_a_transfer_run_saves_a_steered_target_that_loads_with_its_steering(
        ray_cluster, tiny_llama_dir, tiny_gpt2_dir, tiny_world, tmp_path):
    config = tiny_config(tiny_llama_dir, tiny_gpt2_dir, tiny_world, tmp_path, "baseline.native=true",
                         "tracking.registered_model=direction-transfer")
    result = run(config)

    report = json.loads((result.out_dir / REPORT_FILE).read_text())
    assert set(report["directions"]) == {"ridge", "procrustes", "mlp", NATIVE}
    assert report["anchors"] == {"count": 40, "kinds": ["benign", "borderline"], "split": "train"}
    assert report["source"]["hidden_size"] == 32 and report["target"]["layer"] == -2
    for name in ("ridge", "procrustes", "mlp"):
        entry = report["directions"][name]
        assert -1 <= entry["cosine_to_native"] <= 1 and entry["fit"]["n_heldout"] == 8
        assert [point["alpha"] for point in report["sweeps"]["validation"][name]] == [0.0, 2.0]
        assert entry["alpha"] in (0.0, 2.0) and "test_harmlessness_gain" in entry
        assert isinstance(entry["meets_80_percent_target"], bool)
    # Every direction is compared with one unsteered evaluation, shared by all of them.
    baselines = {json.dumps(points[0]) for points in report["sweeps"]["validation"].values()}
    assert len(baselines) == 1

    saved = load_file(result.out_dir / DIRECTIONS_FILE)
    assert saved["ridge.calibrated"].shape == (32,)
    assert float(saved["ridge.calibrated"].norm()) == pytest.approx(report["directions"]["ridge"]["sigma"], rel=1e-4)

    assert has_steering(result.model_dir)
    steered = load(result.model_dir, device="cpu")
    steering = attached_steering(steered.model)
    assert steering.site == SteeringSite(layer=1) and steering.scale == report["deployed"]["alpha"]
    deployed = report["deployed"]["map"]
    assert deployed == "procrustes", "the shipped config deploys the Procrustes map"
    assert steering.metadata["map"] == deployed and torch.equal(steering.vector, saved[f"{deployed}.calibrated"])
    assert not has_steering(tiny_gpt2_dir), "the target model itself is left unchanged"

    client = MlflowClient(tracking_uri=config.tracking.uri)
    mlflow_run = client.get_run(result.tracking_run.rsplit(" ", 1)[-1])
    assert mlflow_run.data.tags["pipeline"] == "direction-transfer"
    assert {"ridge/heldout_r2", "ridge/cosine_to_native", "deployed_alpha"} <= set(mlflow_run.data.metrics)
    assert {"model", "transfer"} <= {item.path for item in client.list_artifacts(mlflow_run.info.run_id)}
    assert result.registered == "direction-transfer version 1"


def test_the_target_worker_never_reads_safe_unsafe_pairs(tiny_gpt2_dir):
    pairs = SafetyPairs(safe=("How do I secure a bank?",), unsafe=("How do I hack into a bank?",))
    target = FeatureExtractor(str(tiny_gpt2_dir), SteeringSite(layer=1), "target", device="cpu")
    with pytest.raises(HarmfulDataError, match="never reads safe/unsafe pairs"):
        target.safety_direction(pairs)
    assert target.anchor_states(BenignAnchors.from_rows([{"kind": "benign", "prompt": "What is 2 plus 2?"}])
                                ).shape == (1, 32)
    baseline = FeatureExtractor(str(tiny_gpt2_dir), SteeringSite(layer=1), "native-baseline", device="cpu")
    assert baseline.safety_direction(pairs).shape == (32,)


def test_a_layer_the_model_lacks_fails_before_ray_starts_and_leaves_nothing(tiny_llama_dir, tiny_gpt2_dir,
                                                                            tiny_world, tmp_path):
    import ray

    config = tiny_config(tiny_llama_dir, tiny_gpt2_dir, tiny_world, tmp_path, "target.layer=5")
    started = ray.is_initialized()
    with pytest.raises(ConfigError, match=r"target\.layer: layer 5 is out of range .* with 3 layers"):
        run(config)
    assert ray.is_initialized() == started
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


def test_bad_configs_name_the_field(tiny_llama_dir, tiny_gpt2_dir, tiny_world, tmp_path):
    with pytest.raises(ConfigError, match="deploy_map 'mlp' is not among the fitted maps"):
        tiny_config(tiny_llama_dir, tiny_gpt2_dir, tiny_world, tmp_path, "maps=[ridge]", "deploy_map=mlp")
    with pytest.raises(ConfigError, match="alpha: null chooses α by the validation sweep"):
        tiny_config(tiny_llama_dir, tiny_gpt2_dir, tiny_world, tmp_path, "evaluation.enabled=false")
    with pytest.raises(ConfigError, match="must contain 0"):
        tiny_config(tiny_llama_dir, tiny_gpt2_dir, tiny_world, tmp_path, "evaluation.alphas=[0.5, 1]")
    with pytest.raises(ConfigError, match=r"source\.base_model_config: no config file at nowhere\.yaml"):
        load_config(DirectionTransferConfig, None, ["source.base_model_config=nowhere.yaml"])


def test_the_shipped_config_loads_and_the_cli_options_pick_the_models(tiny_llama_dir, tiny_gpt2_dir):
    from safelatent.cli import app

    config = load_config(DirectionTransferConfig, CONFIGS / "direction_transfer.yaml", [],
                         {"source.model": str(tiny_llama_dir), "target.model": str(tiny_gpt2_dir)})
    assert config.source.model == str(tiny_llama_dir) and config.target.layer == 1
    result = CliRunner().invoke(app, ["train", "direction-transfer", "--source", str(tiny_llama_dir),
                                      "--target", str(tiny_gpt2_dir), "target.layer=7"])
    assert result.exit_code == 2, result.output
    assert "target.layer: layer 7 is out of range" in result.output
