"""The KubeRay manifests under k8s/: they parse, say what Kubernetes needs, run commands that exist with
configs that validate, match what cluster/kuberay.py renders, and the dashboard asks only for emitted metrics."""

import ast
import copy
import json
import re
import shlex
from pathlib import Path

import pytest
import typer
import yaml

from cluster import kuberay

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
BASE = K8S / "base"
OVERLAYS = ("dev", "prod")
DASHBOARD = BASE / "grafana" / "safelatent-dashboard.json"


def documents(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def base_resources() -> dict[tuple[str, str], dict]:
    resources = {}
    for name in yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]:
        for doc in documents(BASE / name):
            resources[(doc["kind"], doc["metadata"]["name"])] = doc
    return resources


def of_kind(kind: str) -> list[dict]:
    return [doc for (k, _), doc in base_resources().items() if k == kind]


def cluster_specs() -> list[tuple[str, dict]]:
    specs = [(f"RayCluster/{doc['metadata']['name']}", doc["spec"]) for doc in of_kind("RayCluster")]
    specs += [(f"RayJob/{doc['metadata']['name']}", doc["spec"]["rayClusterSpec"]) for doc in of_kind("RayJob")]
    specs += [(f"RayService/{doc['metadata']['name']}", doc["spec"]["rayClusterConfig"])
              for doc in of_kind("RayService")]
    return specs


