"""Deploy a model on Ray Serve behind the OpenAI-compatible API, with guardrails.

`build_app(args)` is a Serve application builder: a Serve config file names it as
`import_path: pipelines.deploy:build_app` with the `ServeConfig` as `args`, so `serve run FILE`,
`serve deploy FILE` and a RayService's serveConfigV2 build the same application. `safelatent serve` reads the
same file, applies --model and overrides, and runs it on an embedded or given Ray cluster.
"""

from pathlib import Path
from typing import Any

import yaml

from actors.serving import CONCURRENT_BATCHES, Guardrail, ModelServer, OpenAIIngress
from safelatent.config import validate_config
from safelatent.errors import ConfigError, SafelatentError
from safelatent.serving.access import key_digests
from safelatent.serving.settings import ServeConfig

APP_NAME = "safelatent"

# Every replica of the application runs in Ray Serve's throughput mode (RAY_SERVE_THROUGHPUT_OPTIMIZED, Ray's
# "high throughput" setting): user code and the routers of its handles on the replica's own event loop instead of
# two more threads, request logs buffered. Set per replica, so `serve run`, `serve deploy` and a RayService get it
# without touching the cluster's environment. Direct ingress (replicas taking HTTP themselves) stays off: it made
# serve.shutdown wait 30 s for the controller and added nothing measurable behind the proxy (docs/serving.md).
REPLICA_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}


def build_app(args: dict[str, Any]):
    """The Serve application for a ServeConfig given as a dict (the `args` of a Serve config file)."""
    return application(validate_config(ServeConfig, args, "the serve application's args"))


def application(config: ServeConfig):
    """Model server(s), the guardrail (when any check is on) and the ingress, bound together."""
    from cluster.connect import QUIET_ENV

    runtime_env = {"env_vars": {**QUIET_ENV, **REPLICA_ENV}}
    digests = key_digests(config.api_keys)
    payload = config.model_dump(mode="json")
    logging_config = {"log_level": config.log_level}
    model = ModelServer.options(
        num_replicas=config.replicas,
        max_ongoing_requests=model_server_room(config),
        max_queued_requests=-1,
        ray_actor_options={"num_cpus": config.model_cpus, "num_gpus": config.model_gpus,
                           "runtime_env": runtime_env},
        health_check_period_s=10,
        logging_config=logging_config,
    ).bind(payload)
    guardrail = None
    if config.guardrails.active:
        guardrail = Guardrail.options(
            max_ongoing_requests=256,
            ray_actor_options={"num_cpus": 0, "runtime_env": runtime_env},
            logging_config=logging_config,
        ).bind(config.guardrails.model_dump(mode="json"), config.device, config.s3_endpoint_url)
    return OpenAIIngress.options(max_ongoing_requests=1024,
                                 ray_actor_options={"num_cpus": 0, "runtime_env": runtime_env},
                                 logging_config=logging_config).bind(
        model, guardrail, payload, digests)


def model_server_room(config: ServeConfig) -> int:
    """How many requests a model replica takes at once: `CONCURRENT_BATCHES` full batches, batching on or off.

    The rest wait in the ingress. With batching off the replica still decodes one request at a time, but the
    waiting requests queue inside it: with room for fewer requests than clients, the ingress keeps offering
    requests that the replica turns away, and that churn cost over two thirds of the unbatched throughput at
    concurrency 32 (10 req/s with room for 8 against 35 req/s with room for 64; docs/serving.md).
    """
    return max(CONCURRENT_BATCHES * config.batching.max_batch_size, 8)


def serve_file_args(path: str | Path) -> dict[str, Any]:
    """The `args` of the application in a Serve config file (its only application, or the one named APP_NAME)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"serve config {path} does not exist")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"serve config {path} is not valid YAML: {error}") from None
    applications = (document or {}).get("applications") if isinstance(document, dict) else None
    if not applications:
        raise ConfigError(f"serve config {path} has no applications list (see pipelines/configs/serve.yaml)")
    chosen = next((app for app in applications if app.get("name") == APP_NAME), applications[0])
    args = chosen.get("args") or {}
    if not isinstance(args, dict):
        raise ConfigError(f"serve config {path}: the application's args must be a mapping")
    return args


def start(config: ServeConfig, *, host: str = "127.0.0.1", port: int = 8000, route_prefix: str = "/"):
    """Deploy on the connected Ray cluster and wait until the application is running; its handle."""
    from ray import serve

    serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": config.log_level})
    return serve.run(application(config), name=APP_NAME, route_prefix=route_prefix)


def run_server(config: ServeConfig, *, host: str = "127.0.0.1", port: int = 8000, address: str | None = None,
               query: str | None = None, console=None, out=None) -> None:
    """Serve until interrupted; with `query`, ask it once over HTTP, print the exchange, and stop."""
    import time

    from ray import serve
    from rich.console import Console

    from cluster.connect import connected, dashboard_url

    console = console or Console(stderr=True)
    out = out or Console()
    with connected(address):
        try:
            with console.status(f"deploying {config.model} on Ray Serve (loading the model)"):
                start(config, host=host, port=port)
            url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
            console.print(f"serving {config.served_name()!r} at {url}/v1 (OpenAI-compatible); "
                          f"Ray dashboard: {dashboard_url() or 'off'}", highlight=False, soft_wrap=True)
            if query is not None:
                ask_once(url, config, query, out)
                return
            console.print("Ctrl-C stops the server.", highlight=False)
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            console.print("stopping", highlight=False)
        finally:
            serve.shutdown()


def ask_once(url: str, config: ServeConfig, question: str, out) -> dict[str, Any]:
    """POST one chat completion with the first configured API key; print the request and the reply."""
    import json
    import urllib.error
    import urllib.request

    from safelatent.serving.access import read_keys

    keys = read_keys(config.api_keys)
    body = {"model": config.served_name(), "messages": [{"role": "user", "content": question}],
            "temperature": 0, "max_tokens": config.limits.default_max_tokens}
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {keys[0]}"} if keys else {})}
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(), headers=headers)
    out.print(f"POST {url}/v1/chat/completions\n{json.dumps(body, indent=2)}", highlight=False, markup=False,
              soft_wrap=True)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise SafelatentError(f"the server answered {error.code}: {error.read().decode(errors='replace')}") from None
    message = answer["choices"][0]
    out.print(f"answer ({message['finish_reason']}): {message['message']['content']}", highlight=False, soft_wrap=True,
              markup=False)
    return answer
