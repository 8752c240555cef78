"""Every config file the project ships loads into its config class, so the documented commands start."""

from pathlib import Path

import pytest

from pipelines.rlaif_ppo import RLAIFPPOConfig
from pipelines.sls_rlaif import SLSRLAIFConfig
from safelatent.config import load_config
from safelatent.data.microworld import MicroWorldConfig
from safelatent.judges.build import JudgesConfig
from safelatent.models.base_model import BaseModelConfig

CONFIGS = Path(__file__).resolve().parents[1] / "pipelines" / "configs"
CLASSES = {"microworld": MicroWorldConfig, "base_model": BaseModelConfig, "judges": JudgesConfig,
           "rlaif_ppo": RLAIFPPOConfig,
           "sls_rlaif": SLSRLAIFConfig}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.name)
def test_shipped_config_loads(path):
    config_class = next(cls for prefix, cls in CLASSES.items() if path.stem.startswith(prefix))
    load_config(config_class, path)
