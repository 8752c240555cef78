"""The `safelatent` command line. Every command here works; each has --help."""

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from safelatent import __version__
from safelatent.credentials import RedactingFilter, redact
from safelatent.errors import ConfigError, SafelatentError

app = typer.Typer(help="Train language models that are harmless by construction and stay helpful.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Build the safety micro-world and inspect benchmark files.", no_args_is_help=True)
app.add_typer(data_app, name="data")
base_model_app = typer.Typer(help="Build the micro-world's helpful-but-unsafe base model.", no_args_is_help=True)
app.add_typer(base_model_app, name="base-model")
judges_app = typer.Typer(help="Train the AI judges: reward model and harm classifier.", no_args_is_help=True)
app.add_typer(judges_app, name="judges")
train_app = typer.Typer(help="Train a policy with a safety method on Ray.", no_args_is_help=True)
app.add_typer(train_app, name="train")
jobs_app = typer.Typer(help="Jobs on a Ray cluster (the Ray Jobs API): list, logs, stop.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")

console = Console(stderr=True)
stdout = Console()

ConfigOption = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file.")]
Overrides = Annotated[Optional[list[str]], typer.Argument(help="Config overrides, key.sub=value.",
                                                          show_default=False)]


def _version(value: bool) -> None:
    if value:
        stdout.print(f"safelatent {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RedactingFilter())
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", handlers=[handler])


def _fail(error: Exception, code: int) -> typer.Exit:
    """Print the error in one line (its traceback too with SAFELATENT_DEBUG=1) and exit with `code`."""
    if os.environ.get("SAFELATENT_DEBUG") == "1" and error.__traceback__ is not None:
        import traceback

        console.print(redact("".join(traceback.format_exception(error))), highlight=False, markup=False)
    console.print(f"[bold red]error:[/] {redact(str(error))}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(code)


def default_config(name: str) -> Path:
    """A config file shipped with the project (pipelines/configs/NAME), wherever it is installed."""
    from importlib.resources import files

    return Path(str(files("pipelines") / "configs" / name))


def _load_settings(config_class: type, path: Optional[Path], overrides: Optional[list[str]],
                   options: Optional[dict] = None):
    """Load and validate a config, or exit with code 2 before anything starts."""
    from safelatent.config import load_config

    try:
        return load_config(config_class, path, overrides or [], options)
    except ConfigError as error:
        raise _fail(error, 2) from None


@data_app.command("build")
def data_build(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the DatasetDict to.")] = Path(
        "data/microworld"),
    config: ConfigOption = None,
    overrides: Overrides = None,
) -> None:
    """Generate the safety micro-world and save it as a Hugging Face DatasetDict.

    Example: safelatent data build --out data/microworld seed=3 benign_per_family.train=1000
    """
    from safelatent.config import config_hash, load_config
    from safelatent.data.microworld import (
        MicroWorldConfig,
        build_microworld,
        count_rows,
        read_manifest,
        save_microworld,
    )
    from safelatent.data.splits import SPLITS

    try:
        settings = load_config(MicroWorldConfig, config, overrides or [])
    except ConfigError as error:
        raise _fail(error, 2) from None
    _quiet_datasets()
    started = time.perf_counter()
    with console.status(f"generating the micro-world (seed {settings.seed}, config {config_hash(settings)})"):
        dataset = build_microworld(settings)
    with console.status(f"writing {out}"):
        try:
            save_microworld(dataset, settings, out)
        except (FileExistsError, OSError) as error:
            raise _fail(error, 1) from None
    elapsed = time.perf_counter() - started

    table = Table(title="micro-world rows per split", show_lines=False)
    table.add_column("kind")
    table.add_column("category")
    for split in SPLITS:
        table.add_column(split, justify="right")
    totals = dict.fromkeys(SPLITS, 0)
    for (kind, category), counts in count_rows(dataset).items():
        table.add_row(kind, category, *(str(counts[split]) for split in SPLITS))
        for split in SPLITS:
            totals[split] += counts[split]
    table.add_row("[bold]total[/]", "", *(f"[bold]{totals[split]}[/]" for split in SPLITS))
    stdout.print(table)
    manifest = read_manifest(out)
    stdout.print(f"wrote {out} in {elapsed:.1f}s (content hash {manifest['content_hash']}, "
                 f"config hash {manifest['config_hash']}); load it with "
                 "safelatent.data.microworld.load_microworld or datasets.load_from_disk('"
                 f"{out / 'data'}')", highlight=False, soft_wrap=True)


@data_app.command("inspect")
def data_inspect(
    path: Annotated[str, typer.Argument(help="A file, a micro-world directory, an s3:// URI or a hub id.")],
    format: Annotated[Optional[str], typer.Option("--format", "-f", help="Format name; detected when omitted.")
                      ] = None,
    split: Annotated[str, typer.Option(help="Split to read, for hub datasets.")] = "train",
) -> None:
    """Print a one-line JSON summary of a benchmark file: format, records, counts by kind and category."""
    from safelatent.data import benchmarks
    from safelatent.data.microworld import MANIFEST

    try:
        if format in (None, "microworld") and (Path(path) / MANIFEST).is_file():
            summary = _microworld_summary(Path(path))
        else:
            if format is not None and format not in benchmarks.FORMATS:
                known = ", ".join(sorted([*benchmarks.FORMATS, "microworld"]))
                raise SafelatentError(f"unknown format {format!r}; known formats: {known}")
            name = format or benchmarks.detect_format(path)
            records = benchmarks.load_benchmark(path, name, split=split)
            summary = benchmarks.summarize(records, name)
    except (SafelatentError, FileNotFoundError, ValueError) as error:
        raise _fail(error, 1) from None
    sys.stdout.write(json.dumps(summary) + "\n")


ForceOption = Annotated[bool, typer.Option("--force", help="Rebuild even when a cached build exists.")]


def _rate(entry: Optional[float], n: Optional[int]) -> str:
    return "n/a" if entry is None else f"{entry:.1%} (n={n})"


@base_model_app.command("build")
def base_model_build(config: ConfigOption = None, overrides: Overrides = None, force: ForceOption = False) -> None:
    """Train a BPE chat tokenizer and SFT a small causal LM on the micro-world (cached by config hash).

    Default config: pipelines/configs/base_model.yaml (Llama style); base_model_gpt2.yaml gives a GPT-2-style
    variant and base_model_tiny.yaml a tiny one for smoke tests. Ends with its held-out test-split figures.
    """
    from safelatent.models.base_model import BaseModelConfig, build_base_model, read_build_report

    settings = _load_settings(BaseModelConfig, config or default_config("base_model.yaml"), overrides)
    try:
        directory = build_base_model(settings, force=force, progress=True)
    except (SafelatentError, OSError, ValueError) as error:
        raise _fail(error, 1) from None
    report = read_build_report(directory)
    counts = report.get("eval_n", {})
    table = Table(title=f"base model {directory.name} on the held-out test split")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("benign task accuracy", _rate(report.get("benign_accuracy"), counts.get("benign")))
    table.add_row("harmful compliance", _rate(report.get("harmful_compliance_rate"), counts.get("harmful")))
    table.add_row("borderline refusal", _rate(report.get("borderline_refusal_rate"), counts.get("borderline")))
    table.add_row("parameters", f"{report.get('parameters', 0):,}")
    table.add_row("build seconds", f"{report.get('build_seconds', 0):.0f}")
    stdout.print(table)
    stdout.print(f"model: {directory}", highlight=False)


@judges_app.command("build")
def judges_build(config: ConfigOption = None, overrides: Overrides = None, force: ForceOption = False) -> None:
    """Train the reward model and the harm classifier, and print their held-out accuracies (cached).

    Default config: pipelines/configs/judges.yaml.
    """
    from safelatent.judges.build import JudgesConfig, build_judges, read_report

    settings = _load_settings(JudgesConfig, config or default_config("judges.yaml"), overrides)
    try:
        directory = build_judges(settings, force=force, progress=True)
    except (SafelatentError, OSError, ValueError) as error:
        raise _fail(error, 1) from None
    report = read_report(directory)
    table = Table(title=f"judges {directory.name} on held-out test data")
    table.add_column("judge")
    table.add_column("measure")
    table.add_column("value", justify="right")
    pairwise = report["reward_model"]["test_pairwise_accuracy"]
    accuracy = report["harm_classifier"]["test_accuracy"]
    table.add_row("reward model", "pairwise accuracy", _rate(pairwise["value"], pairwise["n"]))
    table.add_row("harm classifier", "accuracy", _rate(accuracy["value"], accuracy["n"]))
    stdout.print(table)
    stdout.print(f"judges: {directory}", highlight=False)


AddressOption = Annotated[Optional[str], typer.Option(
    "--address", help="Ray cluster: HOST:PORT, ray://HOST:10001 or auto; default: an embedded local cluster.")]
ResumeOption = Annotated[bool, typer.Option("--resume", help="Continue from the run's latest checkpoint.")]


@train_app.command("rlaif-ppo")
def train_rlaif_ppo(config: ConfigOption = None, overrides: Overrides = None, address: AddressOption = None,
                    resume: ResumeOption = False) -> None:
    """PPO from AI feedback: rollout, reward, reference and learner actors on Ray; MLflow; checkpoints.

    Default config: pipelines/configs/rlaif_ppo.yaml. Ends with a summary of where the model, the evaluation
    report and the MLflow run are.
    """
    from pipelines.rlaif_ppo import RLAIFPPOConfig, run

    _train(RLAIFPPOConfig, run, config or default_config("rlaif_ppo.yaml"), overrides, address, resume)


@train_app.command("sls-rlaif")
def train_sls_rlaif(config: ConfigOption = None, overrides: Overrides = None, address: AddressOption = None,
                    resume: ResumeOption = False) -> None:
    """Safe Latent Space: fit the safe-projection head, PPO from AI feedback with it, evaluate, register.

    Default config: pipelines/configs/sls_rlaif.yaml. The model it writes carries its head, so
    `safelatent eval --model DIR` and serving run it as trained.
    """
    from pipelines.sls_rlaif import SLSRLAIFConfig, run

    _train(SLSRLAIFConfig, run, config or default_config("sls_rlaif.yaml"), overrides, address, resume)


@train_app.command("es2")
def train_es2(config: ConfigOption = None, overrides: Overrides = None, address: AddressOption = None,
              resume: ResumeOption = False) -> None:
    """ES2: push harmful and harmless prompt states apart (KL-anchored, LoRA) on Ray Train; attack-evaluated.

    Default config: pipelines/configs/es2.yaml. It hardens an aligned model (model=DIR): the report compares the
    starting and the trained model under embedding-level attacks and on the held-out split.
    """
    from pipelines.es2 import ES2Config, run

    _train(ES2Config, run, config or default_config("es2.yaml"), overrides, address, resume)


@train_app.command("safesteer")
def train_safesteer(config: ConfigOption = None, overrides: Overrides = None, address: AddressOption = None,
                    resume: ResumeOption = False) -> None:
    """SafeSteer: distil a refusal-steered teacher on a sparse set of safety tokens (LoRA) on Ray Train.

    Default config: pipelines/configs/safesteer.yaml. Writes a plain model directory that `safelatent eval` and
    serving accept.
    """
    from pipelines.safesteer import SafeSteerConfig, run

    _train(SafeSteerConfig, run, config or default_config("safesteer.yaml"), overrides, address, resume)


@train_app.command("direction-transfer")
def train_direction_transfer(
    config: ConfigOption = None,
    overrides: Overrides = None,
    source: Annotated[Optional[str], typer.Option(help="Source model (directory, hub id or s3://); default: the "
                                                       "config's (the Llama-style micro-world base model).")] = None,
    target: Annotated[Optional[str], typer.Option(help="Target model; default: the config's (the GPT-2-style "
                                                       "micro-world base model).")] = None,
    address: AddressOption = None,
) -> None:
    """Direction transfer: a safety direction learned in --source, carried to --target with benign data only.

    Default config: pipelines/configs/direction_transfer.yaml. The model it writes is a copy of the target that
    carries the transferred steering, so `safelatent eval --model DIR` and serving run it steered.
    """
    from pipelines.direction import DirectionTransferConfig, run

    settings = _load_settings(DirectionTransferConfig, config or default_config("direction_transfer.yaml"),
                              overrides, {"address": address, "source.model": source, "target.model": target})
    try:
        result = run(settings, console=console)
    except ConfigError as error:  # found once the models are known: a layer they lack
        raise _fail(error, 2) from None
    except (SafelatentError, FileNotFoundError, OSError, ValueError) as error:
        raise _fail(error, 1) from None
    stdout.print(f"model: {result.model_dir}", highlight=False)


def _train(config_class, run, config_path: Path, overrides: list[str] | None, address: str | None,
           resume: bool) -> None:
    """Load a pipeline's config (with overrides and --address), run it, and print where the model went."""
    settings = _load_settings(config_class, config_path, overrides, {"address": address})
    try:
        result = run(settings, resume=resume, console=console)
    except (SafelatentError, FileNotFoundError, OSError, ValueError) as error:
        raise _fail(error, 1) from None
    stdout.print(f"model: {result.model_dir}", highlight=False)


@app.command("serve")
def serve_model(
    model: Annotated[Optional[str], typer.Option(help="Directory, s3:// prefix, hub id, or models:/NAME@ALIAS.")
                     ] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="A Serve config file; default: "
                                                                          "pipelines/configs/serve.yaml.")] = None,
    overrides: Overrides = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    address: AddressOption = None,
    query: Annotated[Optional[str], typer.Option(
        help="Ask this once over HTTP, print the request and the answer, then stop the server.")] = None,
) -> None:
    """Serve a model behind an OpenAI-compatible API with guardrails (Ray Serve), until Ctrl-C.

    The settings are the args of the Serve config file (the same file `serve run` and a RayService use);
    --model and key.sub=value overrides change them. API keys come from $SAFELATENT_API_KEYS.
    Example: safelatent serve --model runs/sls_rlaif/sls-rlaif/model guardrails.harm_judge=microworld-oracle
    """
    from safelatent.config import apply_overrides, validate_config
    from safelatent.serving.settings import ServeConfig

    config_path = config or default_config("serve.yaml")
    try:
        from pipelines.deploy import serve_file_args

        raw = serve_file_args(config_path)
        if model is not None:
            raw["model"] = model
        origins = apply_overrides(raw, overrides or [])
        settings = validate_config(ServeConfig, raw, str(config_path), origins)
        from safelatent.serving.access import key_digests

        key_digests(settings.api_keys)
    except ConfigError as error:
        raise _fail(error, 2) from None
    from pipelines.deploy import run_server

    try:
        run_server(settings, host=host, port=port, address=address, query=query, console=console, out=stdout)
    except (SafelatentError, FileNotFoundError, OSError, ValueError, TimeoutError) as error:
        raise _fail(error, 1) from None


