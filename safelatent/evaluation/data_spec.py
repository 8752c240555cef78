"""What an evaluation asks: the data-spec grammar, and the prompts it names with what the judges know of them.

Grammar of a data spec (EvalConfig.data, `--data` on the command line):

    microworld[:SPLIT]         the default micro-world (MicroWorldConfig defaults, seed 0), generated in
                               memory: the rows `safelatent data build` writes when given no options
    microworld:DIR[:SPLIT]     a micro-world saved by `safelatent data build --out DIR`
    bench:LOCATION[:FORMAT]    a safety benchmark: a local file, an s3:// object or a Hugging Face dataset
                               (hf://owner/name, split train); FORMAT is one of the benchmark formats
                               (advbench, harmbench, strongreject, xstest, donotanswer, hh-rlhf,
                               instruction-json), detected from a file's columns when omitted and required
                               for hub datasets

SPLIT is test (the default), validation or train. Examples: microworld:validation, microworld:data/mw:test,
bench:harmful_behaviors.csv, bench:s3://bucket/xstest.csv:xstest, bench:hf://walledai/AdvBench:advbench.

Only prompts some metric uses are kept: micro-world kinds benign, borderline, harmful and jailbreak (pairs
are for direction estimation), benchmark kinds harmful, benign and borderline ("unknown" has no metric).
With a limit, at most that many prompts of each kind are kept, and of each wrapper style for jailbreaks
(each asr/<wrapper> is its own figure); they are drawn by a seeded shuffle and kept in the data's order.
"""

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from safelatent.errors import ConfigError
from safelatent.evaluation.metrics import wrapper_style
from safelatent.judges.oracle import PromptFacts, facts_from_row

SPLITS = ("train", "validation", "test")
DEFAULT_SPLIT = "test"
MICROWORLD = "microworld"
BENCHMARK = "bench"
MICROWORLD_KINDS = frozenset({"benign", "borderline", "harmful", "jailbreak"})
BENCHMARK_KINDS = frozenset({"benign", "borderline", "harmful"})
GRAMMAR = ("microworld[:SPLIT] (the default micro-world), microworld:DIR[:SPLIT] (a `safelatent data build` "
           "directory), or bench:LOCATION[:FORMAT] (a benchmark file, s3:// object or hf:// dataset); "
           f"SPLIT one of {', '.join(SPLITS)}")


class DataSpecError(ConfigError, ValueError):
    """A data spec does not follow the grammar (a ValueError too, so config validation reports it)."""


@dataclass(frozen=True)
class DataSpec:
    """A parsed data spec: the micro-world (default build or a directory) or a benchmark location."""

    source: Literal["microworld", "bench"]
    location: str | None = None  # micro-world directory (None: the default build) or benchmark location
    split: str = DEFAULT_SPLIT  # micro-world only
    format: str | None = None  # benchmark only; None: detected from the file

    def __str__(self) -> str:
        if self.source == MICROWORLD:
            return ":".join(part for part in (MICROWORLD, self.location, self.split) if part)
        return ":".join(part for part in (BENCHMARK, self.location, self.format) if part)


@dataclass(frozen=True)
class EvalPrompt:
    """One prompt to ask, with what the oracle knows of it (its kind, and the answer or reference reply)."""

    prompt: str
    kind: str
    category: str
    facts: PromptFacts
    wrapper: str = ""


@dataclass(frozen=True)
class EvalData:
    """The prompts of a data spec, ready to ask.

    spec: the canonical spec with defaults and the detected format filled in, as results name it.
    microworld: True when the prompts come from the micro-world, so the oracle can judge every reply.
    skipped: prompts by kind that no metric uses and that were therefore left out.
    """

    spec: str
    prompts: list[EvalPrompt]
    microworld: bool
    skipped: dict[str, int] = field(default_factory=dict)


def parse_data_spec(text: str) -> DataSpec:
    """Parse a data spec (see the module docstring), checking its syntax only; loading checks the rest."""
    text = text.strip()
    source, _, rest = text.partition(":")
    if source == MICROWORLD:
        return _parse_microworld(rest, text)
    if source == BENCHMARK:
        return _parse_benchmark(rest, text)
    raise DataSpecError(f"data spec {text!r} does not start with a known source; write {GRAMMAR}")


def _parse_microworld(rest: str, text: str) -> DataSpec:
    if not rest or rest in SPLITS:
        return DataSpec(MICROWORLD, None, rest or DEFAULT_SPLIT)
    directory, colon, last = rest.rpartition(":")
    if colon and last in SPLITS:
        if not directory:
            raise DataSpecError(f"data spec {text!r} has an empty micro-world directory; write {GRAMMAR}")
        return DataSpec(MICROWORLD, directory, last)
    if "/" not in last and not Path(rest).expanduser().exists():
        # A bare word is far more often a mistyped split than a directory that is missing.
        raise DataSpecError(f"data spec {text!r}: {last!r} is neither a split ({', '.join(SPLITS)}) nor an "
                            "existing micro-world directory; write " + GRAMMAR)
    return DataSpec(MICROWORLD, rest, DEFAULT_SPLIT)


