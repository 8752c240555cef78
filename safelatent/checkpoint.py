"""Training checkpoints in a local directory or under an s3:// prefix, one folder per step.

    <root>/step-000040/learner.pt           policy (+ value head) weights, optimizer state, learner RNG
    <root>/step-000040/trainer_state.json   step, KL controller, seeds, tracking run id, metrics so far
    <root>/step-000040/COMPLETE             written last: a checkpoint without it is ignored

A run that dies while writing leaves no COMPLETE marker, so resuming always starts from a whole checkpoint.
"""

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from safelatent import storage

LEARNER_FILE = "learner.pt"
STATE_FILE = "trainer_state.json"
COMPLETE_MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


def is_remote(root: str) -> bool:
    return str(root).startswith("s3://")


def checkpoint_uri(root: str, step: int) -> str:
    return f"{str(root).rstrip('/')}/step-{step:06d}"


def list_checkpoints(root: str) -> list[tuple[int, str]]:
    """(step, location) of every complete checkpoint under `root`, oldest first."""
    found: dict[int, str] = {}
    if is_remote(root):
        try:
            keys = storage.list_keys(root)
        except FileNotFoundError:  # no bucket yet: no checkpoints
            keys = []
        for key in keys:
            parts = key.split("/")
            match = _STEP_DIR.match(parts[0])
            if match and len(parts) == 2 and parts[1] == COMPLETE_MARKER:
                found[int(match.group(1))] = checkpoint_uri(root, int(match.group(1)))
    elif Path(root).is_dir():
        for child in Path(root).iterdir():
            match = _STEP_DIR.match(child.name)
            if match and (child / COMPLETE_MARKER).is_file():
                found[int(match.group(1))] = str(child)
    return sorted(found.items())


def latest_checkpoint(root: str) -> tuple[int, str] | None:
    checkpoints = list_checkpoints(root)
    return checkpoints[-1] if checkpoints else None


def publish(staging: Path, root: str, step: int, keep: int | None = None) -> str:
    """Move a written checkpoint folder to `root` as step `step`, marker last; keep the newest `keep`."""
    (staging / COMPLETE_MARKER).unlink(missing_ok=True)
    target = checkpoint_uri(root, step)
    marker = staging.parent / f".{staging.name}-{COMPLETE_MARKER}"
    marker.write_text(json.dumps({"step": step}) + "\n")
    if is_remote(root):
        storage.upload(staging, target + "/")
        storage.upload(marker, f"{target}/{COMPLETE_MARKER}")
        shutil.rmtree(staging)
    else:
        destination = Path(target)
        if destination.exists():
            shutil.rmtree(destination)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), destination)
        shutil.copyfile(marker, destination / COMPLETE_MARKER)
    marker.unlink()
    if keep is not None:
        prune(root, keep)
    return target


def prune(root: str, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints."""
    for _, location in list_checkpoints(root)[:-keep] if keep > 0 else []:
        if is_remote(location):
            storage.delete_prefix(location + "/")
        else:
            shutil.rmtree(location, ignore_errors=True)


def fetch(location: str, cache_dir: str | Path | None = None) -> Path:
    """A local folder with the checkpoint's files (downloaded when `location` is on S3)."""
    if not is_remote(location):
        path = Path(location)
        if not (path / COMPLETE_MARKER).is_file():
            raise FileNotFoundError(f"{path} is not a complete checkpoint (no {COMPLETE_MARKER} marker)")
        return path
    target = Path(cache_dir) if cache_dir is not None else Path(tempfile.mkdtemp(prefix="safelatent-ckpt-"))
    return storage.download(location.rstrip("/") + "/", target)


def read_state(location: str) -> dict[str, Any]:
    """The trainer_state.json of a checkpoint (local or S3)."""
    if is_remote(location):
        with tempfile.TemporaryDirectory(prefix="safelatent-state-") as scratch:
            path = storage.download(f"{location.rstrip('/')}/{STATE_FILE}", scratch)
            return json.loads(Path(path).read_text())
    return json.loads((Path(location) / STATE_FILE).read_text())