# ---- every file ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(K8S.rglob("*.yaml")), ids=lambda p: str(p.relative_to(K8S)))
def test_every_yaml_parses_and_is_a_resource_or_patch(path):
    docs = documents(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        if path.name == "kustomization.yaml":
            assert doc["kind"] == "Kustomization" and doc["apiVersion"].startswith("kustomize.config.k8s.io/")
        elif isinstance(doc, list):  # a JSON6902 patch
            assert all({"op", "path"} <= set(op) and op["path"].startswith("/") for op in doc), path
        else:
            assert doc.get("apiVersion") and doc.get("kind"), f"{path}: no apiVersion/kind"
            assert doc.get("metadata", {}).get("name"), f"{path}: {doc['kind']} has no metadata.name"


def test_ray_resources_are_ray_io_v1():
    kinds = {kind for kind, _ in base_resources()}
    assert {"RayCluster", "RayJob", "RayService", "PodMonitor", "Deployment", "Service"} <= kinds
    for (kind, name), doc in base_resources().items():
        if kind.startswith("Ray"):
            assert doc["apiVersion"] == "ray.io/v1", f"{kind}/{name}"


def test_generated_files_are_up_to_date():
    for path, text in kuberay.generated_files().items():
        assert path.is_file(), f"{path} is missing: run `python -m cluster.kuberay write`"
        assert path.read_text() == text, f"{path} differs from cluster/kuberay.py: re-render it (write)"


# ---- clusters -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("label,spec", cluster_specs(), ids=lambda value: value if isinstance(value, str) else "")
def test_cluster_shape(label, spec):
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", f"{label}: the head must not run tasks"
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token" and spec["authOptions"]["secretName"]
    assert spec["rayVersion"].startswith("2.")
    groups = {group["groupName"]: group for group in spec["workerGroupSpecs"]}
    assert {"cpu", "gpu"} <= set(groups)
    gpu = groups["gpu"]
    assert 0 <= gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"] and gpu["maxReplicas"] >= 1
    pod = gpu["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] >= 1
    for group in [head, *spec["workerGroupSpecs"]]:
        container = group["template"]["spec"]["containers"][0]
        assert {"name": "metrics", "containerPort": 8080} in container["ports"], label
        assert container["workingDir"] == kuberay.APP_DIR
        claims = [volume["persistentVolumeClaim"]["claimName"] for volume in group["template"]["spec"]["volumes"]
                  if "persistentVolumeClaim" in volume]
        assert claims == [kuberay.RUNS_CLAIM]


def test_the_shared_claim_and_configmap_exist():
    resources = base_resources()
    assert ("PersistentVolumeClaim", kuberay.RUNS_CLAIM) in resources
    assert ("ConfigMap", kuberay.ENV_CONFIGMAP) in resources
    assert ("ServiceAccount", kuberay.SERVICE_ACCOUNT) in resources
    assert resources[("ConfigMap", kuberay.ENV_CONFIGMAP)]["data"]["MLFLOW_TRACKING_URI"] == kuberay.MLFLOW_URI


# ---- jobs ---------------------------------------------------------------------------------------------------

def cli_command(words: list[str]):
    """The (click-style) command a `safelatent ...` word list names (None when it does not exist)."""
    from safelatent.cli import app

    command = typer.main.get_command(app)
    for word in words:
        if word not in getattr(command, "commands", {}):
            return None
        command = command.commands[word]
    return command


def check_entrypoint(entrypoint: str, monkeypatch) -> None:
    argv = shlex.split(entrypoint)
    assert argv[0] == "safelatent", entrypoint
    assert not set("&|;<>`$") & set(entrypoint), "KubeRay runs the entrypoint after `--` in a shell line"
    words = [word for word in argv[1:3] if not word.startswith("-")]
    depth = 2 if len(words) == 2 and cli_command(words) else 1
    command = cli_command(words[:depth])
    if command is None:
        raise AssertionError(f"`safelatent {' '.join(words)}` is not a command of the CLI")
    args = argv[1 + depth:]
    context = command.make_context("safelatent", list(args))  # every option is one the command has
    config = context.params.get("config")
    assert config is not None and (ROOT / config).is_file(), f"{entrypoint}: no config file {config}"
    assert context.params.get("address") == "auto", "a RayJob's driver joins its cluster"
    # The config with the entrypoint's overrides validates, as the driver will check it in the pod's /app.
    from safelatent.cli import _load_settings

    monkeypatch.chdir(ROOT)
    config_class = {("train", "rlaif-ppo"): "pipelines.rlaif_ppo:RLAIFPPOConfig",
                    ("train", "sls-rlaif"): "pipelines.sls_rlaif:SLSRLAIFConfig",
                    ("tune",): "pipelines.tune:TuneConfig"}.get(tuple(words[:depth]))
    if config_class:
        module, name = config_class.split(":")
        settings = _load_settings(getattr(__import__(module, fromlist=[name]), name), Path(config),
                                  context.params.get("overrides"), {"address": "auto"})
        assert settings.tracking.uri == kuberay.MLFLOW_URI


@pytest.mark.parametrize("job", of_kind("RayJob"), ids=lambda job: job["metadata"]["name"])
def test_rayjob_runs_an_existing_command_with_an_existing_config(job, monkeypatch):
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["activeDeadlineSeconds"] > 0 and spec["preRunningDeadlineSeconds"] > 0
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["env_vars"]["MLFLOW_TRACKING_URI"] == kuberay.MLFLOW_URI
    check_entrypoint(spec["entrypoint"], monkeypatch)


def test_every_pipeline_has_a_rayjob():
    names = {job["metadata"]["name"] for job in of_kind("RayJob")}
    assert names == {pipeline.name for pipeline in kuberay.PIPELINES}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_entrypoints_are_valid_too(overlay, monkeypatch):
    patches = sorted((K8S / "overlays" / overlay / "generated").glob("entrypoint-*.yaml"))
    for path in patches:
        (op,) = documents(path)[0]
        check_entrypoint(op["value"], monkeypatch)


# ---- serving ------------------------------------------------------------------------------------------------

def test_rayservice_serve_config_is_the_projects_serve_config():
    (service,) = of_kind("RayService")
    committed = service["spec"]["serveConfigV2"]
    assert committed == kuberay.serve_config_v2(ROOT / "pipelines" / "configs" / "serve.yaml")
    # Everything but the in-cluster args is the serve config file as it is.
    served = yaml.safe_load(committed)
    original = yaml.safe_load((ROOT / "pipelines" / "configs" / "serve.yaml").read_text())
    for app in original["applications"]:
        app["args"].update(kuberay.CLUSTER_SERVE_ARGS)
    assert served == original
    assert served["http_options"]["port"] == 8000
    assert served["applications"][0]["import_path"] == "pipelines.deploy:build_app"


def test_prod_serve_config_patch_is_generated_from_the_same_file():
    (op,) = documents(K8S / "overlays" / "prod" / "generated" / "rayservice-serve-config.yaml")[0]
    assert op["path"] == "/spec/serveConfigV2"
    assert op["value"] == kuberay.serve_config_v2(profile="prod")
    assert yaml.safe_load(op["value"])["applications"][0]["args"]["model_gpus"] >= 1


def test_serve_config_generator_rejects_bad_args(tmp_path):
    from safelatent.errors import ConfigError

    bad = yaml.safe_load((ROOT / "pipelines" / "configs" / "serve.yaml").read_text())
    bad["applications"][0]["args"]["batching"]["max_batch_size"] = 0
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="max_batch_size"):
        kuberay.serve_config_v2(path)


# ---- kustomize ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("directory", [BASE, *(K8S / "overlays" / name for name in OVERLAYS)],
                         ids=lambda p: str(p.relative_to(K8S)))
