"""Turn a served model's source into something `models.load` reads: registry models are downloaded first.

`models:/NAME@ALIAS` and `models:/NAME/VERSION` name a version in the MLflow model registry; its files are
the run artifacts the version points at, downloaded into `cache_dir`. Local directories, hub ids and s3://
prefixes pass through (load() fetches s3:// itself).
"""

import tempfile
from pathlib import Path

from safelatent.errors import SafelatentError
from safelatent.serving.settings import REGISTRY_URI


def resolve_source(source: str, *, tracking_uri: str, cache_dir: str | Path | None = None) -> str:
    """A location `safelatent.models.load` accepts for `source`."""
    match = REGISTRY_URI.match(source)
    if match is None:
        if source.startswith("models:/"):
            raise SafelatentError(f"model {source!r}: write a registry model as models:/NAME@ALIAS or "
                                  "models:/NAME/VERSION")
        return source
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    name, alias, version = match["name"], match["alias"], match["version"]
    try:
        found = (client.get_model_version_by_alias(name, alias) if alias
                 else client.get_model_version(name, version))
    except MlflowException as error:
        what = f"alias {alias!r}" if alias else f"version {version}"
        raise SafelatentError(f"the registry at {tracking_uri} has no {what} of model {name!r} "
                              f"({error.error_code})") from None
    target = Path(cache_dir) if cache_dir is not None else Path(tempfile.mkdtemp(prefix="safelatent-registry-"))
    target.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(artifact_uri=found.source, dst_path=str(target),
                                                tracking_uri=tracking_uri)
    return local
