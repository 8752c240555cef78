"""A real multi-process Ray cluster on loopback: a head (no CPUs, as on Kubernetes) and one worker node, each
its own `ray start` with its own ports. Jobs reach it through the Ray Jobs API: a short rlaif-ppo run with
`safelatent submit`, and a plain `ray job submit`. Nothing outside this test's cluster is touched (no
`ray stop`, which would stop every cluster on the machine)."""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def node_ports(ports: list[int]) -> list[str]:
    names = ("node-manager-port", "object-manager-port", "metrics-export-port", "dashboard-agent-listen-port",
             "dashboard-agent-grpc-port", "runtime-env-agent-port")
    return [f"--{name}={port}" for name, port in zip(names, ports, strict=True)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(dashboard URL, environment) of a running two-node cluster; both nodes stop at the end."""
    logs = tmp_path_factory.mktemp("nodes")
    gcs, dashboard, client_port, *rest = free_ports(15)
    token = secrets.token_hex(16)  # token auth on, with this cluster's own token (every client must send it)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    # Each node its own temp dir, as on separate machines: nodes sharing one would share (and overwrite) the
    # unpacked working_dir of a job. Short paths: Ray's sockets live under them.
    temp = {role: tempfile.mkdtemp(prefix=f"sl-{role}-", dir="/tmp") for role in ("head", "worker")}
    # `ray start --head` also records its address as the machine's default cluster, which a later plain
    # ray.init() would try to join: put back what was there before.
    address_file = default_address_file()
    previous = address_file.read_text() if address_file.is_file() else None
    common = ["--block", "--disable-usage-stats"]
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=0",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         f"--ray-client-server-port={client_port}", f"--temp-dir={temp['head']}", *node_ports(rest[:6]), *common],
        env=env, stdout=(logs / "head.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
    nodes = [head]
    try:
        url = f"http://127.0.0.1:{dashboard}"
        wait_for_jobs_api(url, token)
        worker = subprocess.Popen(
            [str(BIN / "ray"), "start", f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
             f"--temp-dir={temp['worker']}", *node_ports(rest[6:12]), *common],
            env=env, stdout=(logs / "worker.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
            cwd=REPO)
        nodes.append(worker)
        wait_for_cpus(url, 2, env, logs / "worker.log")
        yield url, env
    finally:
        for node in reversed(nodes):
            os.killpg(node.pid, signal.SIGTERM)
        for node in nodes:
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
        for directory in temp.values():
            shutil.rmtree(directory, ignore_errors=True)
        if previous is None:
            address_file.unlink(missing_ok=True)
        else:
            address_file.write_text(previous)


def default_address_file() -> Path:
    from ray._common.utils import get_ray_address_file

    return Path(get_ray_address_file(None))


def wait_for_jobs_api(url: str, token: str, timeout_s: float = 120) -> None:
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            JobSubmissionClient(url, headers={"Authorization": f"Bearer {token}"}).list_jobs()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def wait_for_cpus(url: str, cpus: int, env: dict, log: Path, timeout_s: float = 300) -> None:
    """Until the worker node has joined (a job that prints the cluster's CPUs)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        probe = subprocess.run([str(BIN / "ray"), "job", "submit", f"--address={url}", "--", "python", "-c",
                                "import ray; ray.init(); print('CPUS', ray.cluster_resources().get('CPU', 0))"],
                               env=env, capture_output=True, text=True, timeout=120, cwd="/")
        if f"CPUS {float(cpus)}" in probe.stdout:
            return
        time.sleep(2)
    raise TimeoutError(f"the worker node did not join: {probe.stdout[-1000:]}\nworker node: {log.read_text()[-2000:]}")


def test_safelatent_submit_runs_a_pipeline_on_the_cluster_and_exits_with_its_result(
        cluster, tiny_llama_dir, tiny_judges_dir, tmp_path):
    url, env = cluster
    out, database = tmp_path / "out", tmp_path / "mlflow.db"
    command = [str(BIN / "safelatent"), "submit", "rlaif-ppo", "-c", "pipelines/configs/rlaif_ppo.yaml",
               "--address", url, "--env", "SAFELATENT_DEBUG=1",
               f"model={tiny_llama_dir}", "base_model_config=null", f"judges={tiny_judges_dir}", "judges_config=null",
               "name=submitted", "steps=2", f"out_root={out}", f"tracking.uri=sqlite:///{database}",
               "rollout.prompts_per_step=4", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=8",
               "ppo.minibatch_size=4", "ppo.epochs=1", "evaluation.limit=2", "evaluation.max_new_tokens=8",
               "checkpoint.every=1", "tracking.registered_model=null"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    job_id = done.stdout.splitlines()[0].strip()
    assert job_id.startswith("safelatent-rlaif-ppo-submitted-") and f"job {job_id}: SUCCEEDED" in done.stderr
    assert "model:" in done.stdout  # the job's own output, streamed

    summary = json.loads((out / "submitted" / "summary.json").read_text())
    assert summary["steps"] == 2
    assert sorted(path.name for path in (out / "submitted" / "checkpoints").iterdir()) == ["step-000001",
                                                                                           "step-000002"]
    client = MlflowClient(tracking_uri=f"sqlite:///{database}")
    run = client.get_run(summary["mlflow"].rsplit(" ", 1)[-1])
    assert run.info.status == "FINISHED" and len(client.get_metric_history(run.info.run_id, "reward")) == 2

    listed = subprocess.run([str(BIN / "safelatent"), "jobs", "list", "--address", url], env={**env, "COLUMNS": "400"},
                            capture_output=True, text=True, timeout=120)
    assert job_id in listed.stdout and "SUCCEEDED" in listed.stdout
    logs = subprocess.run([str(BIN / "safelatent"), "jobs", "logs", job_id, "--address", url], env=env,
                          capture_output=True, text=True, timeout=120)
    assert logs.returncode == 0 and "model:" in logs.stdout


def test_a_bad_config_never_reaches_the_cluster(cluster, tmp_path):
    url, env = cluster
    refused = subprocess.run([str(BIN / "safelatent"), "submit", "rlaif-ppo", "--address", url, "steps=0"], env=env,
                             capture_output=True, text=True, timeout=120, cwd=REPO)
    assert refused.returncode == 2 and "steps" in refused.stderr
    secret = subprocess.run([str(BIN / "safelatent"), "submit", "rlaif-ppo", "--address", url, "--env",
                             "AWS_SECRET_ACCESS_KEY=x"], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert secret.returncode == 2 and "looks like a secret" in secret.stderr


def test_without_the_token_the_cluster_refuses_and_says_what_to_set(cluster):
    url, env = cluster
    anonymous = {name: value for name, value in env.items() if not name.startswith("RAY_AUTH")}
    refused = subprocess.run([str(BIN / "safelatent"), "jobs", "list", "--address", url], env=anonymous,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "RAY_AUTH_TOKEN" in refused.stderr


def test_plain_ray_job_submit_reaches_the_same_cluster(cluster, tmp_path):
    url, env = cluster
    script = tmp_path / "job.py"
    script.write_text("import ray\nray.init()\n"
                      "print('nodes', sum(node['Alive'] for node in ray.nodes()))\n")
    done = subprocess.run([str(BIN / "ray"), "job", "submit", f"--address={url}", f"--working-dir={tmp_path}", "--",
                           "python", "job.py"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "nodes 2" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