def test_kustomizations_list_only_files_that_exist(directory):
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    for entry in kustomization.get("resources", []):
        target = (directory / entry).resolve()
        assert target.is_file() or (target / "kustomization.yaml").is_file(), f"{directory}: {entry}"
    for patch in kustomization.get("patches", []):
        assert (directory / patch["path"]).is_file(), f"{directory}: patch {patch['path']}"
    for generator in kustomization.get("configMapGenerator", []):
        for name in generator.get("files", []):
            assert (directory / name.split("=")[-1]).is_file()
    listed = {entry for entry in kustomization.get("resources", [])}
    listed |= {patch["path"] for patch in kustomization.get("patches", [])}
    if directory == BASE:
        assert listed == {path.name for path in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    else:
        assert "../../base" in kustomization["resources"]
        on_disk = {str(path.relative_to(directory)) for path in directory.rglob("*.yaml")} - {"kustomization.yaml"}
        assert on_disk <= listed, f"{directory}: files no kustomization uses: {sorted(on_disk - listed)}"


def apply_json6902(document: dict, ops: list[dict]) -> dict:
    """Enough of RFC 6902 (add, replace) to apply the overlays' patches: fails on a path that is not there."""
    document = copy.deepcopy(document)
    for op in ops:
        *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in op["path"].split("/")[1:]]
        node = document
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if op["op"] == "replace":
            assert (int(last) < len(node)) if isinstance(node, list) else last in node, op["path"]
        else:
            assert op["op"] == "add", op
        if isinstance(node, list):
            node[int(last)] = op["value"]
        else:
            node[last] = op["value"]
    return document


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_patches_apply_to_their_targets(overlay):
    directory = K8S / "overlays" / overlay
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    resources = base_resources()
    for patch in kustomization["patches"]:
        doc = documents(directory / patch["path"])[0]
        target = patch.get("target")
        if target is None:  # a strategic merge patch: it names its resource
            assert (doc["kind"], doc["metadata"]["name"]) in resources, patch["path"]
            continue
        matched = [resource for (kind, name), resource in resources.items()
                   if kind == target["kind"] and target.get("name", name) == name]
        assert matched, f"{patch['path']}: no {target}"
        for resource in matched:
            patched = apply_json6902(resource, doc)
            if resource["kind"].startswith("Ray"):
                spec = patched["spec"].get("rayClusterSpec") or patched["spec"].get("rayClusterConfig") \
                    or patched["spec"]
                assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    images = {image["name"] for image in kustomization.get("images", [])}
    assert {"safelatent-cpu", "safelatent-cuda"} <= images