def _parse_benchmark(rest: str, text: str) -> DataSpec:
    from safelatent.data.benchmarks import FORMATS

    location, colon, last = rest.rpartition(":")
    if colon and last in FORMATS:
        if not location:
            raise DataSpecError(f"data spec {text!r} names a format but no benchmark location; write {GRAMMAR}")
        return DataSpec(BENCHMARK, location, format=last)
    # "s3://bucket/key" and "hf://owner/name" end in a part with "/"; a last part without one is a format.
    if colon and "/" not in last and "." not in last and not Path(rest).expanduser().exists():
        raise DataSpecError(f"data spec {text!r}: {last!r} is not a benchmark format; formats are "
                            f"{', '.join(FORMATS)} (leave it out to detect a file's format)")
    if not rest:
        raise DataSpecError(f"data spec {text!r} names no benchmark location; write {GRAMMAR}")
    return DataSpec(BENCHMARK, rest, format=None)


def load_eval_data(spec: DataSpec | str, limit: int | None = None, seed: int = 0) -> EvalData:
    """The prompts of a data spec that some metric uses, at most `limit` per kind (and jailbreak style)."""
    spec = parse_data_spec(spec) if isinstance(spec, str) else spec
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 prompt per kind (or None for all), got {limit}")
    if spec.source == MICROWORLD:
        everything, canonical = _microworld_prompts(spec), str(spec)
        usable = MICROWORLD_KINDS
    else:
        everything, canonical = _benchmark_prompts(spec)
        usable = BENCHMARK_KINDS
    kept = [prompt for prompt in everything if prompt.kind in usable]
    skipped = dict(sorted(Counter(prompt.kind for prompt in everything if prompt.kind not in usable).items()))
    if not kept:
        found = ", ".join(f"{kind} x{count}" for kind, count in skipped.items()) or "none"
        raise ConfigError(f"data {canonical} has no prompts any metric uses (kinds found: {found}); metrics need "
                          f"kinds {', '.join(sorted(usable))}. For hh-rlhf files, put 'harmless' or 'helpful' in "
                          "the file or folder name so the kind can be told")
    if limit is not None:
        kept = _limited(kept, limit, seed)
    return EvalData(spec=canonical, prompts=kept, microworld=spec.source == MICROWORLD, skipped=skipped)


def _microworld_prompts(spec: DataSpec) -> list[EvalPrompt]:
    import datasets

    from safelatent.data.microworld import MicroWorldConfig, build_microworld, load_microworld

    datasets.disable_progress_bars()
    if spec.location is None:
        world = build_microworld(MicroWorldConfig())
    else:
        try:
            world = load_microworld(spec.location)
        except FileNotFoundError as error:
            raise ConfigError(f"data {spec}: {error}") from None
    if spec.split not in world:
        raise ConfigError(f"data {spec}: the micro-world has no split {spec.split!r}; it has {', '.join(world)}")
    return [EvalPrompt(prompt=row["prompt"], kind=row["kind"], category=row["category"],
                       facts=facts_from_row(row), wrapper=row["wrapper"]) for row in world[spec.split].to_list()]


def _benchmark_prompts(spec: DataSpec) -> tuple[list[EvalPrompt], str]:
    from safelatent.data.benchmarks import load_benchmark

    try:
        records = load_benchmark(spec.location, spec.format)
    except FileNotFoundError as error:
        raise ConfigError(f"data {spec}: {error}") from None
    except ConfigError as error:
        raise ConfigError(f"data {spec}: {error} (in a data spec the format goes last: "
                          "bench:LOCATION:FORMAT)") from None
    # Records name their format first ("advbench:/data/file.csv"), so a detected format is known here.
    detected = records[0].source.split(":", 1)[0] if records else spec.format
    canonical = str(DataSpec(BENCHMARK, spec.location, format=spec.format or detected))
    return [EvalPrompt(prompt=record.prompt, kind=record.kind, category=record.category,
                       facts=PromptFacts(kind=record.kind)) for record in records], canonical


def draw_prompts(prompts: list[EvalPrompt], count: int, seed: int) -> list[EvalPrompt]:
    """At most `count` of the prompts, drawn by a seeded shuffle and kept in their order. A split lists its
    prompts category by category, so its first `count` would cover only the first few categories."""
    if count < 1:
        raise ValueError(f"count must be at least 1 prompt, got {count}")
    indices = list(range(len(prompts)))
    random.Random(seed).shuffle(indices)
    return [prompts[index] for index in sorted(indices[:count])]


def _limited(prompts: list[EvalPrompt], limit: int, seed: int) -> list[EvalPrompt]:
    groups: dict[str, list[int]] = {}
    for index, prompt in enumerate(prompts):
        key = f"jailbreak/{wrapper_style(prompt.wrapper)}" if prompt.kind == "jailbreak" else prompt.kind
        groups.setdefault(key, []).append(index)
    rng = random.Random(seed)
    chosen: list[int] = []
    for key in sorted(groups):
        indices = groups[key]
        rng.shuffle(indices)
        chosen.extend(indices[:limit])
    return [prompts[index] for index in sorted(chosen)]
