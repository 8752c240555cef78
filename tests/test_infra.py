"""The image, the terraform and the `ray up` launcher config: structural checks (nothing is built or applied)."""

import json
import re
from pathlib import Path

import pytest
import yaml

from cluster import kuberay

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "infra" / "Dockerfile"
TERRAFORM = ROOT / "infra" / "terraform"
LAUNCHER = ROOT / "cluster" / "launcher" / "aws.yaml"


# ---- image --------------------------------------------------------------------------------------------------

def dockerfile() -> str:
    return DOCKERFILE.read_text()


def test_dockerfile_has_cpu_and_cuda_bases_of_the_clusters_ray_version():
    text = dockerfile()
    assert re.search(r"^ARG RAY_VERSION=" + re.escape(kuberay.RAY_VERSION) + "$", text, re.M)
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON_TAG\}-cpu AS base-cpu$", text, re.M)
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON_TAG\}-gpu AS base-cuda$", text, re.M)
    assert re.search(r"^FROM base-\$\{FLAVOR\} AS final$", text, re.M)
    assert "ARG PYTHON_TAG=py311" in text


def test_dockerfile_pins_cpu_torch_and_installs_the_project():
    text = dockerfile()
    makefile_torch = re.search(r"^TORCH \?= torch==(\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert f"ARG TORCH_VERSION={makefile_torch}" in text
    assert "ENV SAFELATENT_TORCH_INDEX=https://download.pytorch.org/whl/cpu" in text
    assert re.search(r'pip install "torch==\$\{TORCH_VERSION\}" --index-url "\$\{SAFELATENT_TORCH_INDEX\}"', text)
    assert re.search(r"^RUN pip install -e \. ", text, re.M), "the project is installed"
    # Every package setuptools installs is copied in, with the files pyproject.toml needs.
    include = re.search(r"^include = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    packages = {name.rstrip("*") for name in re.findall(r'"([^"]+)"', include)}
    copied = set(re.findall(r"^COPY --chown=ray:users (\S+) \./\1$", text, re.M))
    assert packages and packages <= copied
    assert "COPY --chown=ray:users pyproject.toml README.md ./" in text
    assert re.search(r"^WORKDIR /app$", text, re.M) and kuberay.APP_DIR == "/app"


def test_dockerignore_lets_the_sources_in():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*")] == "*"
    for needed in ("pyproject.toml", "README.md", "safelatent/", "actors/", "cluster/", "pipelines/"):
        assert f"!{needed}" in lines


# ---- terraform ----------------------------------------------------------------------------------------------

def terraform_text() -> str:
    return "\n".join(path.read_text() for path in sorted(TERRAFORM.glob("*.tf")))


def strip_strings_and_comments(text: str) -> str:
    text = re.sub(r"<<-?(\w+)\n.*?\n\s*\1\n", "", text, flags=re.S)
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    return re.sub(r"(#|//).*", "", text)


def blocks(kind: str) -> dict[str, str]:
    """Top-level blocks `kind "a" "b" { ... }` by their joined labels, with their bodies."""
    found = {}
    text = terraform_text()
    for match in re.finditer(rf'^{kind}((?: "[^"]+")+) \{{', text, re.M):
        depth, index = 1, match.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[index], 0)
            index += 1
        found[" ".join(re.findall(r'"([^"]+)"', match.group(1)))] = text[match.end():index - 1]
    return found


@pytest.mark.parametrize("path", sorted(TERRAFORM.glob("*.tf")), ids=lambda p: p.name)
def test_terraform_braces_and_brackets_balance(path):
    text = strip_strings_and_comments(path.read_text())
    for opening, closing in ("{}", "[]", "()"):
        assert text.count(opening) == text.count(closing), f"{path.name}: {opening}{closing} unbalanced"


def test_terraform_parses_as_hcl():
    hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 is not installed")
    for path in sorted(TERRAFORM.glob("*.tf")):
        with path.open() as handle:
            assert hcl2.load(handle), path


def test_terraform_uses_pinned_public_modules():
    modules = blocks("module")
    sources = {name: re.search(r'source\s*=\s*"([^"]+)"', body).group(1) for name, body in modules.items()}
    assert sources["eks"] == "terraform-aws-modules/eks/aws"
    assert sources["vpc"] == "terraform-aws-modules/vpc/aws"
    for name, body in modules.items():
        assert re.search(r'version\s*=\s*"~> \d+\.\d+"', body), f"module {name} has no pinned version"
    providers = re.search(r"required_providers \{(.*?)\n  \}", terraform_text(), re.S).group(1)
    assert set(re.findall(r"(\w+) = \{", providers)) == {"aws", "helm", "kubernetes"}


def test_terraform_has_a_gpu_node_group_the_manifests_select():
    eks = blocks("module")["eks"]
    gpu = re.search(r"\n    gpu = \{(.*?)\n    \}", eks, re.S).group(1)
    assert '"AL2023_x86_64_NVIDIA"' in gpu
    assert '"nvidia.com/gpu"' in gpu and '"NO_SCHEDULE"' in gpu
    label = re.search(r'labels\s*=\s*\{ "([^"]+)" = "([^"]+)" \}', gpu).groups()
    assert dict([label]) == kuberay.SIZES["prod"].gpu_node_selector
    assert "enable_irsa                              = true" in eks


def test_terraform_has_the_bucket_irsa_roles_and_the_kuberay_operator():
    resources = blocks("resource")
    assert "aws_s3_bucket artifacts" in resources
    assert "aws_efs_file_system runs" in resources and "kubernetes_storage_class_v1 efs" in resources
    assert "aws_ecr_repository safelatent" in resources
    operator = resources["helm_release kuberay_operator"]
    assert 'chart            = "kuberay-operator"' in operator
    assert 'repository       = "https://ray-project.github.io/kuberay-helm/"' in operator
    assert "helm_release nvidia_device_plugin" in resources and "helm_release cluster_autoscaler" in resources
    # The IRSA roles trust exactly the service accounts the manifests run as, in their namespace.
    namespace = yaml.safe_load((ROOT / "k8s" / "base" / "kustomization.yaml").read_text())["namespace"]
    variables = blocks("variable")
    assert re.search(rf'default\s*=\s*"{namespace}"', variables["namespace"])
    modules = blocks("module")
    for module, account in (("ray_irsa", kuberay.SERVICE_ACCOUNT), ("mlflow_irsa", "safelatent-mlflow")):
        assert f'"${{var.namespace}}:{account}"' in modules[module]
        assert "aws_iam_policy.artifacts.arn" in modules[module]


def test_terraform_variables_and_outputs_are_described():
    for kind in ("variable", "output"):
        found = blocks(kind)
        assert found, kind
        for name, body in found.items():
            assert re.search(r'description\s*=\s*"[^"]+"', body), f"{kind} {name} has no description"
    outputs = set(blocks("output"))
    assert {"bucket_name", "ecr_repository_url", "ray_role_arn", "mlflow_role_arn", "cluster_name"} <= outputs
    # Every var.X used is declared.
    used = set(re.findall(r"\bvar\.(\w+)", terraform_text()))
    assert used <= set(blocks("variable")), sorted(used - set(blocks("variable")))


# ---- ray up -------------------------------------------------------------------------------------------------

def test_launcher_config_matches_rays_cluster_schema():
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load(LAUNCHER.read_text())
    jsonschema.validate(config, schema)
    assert config["provider"]["type"] == "aws"
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    gpu = config["available_node_types"]["ray.worker.gpu"]
    assert gpu["docker"]["worker_image"].endswith("-cuda") and "--gpus all" in gpu["docker"]["worker_run_options"]
    assert "-e RAY_AUTH_MODE=token" in config["docker"]["run_options"]


def test_cluster_docs_cover_the_steps():
    text = (ROOT / "docs" / "cluster.md").read_text()
    for needed in ("docker build -f infra/Dockerfile", "kubectl apply -k k8s/overlays/dev", "8265", "8000",
                   "safelatent-ray-auth", "python -m cluster.kuberay write", "ray up cluster/launcher/aws.yaml"):
        assert needed in text, needed