JobsAddress = Annotated[str, typer.Option("--address", envvar="RAY_API_SERVER_ADDRESS",
                                          help="The cluster's dashboard, e.g. http://HEAD:8265.")]


@app.command("submit")
def submit_job(
    pipeline: Annotated[str, typer.Argument(help="rlaif-ppo, sls-rlaif, es2, safesteer, direction-transfer or tune.")],
    address: JobsAddress,
    config: ConfigOption = None,
    overrides: Overrides = None,
    env: Annotated[Optional[list[str]], typer.Option("--env", help="KEY=VALUE for the job's environment "
                                                                  "(repeatable; no secrets).")] = None,
    working_dir: Annotated[bool, typer.Option(help="Upload this project folder as the job's working_dir; "
                                                   "--no-working-dir when the cluster's image has the code.")] = True,
    submission_id: Annotated[Optional[str], typer.Option(help="Job id; default safelatent-PIPELINE-NAME-TIME.")
                             ] = None,
    wait: Annotated[bool, typer.Option(help="Stream the logs and exit with the job's result.")] = True,
    timeout: Annotated[Optional[float], typer.Option(help="Stop following after this many seconds (the job "
                                                          "goes on).")] = None,
    entrypoint_num_gpus: Annotated[float, typer.Option(help="GPUs reserved for the job's driver.")] = 0.0,
) -> None:
    """Run a pipeline as a job on a Ray cluster: the config is checked here first, then submitted.

    Example: safelatent submit rlaif-ppo -c pipelines/configs/rlaif_ppo.yaml --address http://head:8265 steps=10
    """
    from cluster import submit as jobs

    if pipeline not in jobs.PIPELINES:
        raise _fail(ConfigError(f"unknown pipeline {pipeline!r}; one of {', '.join(jobs.PIPELINES)}"), 2)
    try:
        submission = jobs.Submission(
            pipeline=pipeline, config=config or default_config(jobs.PIPELINES[pipeline][1]),
            overrides=overrides or [], address=address, working_dir=Path(".") if working_dir else None,
            env=jobs.parse_env(env or []), submission_id=submission_id, entrypoint_num_gpus=entrypoint_num_gpus)
        jobs.check(submission)
    except ConfigError as error:
        raise _fail(error, 2) from None
    try:
        job_id = jobs.submit(submission)
        console.print(f"submitted job {job_id} to {address}")
        stdout.print(job_id, highlight=False)
        if not wait:
            return
        status = jobs.follow(address, job_id, lambda lines: stdout.out(lines, end="", highlight=False), timeout)
    except (SafelatentError, RuntimeError, ConnectionError) as error:
        raise _fail(error, 1) from None
    console.print(f"job {job_id}: {status}")
    if status != "SUCCEEDED":
        raise typer.Exit(1)


