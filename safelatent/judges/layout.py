"""Where a judges build keeps its parts: the report, the reward model and the harm classifier."""

import json
from pathlib import Path
from typing import Any

REPORT = "judges_report.json"
REWARD_MODEL_DIR = "reward_model"
HARM_CLASSIFIER_DIR = "harm_classifier"


def is_complete(directory: str | Path) -> bool:
    directory = Path(directory)
    return ((directory / REPORT).is_file() and (directory / REWARD_MODEL_DIR / "judge.json").is_file()
            and (directory / HARM_CLASSIFIER_DIR / "judge.json").is_file())


def read_report(directory: str | Path) -> dict[str, Any]:
    """The judges_report.json of a build directory."""
    path = Path(directory) / REPORT
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; build the judges with `safelatent judges build -c CONFIG`")
    return json.loads(path.read_text())
