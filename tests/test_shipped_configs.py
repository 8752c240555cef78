"""Every config file the project ships loads into its config class, so the documented commands start."""

from pathlib import Path

import pytest

from pipelines.direction import DirectionTransferConfig
from pipelines.es2 import ES2Config
from pipelines.rlaif_ppo import RLAIFPPOConfig
from pipelines.safesteer import SafeSteerConfig
from pipelines.sls_rlaif import SLSRLAIFConfig
from pipelines.tune import TuneConfig
from safelatent.config import load_config
from safelatent.data.microworld import MicroWorldConfig
from safelatent.judges.build import JudgesConfig
from safelatent.models.base_model import BaseModelConfig

CONFIGS = Path(__file__).resolve().parents[1] / "pipelines" / "configs"
CLASSES = {"direction_transfer": DirectionTransferConfig,
           "microworld": MicroWorldConfig, "base_model": BaseModelConfig, "judges": JudgesConfig,
           "rlaif_ppo": RLAIFPPOConfig, "es2": ES2Config, "safesteer": SafeSteerConfig,
           "sls_rlaif": SLSRLAIFConfig, "tune": TuneConfig}


SERVE_FILES = ("serve.yaml",)


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.glob("*.yaml") if p.name not in SERVE_FILES),
                         ids=lambda path: path.name)
def test_shipped_config_loads(path):
    config_class = next(cls for prefix, cls in CLASSES.items() if path.stem.startswith(prefix))
    load_config(config_class, path)


@pytest.mark.parametrize("name", SERVE_FILES)
def test_shipped_serve_file_builds_its_application(name, monkeypatch):
    """The Serve config file's args are a valid ServeConfig and `build_app` (its import_path) accepts them."""
    import yaml

    from pipelines.deploy import build_app, serve_file_args
    from safelatent.serving.settings import ServeConfig

    document = yaml.safe_load((CONFIGS / name).read_text())
    assert document["applications"][0]["import_path"] == "pipelines.deploy:build_app"
    args = serve_file_args(CONFIGS / name)
    config = ServeConfig.model_validate(args)
    monkeypatch.setenv(config.api_keys.env, "a-key")
    assert build_app(args) is not None