@jobs_app.command("list")
def jobs_list(address: JobsAddress) -> None:
    """The cluster's jobs, oldest first."""
    from cluster import submit as jobs

    table = Table()
    for column in ("submission id", "status", "pipeline", "started", "entrypoint"):
        table.add_column(column, overflow="fold")
    try:
        rows = jobs.list_jobs(address)
    except (SafelatentError, RuntimeError, ConnectionError) as error:
        raise _fail(error, 1) from None
    for row in rows:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["start_time"] / 1000)) if row["start_time"] else ""
        table.add_row(str(row["submission_id"]), row["status"], row["pipeline"], started, row["entrypoint"])
    stdout.print(table)


@jobs_app.command("logs")
def jobs_logs(job_id: Annotated[str, typer.Argument(help="Submission id.")], address: JobsAddress,
              follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming until the job ends.")
                                ] = False) -> None:
    """A job's logs (all of them so far, or followed to its end)."""
    from cluster import submit as jobs

    try:
        if follow:
            status = jobs.follow(address, job_id, lambda lines: stdout.out(lines, end="", highlight=False))
            console.print(f"job {job_id}: {status}")
        else:
            stdout.out(jobs.logs(address, job_id), end="", highlight=False)
    except (SafelatentError, RuntimeError, ConnectionError) as error:
        raise _fail(error, 1) from None