def test_dev_is_cpu_only_and_prod_has_gpus():
    dev = documents(K8S / "overlays" / "dev" / "generated" / "cluster-raycluster.yaml")[0]
    prod = documents(K8S / "overlays" / "prod" / "generated" / "cluster-raycluster.yaml")[0]
    gpu_max = {name: next(op["value"] for op in ops if op["path"] == "/spec/workerGroupSpecs/1/maxReplicas")
               for name, ops in (("dev", dev), ("prod", prod))}
    assert gpu_max["dev"] == 0 and gpu_max["prod"] >= 1


# ---- monitoring ---------------------------------------------------------------------------------------------

METRIC_SOURCES = (ROOT / "pipelines" / "ppo_engine.py", ROOT / "actors" / "serving.py")


def emitted_metrics() -> dict[str, set[str]]:
    """The Prometheus series names of the ray.util.metrics the code creates: Ray prefixes `ray_`, a Counter
    gets `_total`, a Histogram `_bucket`, `_sum` and `_count` (Ray 2.60's OpenTelemetry exporter)."""
    found: dict[str, set[str]] = {}
    for path in METRIC_SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("Counter", "Gauge", "Histogram") and node.args
                    and isinstance(node.args[0], ast.Constant)):
                continue
            name = f"ray_{node.args[0].value}"
            found[name] = {"Gauge": {name}, "Counter": {f"{name}_total"},
                           "Histogram": {f"{name}_bucket", f"{name}_sum", f"{name}_count"}}[node.func.attr]
    return found


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") == "query" and query:
            queries.append(query)
    return queries


def test_the_code_emits_the_metrics_the_test_knows():
    metrics = emitted_metrics()
    assert "ray_safelatent_ppo_reward" in metrics and "ray_safelatent_serve_latency_s" in metrics
    assert len(metrics) >= 8


def test_dashboard_queries_reference_only_emitted_metrics():
    series = set().union(*emitted_metrics().values())
    queries = dashboard_queries()
    assert queries
    for query in queries:
        names = set(re.findall(r"\bray_[A-Za-z0-9_:]+", query))
        assert names, f"a query with no project metric: {query}"
        assert names <= series, f"{query}: {sorted(names - series)} not emitted by {[str(p) for p in METRIC_SOURCES]}"


def test_dashboard_shows_every_emitted_metric():
    text = " ".join(dashboard_queries())
    for name, series in emitted_metrics().items():
        assert any(re.search(rf"\b{item}\b", text) for item in series), f"{name} is on no panel"


def test_pod_monitors_scrape_the_metrics_port_of_heads_and_workers():
    monitors = of_kind("PodMonitor")
    assert all(monitor["apiVersion"] == "monitoring.coreos.com/v1" for monitor in monitors)
    selected = {monitor["spec"]["selector"]["matchLabels"]["ray.io/node-type"] for monitor in monitors}
    assert selected == {"head", "worker"}
    for monitor in monitors:
        assert "metrics" in {endpoint["port"] for endpoint in monitor["spec"]["podMetricsEndpoints"]}


def test_mlflow_server_uses_s3_artifacts_and_a_database():
    (deployment,) = [doc for doc in of_kind("Deployment") if doc["metadata"]["name"] == "mlflow"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = " ".join(container["command"] + container["args"])
    assert "mlflow server" in args and "--artifacts-destination=$(MLFLOW_ARTIFACTS_DESTINATION)" in args
    assert "--backend-store-uri=sqlite:////" in args and "--allowed-hosts=mlflow," in args
    settings = next(doc for doc in of_kind("ConfigMap") if doc["metadata"]["name"] == "mlflow-settings")
    assert settings["data"]["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert base_resources()[("Service", "mlflow")]["spec"]["ports"][0]["port"] == 5000