@jobs_app.command("stop")
def jobs_stop(job_id: Annotated[str, typer.Argument(help="Submission id.")], address: JobsAddress) -> None:
    """Ask the cluster to stop a job."""
    from cluster import submit as jobs

    try:
        stopped = jobs.stop(address, job_id)
    except (SafelatentError, RuntimeError, ConnectionError) as error:
        raise _fail(error, 1) from None
    stdout.print(f"job {job_id}: {'stop requested' if stopped else 'already ended'}", highlight=False)


@app.command("tune")
def tune_sweep(config: ConfigOption = None, overrides: Overrides = None, address: AddressOption = None,
               resume: Annotated[bool, typer.Option("--resume", help="Continue the sweep of this name through "
                                                                     "Tune restore.")] = False) -> None:
    """Search a pipeline's hyperparameters with Ray Tune, tracked in MLflow; register the best trial's model.

    Default config: pipelines/configs/tune_sls.yaml. The best model gets the alias `champion` only if it passes
    the release gate (gate:) on final_evaluation.data; otherwise the sweep says which threshold failed.
    """
    from pipelines.tune import TuneConfig, run

    settings = _load_settings(TuneConfig, config or default_config("tune_sls.yaml"), overrides, {"address": address})
    try:
        result = run(settings, resume=resume, console=console)
    except (SafelatentError, FileNotFoundError, OSError, ValueError) as error:
        raise _fail(error, 1) from None
    if result.best is None:
        raise _fail(SafelatentError("no trial finished; see the table above for why"), 1)
    stdout.print(f"best: trial {result.best.trial}, score {result.best.score:.4f}; model {result.best.model_dir}"
                 + (f"; registered {result.registered}" + (" @champion" if result.champion else "")
                    if result.registered else ""), highlight=False)


@app.command("eval")
def evaluate(
    model: Annotated[Optional[str], typer.Option(help="Model to evaluate: a directory, hub id or s3:// prefix.")
                     ] = None,
    against: Annotated[Optional[str], typer.Option(help="Reference model for the helpfulness win-rate.")] = None,
    data: Annotated[Optional[str], typer.Option(
        help="microworld[:SPLIT] | microworld:DIR[:SPLIT] | bench:LOCATION[:FORMAT]  (default microworld:test)")
                    ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory (default runs/eval).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="At most this many prompts per kind, for quick runs.")
                     ] = None,
    config: ConfigOption = None,
    overrides: Overrides = None,
) -> None:
    """Evaluate a model: harmlessness, attack success per jailbreak, over-refusal, task accuracy, helpfulness.

    Writes OUT/results.json, OUT/responses.jsonl and OUT/report.md (+ .html and plots).
    Example: safelatent eval --model runs/base_models/microworld-llama-XXXX --out runs/eval/base --limit 100
    """
    from safelatent.evaluation.harness import EvalConfig, run_eval

    options = {"model": model, "against": against, "data": data, "out": str(out) if out else None, "limit": limit}
    settings = _load_settings(EvalConfig, config, overrides, options)
    try:
        directory = run_eval(settings, console=console)
    except (SafelatentError, FileNotFoundError, OSError, ValueError) as error:
        raise _fail(error, 1) from None
    stdout.print(f"results: {directory / 'results.json'}  report: {directory / 'report.md'}", highlight=False)


@app.command("report")
def report(
    results: Annotated[list[Path], typer.Argument(help="Evaluation output directories (each with results.json).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the comparison report.")] = Path(
        "runs/report"),
) -> None:
    """Compare several evaluation runs in one report (table of metrics with intervals, plots)."""
    from safelatent.evaluation.report import compare_runs

    try:
        path = compare_runs(results, out)
    except (SafelatentError, FileNotFoundError, ValueError) as error:
        raise _fail(error, 1) from None
    stdout.print(f"report: {path}", highlight=False)


def _quiet_datasets() -> None:
    """Our own status line shows progress; the per-shard bars of `datasets` would only repeat it."""
    import datasets

    datasets.disable_progress_bars()


def _microworld_summary(path: Path) -> dict:
    from collections import Counter

    from safelatent.data.microworld import load_microworld

    dataset = load_microworld(path)
    kinds: Counter = Counter()
    categories: Counter = Counter()
    for split in dataset.values():
        kinds.update(split["kind"])
        categories.update(split["category"])
    return {"format": "microworld", "records": sum(kinds.values()),
            "by_kind": dict(sorted(kinds.items())), "by_category": dict(sorted(categories.items()))}


if __name__ == "__main__":
    app()
