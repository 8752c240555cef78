"""Read public safety benchmarks (AdvBench, HarmBench, XSTest, ...) into PromptRecords.

Every reader works the same way: open rows (field dicts with the line each starts on) from a CSV,
JSON or JSON Lines file, or from a Hugging Face dataset, then turn each row into a PromptRecord
with that format's row parser. Malformed input raises DataFormatError naming the file, the line
and the problem.
"""

import csv
import gzip
import itertools
import json
import re
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from safelatent.data.records import KINDS, PromptRecord
from safelatent.errors import ConfigError, DataFormatError, SafelatentError
from safelatent.storage import download, parse_s3_uri


class _RowProblem(Exception):
    """A row cannot be parsed; whoever knows the file and the line turns it into a DataFormatError."""


class _Parsed(NamedTuple):
    prompt: str
    kind: str
    category: str
    extra: dict[str, Any]


_Row = Mapping[str, Any]
_NumberedRows = Iterable[tuple[int, _Row]]


# ---------------------------------------------------------------------------------------------
# Row parsers: one per format. Where popular Hugging Face mirrors renamed a column (e.g. AdvBench's
# "goal" became "prompt"), the mirror's name is accepted as an alternative to the original.


def _advbench_row(fields: _Row) -> _Parsed:
    column, prompt = _prompt(fields, ("goal", "prompt"))
    return _Parsed(prompt, "harmful", "", _rest(fields, column))


def _harmbench_row(fields: _Row) -> _Parsed:
    column, prompt = _prompt(fields, ("Behavior", "prompt"))
    category_column, category = _text(fields, ("SemanticCategory", "category"))
    context_column, context = _text(fields, ("ContextString", "context"))
    extra = _rest(fields, column, category_column, context_column)
    if context.strip():
        extra["context"] = context
    return _Parsed(prompt, "harmful", category, extra)


def _strongreject_row(fields: _Row) -> _Parsed:
    column, prompt = _prompt(fields, ("forbidden_prompt", "prompt"))
    category_column, category = _text(fields, ("category",))
    extra = _rest(fields, column, category_column, "source")
    if "source" in fields:
        extra["original_source"] = fields["source"]
    return _Parsed(prompt, "harmful", category, extra)


# XSTest labels prompts that only look unsafe "safe": exactly what over-refusal checks need.
_XSTEST_KINDS = {"safe": "borderline", "unsafe": "harmful"}


def _xstest_row(fields: _Row) -> _Parsed:
    column, prompt = _prompt(fields, ("prompt",))
    if "label" not in fields:
        raise _RowProblem(f"missing field 'label'; found fields: {_names(fields)}")
    label = fields["label"]
    kind = _XSTEST_KINDS.get(label.strip().lower()) if isinstance(label, str) else None
    if kind is None:
        allowed = ", ".join(repr(name) for name in _XSTEST_KINDS)
        raise _RowProblem(f"label {label!r} is not an XSTest label; allowed values: {allowed}")
    category_column, category = _text(fields, ("type",))
    return _Parsed(prompt, kind, category, _rest(fields, column, "label", category_column))


def _donotanswer_row(fields: _Row) -> _Parsed:
    column, prompt = _prompt(fields, ("question",))
    category_column, category = _text(fields, ("types_of_harm",))
    if not category.strip():
        category_column, category = _text(fields, ("risk_area",))
    return _Parsed(prompt, "harmful", category, _rest(fields, column, category_column))


def _hh_rlhf_row(fields: _Row) -> _Parsed:
    chosen_turns = _dialogue(fields, "chosen")
    rejected_turns = _dialogue(fields, "rejected")
    prompt_index, chosen = _final_exchange(chosen_turns, "chosen")
    _, rejected = _final_exchange(rejected_turns, "rejected")
    prompt = chosen_turns[prompt_index]["content"]
    if not prompt:
        raise _RowProblem("empty prompt: the last Human turn of 'chosen' has no text")
    extra = _rest(fields, "chosen", "rejected")
    extra.update(
        context=chosen_turns[:prompt_index],
        chosen=chosen,
        rejected=rejected,
        chosen_turns=chosen_turns,
        rejected_turns=rejected_turns,
    )
    return _Parsed(prompt, "unknown", "", extra)


def _instruction_row(fields: _Row) -> _Parsed:
    column, prompt = _prompt(fields, ("instruction",))
    category_column, category = _text(fields, ("category",))
    return _Parsed(prompt, "harmful", category, _rest(fields, column, category_column))


def _prompt(fields: _Row, names: tuple[str, ...]) -> tuple[str, str]:
    """The field holding the prompt, and its text; a missing, empty or non-text prompt is a problem."""
    column = _first_present(fields, names)
    if column is None:
        raise _RowProblem(f"missing field {_alternatives(names)}; found fields: {_names(fields)}")
    value = fields[column]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _RowProblem(f"empty prompt in field {column!r}")
    if not isinstance(value, str):
        raise _RowProblem(
            f"field {column!r} should hold the prompt text, found {type(value).__name__} {value!r}"
        )
    return column, value


def _text(fields: _Row, names: tuple[str, ...]) -> tuple[str | None, str]:
    """The first of names present and its value as text; "" when none is present or the value is empty."""
    column = _first_present(fields, names)
    value = fields[column] if column is not None else None
    if value is None:
        return column, ""
    return column, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _first_present(fields: _Row, names: tuple[str, ...]) -> str | None:
    return next((name for name in names if name in fields), None)


def _rest(fields: _Row, *used: str | None) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if name not in used}


# hh-rlhf dialogues are "\n\nHuman: ...\n\nAssistant: ..." strings; some copies drop the first "\n\n".
_TURN_MARKER = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def _dialogue(fields: _Row, name: str) -> list[dict[str, str]]:
    if name not in fields:
        raise _RowProblem(f"missing field {name!r}; found fields: {_names(fields)}")
    text = fields[name]
    if not isinstance(text, str):
        raise _RowProblem(f"field {name!r} should hold the dialogue text, found {type(text).__name__}")
    preamble, *pieces = _TURN_MARKER.split(text)
    turns = [
        {"role": _ROLES[marker], "content": content.strip()}
        for marker, content in zip(pieces[::2], pieces[1::2], strict=True)
    ]
    if not any(turn["role"] == "user" for turn in turns):
        raise _RowProblem(f"field {name!r} has no '\\n\\nHuman:' turn: {_preview(text)}")
    if preamble.strip():
        raise _RowProblem(f"field {name!r} has text before its first 'Human:' turn: {_preview(preamble)}")
    return turns


def _final_exchange(turns: list[dict[str, str]], name: str) -> tuple[int, str]:
    """Index of the last user turn before the final assistant turn, and that assistant turn's text."""
    ends_with_answer = turns[-1]["role"] == "assistant"
    asked = turns[:-1] if ends_with_answer else turns
    user_turns = [index for index, turn in enumerate(asked) if turn["role"] == "user"]
    if not user_turns:
        raise _RowProblem(f"field {name!r} has no Human turn before its final Assistant turn")
    return user_turns[-1], turns[-1]["content"] if ends_with_answer else ""


def _preview(text: str) -> str:
    return repr(text[:60] + ("..." if len(text) > 60 else ""))


def _names(fields: Iterable[str]) -> str:
    return ", ".join(repr(name) for name in fields) or "(none)"


def _alternatives(names: tuple[str, ...]) -> str:
    first, *others = names
    return repr(first) + "".join(f" (or {other!r})" for other in others)


# ---------------------------------------------------------------------------------------------
# The formats: how to parse a row, which fields must be there, and which columns give a file away.


@dataclass(frozen=True)
class _Format:
    name: str
    parse_row: Callable[[_Row], _Parsed]
    required: tuple[tuple[str, ...], ...]  # each entry: alternative names, one of which must be present
    signatures: tuple[frozenset[str], ...]  # detect_format picks this format when one set is all present

    def describe(self) -> str:
        return f"{self.name} ({' + '.join(sorted(self.signatures[0]))})"


def _format(name, parse_row, required, *signatures) -> _Format:
    return _Format(name, parse_row, required, tuple(frozenset(columns) for columns in signatures))


_FORMAT_SPECS = (
    _format("advbench", _advbench_row, (("goal", "prompt"),), {"goal", "target"}),
    _format("harmbench", _harmbench_row, (("Behavior", "prompt"),), {"Behavior"}),
    _format("strongreject", _strongreject_row, (("forbidden_prompt", "prompt"),), {"forbidden_prompt"}),
    _format("xstest", _xstest_row, (("prompt",), ("label",)), {"prompt", "type", "label"}),
    _format(
        "donotanswer",
        _donotanswer_row,
        (("question",),),
        {"question", "risk_area"},
        {"question", "types_of_harm"},
    ),
    _format("hh-rlhf", _hh_rlhf_row, (("chosen",), ("rejected",)), {"chosen", "rejected"}),
    _format("instruction-json", _instruction_row, (("instruction",),), {"instruction"}),
)
_SPECS_BY_NAME = {spec.name: spec for spec in _FORMAT_SPECS}


def _spec(name: str) -> _Format:
    if name not in _SPECS_BY_NAME:
        raise ConfigError(f"unknown benchmark format {name!r}; known formats: {', '.join(_SPECS_BY_NAME)}")
    return _SPECS_BY_NAME[name]


def _check_kind(kind: str | None) -> None:
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"kind {kind!r} is not one of {', '.join(KINDS)}")


def _check_columns(spec: _Format, columns: list[str], where: str, line: int | None) -> None:
    missing = [names for names in spec.required if not any(name in columns for name in names)]
    if missing:
        needed = ", ".join(_alternatives(names) for names in spec.required)
        raise DataFormatError(
            where,
            f"missing required column {', '.join(_alternatives(names) for names in missing)}; "
            f"found columns: {_names(columns)}; the {spec.name} format needs: {needed}",
            line=line,
        )


# ---------------------------------------------------------------------------------------------
# Opening rows from files.


def _text_lines(path: Path, label: str) -> Iterator[str]:
    """The file's lines as text, line endings kept, a UTF-8 byte-order mark dropped; .gz is decompressed.

    Bytes are decoded line by line so that bytes which are not UTF-8 can be reported with their line.
    """
    compressed = path.name.lower().endswith(".gz")
    offset = 0
    try:
        with gzip.open(path, "rb") if compressed else path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    where = "of the decompressed text " if compressed else ""
                    raise DataFormatError(
                        label,
                        f"not UTF-8 text: byte 0x{raw[error.start]:02x} at byte offset "
                        f"{offset + error.start} {where}cannot be decoded; save the file as UTF-8",
                        line=number,
                    ) from None
                offset += len(raw)
                yield text.removeprefix("\ufeff") if number == 1 else text
    except (OSError, EOFError, zlib.error) as error:
        if not compressed:
            raise
        raise DataFormatError(label, f"cannot decompress the gzip file: {error}") from None


def _file_rows(path: Path, label: str, spec: _Format | None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a CSV, JSON or JSON Lines file, with the line each starts on.

    spec, when given, is the format whose required columns a CSV header must have.
    """
    if not path.exists():
        raise FileNotFoundError(f"benchmark file {label} does not exist")
    if path.is_dir():
        raise DataFormatError(label, "is a directory; point at one benchmark file inside it")
    if path.stat().st_size == 0:
        raise DataFormatError(label, "file is empty (0 bytes)")
    container = _container(path, label)
    if container == "csv":
        return _csv_rows(path, label, spec)
    if container == "jsonl":
        return _jsonl_rows(_text_lines(path, label), label)
    return _json_rows(path, label)


def _container(path: Path, label: str) -> str:
    name = path.name.lower().removesuffix(".gz")
    for extension in ("csv", "jsonl", "json"):
        if name.endswith("." + extension):
            return extension
    # Unknown extension: JSON starts with a bracket or brace; anything else is tried as CSV.
    lines = _text_lines(path, label)
    try:
        first = next((line.lstrip() for line in lines if line.strip()), "")
    finally:
        lines.close()
    return "json" if first[:1] in ("[", "{") else "csv"


_LARGEST_CSV_FIELD = 1 << 30


def _csv_rows(path: Path, label: str, spec: _Format | None) -> Iterator[tuple[int, dict[str, str]]]:
    # Benchmarks such as HarmBench carry whole documents in one field, past csv's default 128 KiB limit.
    csv.field_size_limit(max(csv.field_size_limit(), _LARGEST_CSV_FIELD))
    reader = csv.reader(_text_lines(path, label))
    header: list[str] | None = None
    header_line = 0
    previous_end = 0
    rows = 0
    try:
        for cells in reader:
            # reader.line_num counts physical lines read so far; a quoted field may span several.
            start, previous_end = previous_end + 1, reader.line_num
            if not cells:
                continue
            if header is None:
                header, header_line = [cell.strip() for cell in cells], start
                _check_header(header, spec, label, start)
                continue
            if len(cells) != len(header):
                raise DataFormatError(
                    label,
                    f"row has {len(cells)} fields but the header (line {header_line}) has {len(header)} "
                    "columns; check this row's commas and quotes",
                    line=start,
                )
            rows += 1
            yield start, dict(zip(header, cells, strict=True))
    except csv.Error as error:
        raise DataFormatError(label, f"not valid CSV: {error}", line=reader.line_num) from None
    if header is None:
        raise DataFormatError(label, "file has no header and no rows (only blank lines)")
    if rows == 0:
        raise DataFormatError(label, f"file has a header (line {header_line}) but no data rows")


def _check_header(header: list[str], spec: _Format | None, label: str, line: int) -> None:
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataFormatError(
            label, f"header repeats column {_names(repeated)}; column names must be unique", line
        )
    if spec is not None:
        _check_columns(spec, header, label, line)


def _jsonl_rows(lines: Iterable[str], label: str) -> Iterator[tuple[int, dict[str, Any]]]:
    rows = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataFormatError(
                label, f"not valid JSON: {error.msg} (column {error.colno})", line=number
            ) from None
        rows += 1
        yield number, _json_object(value, label, number)
    if rows == 0:
        raise DataFormatError(label, "file holds no records (only blank lines)")


_SPACE = re.compile(r"[ \t\r\n]*")


def _json_rows(path: Path, label: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Objects of a JSON list, with the line each starts on; a file of one object per line is JSON Lines."""
    text = "".join(_text_lines(path, label))
    start = _SPACE.match(text).end()
    if start == len(text):
        raise DataFormatError(label, "file holds only whitespace, no records")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data" and text[start] == "{":
            yield from _jsonl_rows(text.split("\n"), label)
            return
        raise DataFormatError(
            label, f"not valid JSON: {error.msg} (column {error.colno})", line=error.lineno
        ) from None
    if not isinstance(document, list):
        raise DataFormatError(
            label,
            f"holds a JSON {_json_type(document)}, not a list of objects; put the records in a list [...], "
            "or write one object per line (JSON Lines, .jsonl)",
        )
    if not document:
        raise DataFormatError(label, "holds an empty list, no records")
    # The document is valid, so walking it again only finds where each element starts.
    decoder = json.JSONDecoder()
    position = _SPACE.match(text, start + 1).end()
    line, counted_up_to = 1, 0
    for item in document:
        line += text.count("\n", counted_up_to, position)
        counted_up_to = position
        _, end = decoder.raw_decode(text, position)
        yield line, _json_object(item, label, line)
        after_comma = _SPACE.match(text, end).end() + 1
        position = _SPACE.match(text, after_comma).end()


def _json_object(value: Any, label: str, line: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataFormatError(
            label, f"expected a JSON object with the record's fields, found a JSON {_json_type(value)}", line
        )
    return value


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return names.get(type(value), "null")


# ---------------------------------------------------------------------------------------------
# Opening rows from a Hugging Face dataset.


def _rows_from_datasets(
    name_or_dir: str, split: str, cache_dir: str | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a Hugging Face dataset (a hub id, or a local directory of data files), numbered from 1."""
    import datasets  # slow to import, and only hub sources need it

    try:
        dataset = datasets.load_dataset(str(name_or_dir), split=split, cache_dir=cache_dir)
    except (OSError, ValueError) as error:
        raise SafelatentError(
            f"cannot load Hugging Face dataset {str(name_or_dir)!r}, split {split!r}: {error} "
            "(a local benchmark file must exist; an S3 location must start with s3://)"
        ) from error
    if len(dataset) == 0:
        raise DataFormatError(f"hf://{name_or_dir}", f"split {split!r} has no rows")
    for number, row in enumerate(dataset, start=1):
        yield number, {str(name): _jsonable(value) for name, value in row.items()}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {str(name): _jsonable(item) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return str(value)


# ---------------------------------------------------------------------------------------------
# Rows to records, and the public readers.


def _records(
    rows: _NumberedRows,
    spec: _Format,
    source: str,
    kind: str | None,
    locate: Callable[[int, str], DataFormatError],
) -> list[PromptRecord]:
    records = []
    for number, fields in rows:
        try:
            parsed = spec.parse_row(fields)
        except _RowProblem as problem:
            raise locate(number, str(problem)) from None
        records.append(
            PromptRecord(
                prompt=parsed.prompt,
                kind=kind or parsed.kind,
                category=parsed.category,
                source=source,
                extra=parsed.extra,
            )
        )
    return records


def _read_file(path: str | Path, format_name: str, kind: str | None, label: str | None) -> list[PromptRecord]:
    _check_kind(kind)
    spec = _spec(format_name)
    label = label or str(path)
    rows = _file_rows(Path(path), label, spec)
    return _records(
        rows, spec, f"{spec.name}:{label}", kind, lambda line, problem: DataFormatError(label, problem, line)
    )


def read_advbench(
    path: str | Path, *, kind: str | None = None, label: str | None = None
) -> list[PromptRecord]:
    """AdvBench harmful_behaviors.csv (goal, target): every goal is a harmful prompt, target kept in extra.

    kind, when given, overrides the kind the format implies; label names the file in sources and errors.
    """
    return _read_file(path, "advbench", kind, label)


def read_harmbench(
    path: str | Path, *, kind: str | None = None, label: str | None = None
) -> list[PromptRecord]:
    """HarmBench behaviors CSV: prompt=Behavior, category=SemanticCategory, extra["context"]=ContextString."""
    return _read_file(path, "harmbench", kind, label)


def read_strongreject(
    path: str | Path, *, kind: str | None = None, label: str | None = None
) -> list[PromptRecord]:
    """StrongREJECT CSV (category, source, forbidden_prompt); source is kept as extra["original_source"]."""
    return _read_file(path, "strongreject", kind, label)


def read_xstest(path: str | Path, *, kind: str | None = None, label: str | None = None) -> list[PromptRecord]:
    """XSTest prompts CSV: label "safe" becomes kind borderline, "unsafe" becomes harmful; category=type."""
    return _read_file(path, "xstest", kind, label)


def read_donotanswer(
    path: str | Path, *, kind: str | None = None, label: str | None = None
) -> list[PromptRecord]:
    """Do-Not-Answer CSV: prompt=question, category=types_of_harm (risk_area when that is empty)."""
    return _read_file(path, "donotanswer", kind, label)


def read_hh_rlhf(
    path: str | Path, kind: str | None = None, *, label: str | None = None
) -> list[PromptRecord]:
    """Anthropic hh-rlhf JSON Lines (.jsonl or .jsonl.gz) of {"chosen": dialogue, "rejected": dialogue}.

    The prompt is the last Human turn before the final Assistant turn; extra holds the earlier turns
    ("context"), both final answers and both full turn lists. Without kind, it is inferred from the
    location: "harmless" in it means red-team prompts (harmful), "helpful" means benign.
    """
    return _read_file(path, "hh-rlhf", kind or _hh_rlhf_kind(label or str(path)), label)


def _hh_rlhf_kind(location: str) -> str:
    # The nearest folder decides, so /projects/harmless-study/helpful-base/train.jsonl is benign.
    for part in reversed(re.split(r"[/\\]", location.lower())):
        if "harmless" in part:
            return "harmful"
        if "helpful" in part:
            return "benign"
    return "unknown"


def read_instruction_json(
    path: str | Path, kind: str | None = "harmful", *, label: str | None = None
) -> list[PromptRecord]:
    """A JSON list (or JSON Lines) of {"instruction": ..., "category": ..., ...}; other fields go to extra."""
    return _read_file(path, "instruction-json", kind, label)


FORMATS: dict[str, Callable[..., list[PromptRecord]]] = {
    "advbench": read_advbench,
    "harmbench": read_harmbench,
    "strongreject": read_strongreject,
    "xstest": read_xstest,
    "donotanswer": read_donotanswer,
    "hh-rlhf": read_hh_rlhf,
    "instruction-json": read_instruction_json,
}


def detect_format(location: str | Path, *, endpoint_url: str | None = None, label: str | None = None) -> str:
    """The name of the format a benchmark is in, judged from its CSV header or its first JSON record.

    location is a local file or an s3:// object (downloaded to a temporary directory to look at).
    Hugging Face datasets cannot be sniffed: their format must be passed to load_benchmark.
    """
    text = str(location)
    where = _where(text)
    if where == "s3":
        with _downloaded(text, endpoint_url) as local:
            return detect_format(local, label=text)
    if where == "hub":
        raise ConfigError(_HUB_NEEDS_FORMAT.format(label=f"hf://{text.removeprefix('hf://')}"))
    label = label or text
    rows = _file_rows(Path(text).expanduser(), label, None)
    try:
        _, fields = next(rows)
    finally:
        rows.close()
    columns = set(fields)
    for spec in _FORMAT_SPECS:
        if any(signature <= columns for signature in spec.signatures):
            return spec.name
    known = "; ".join(spec.describe() for spec in _FORMAT_SPECS)
    raise DataFormatError(
        label,
        f"cannot tell which benchmark format this is from its columns/keys {_names(fields)}; "
        f"known formats: {known}; pass --format NAME to say which one it is",
    )


def load_benchmark(
    location: str | Path,
    format: str | None = None,
    *,
    split: str = "train",
    endpoint_url: str | None = None,
    kind: str | None = None,
) -> list[PromptRecord]:
    """Read a benchmark from a local file, an s3://bucket/key object, or a Hugging Face dataset.

    An existing local path is read as a file (format detected when not given). An s3:// URI is
    downloaded to a temporary directory and read; records name the URI, not the temporary copy.
    Anything else ("hf://owner/name", or "owner/name" that is not a local path) is loaded with
    datasets.load_dataset(name, split=split); its rows need format, since nothing can be sniffed.
    kind, when given, is the kind of every record.
    """
    text = str(location)
    spec = _spec(format) if format is not None else None
    _check_kind(kind)
    where = _where(text)
    if where == "s3":
        with _downloaded(text, endpoint_url) as local:
            name = spec.name if spec else detect_format(local, label=text)
            return FORMATS[name](local, kind=kind, label=text)
    if where == "hub":
        return _read_hub(text.removeprefix("hf://"), spec, split, kind)
    local = Path(text).expanduser()
    name = spec.name if spec else detect_format(local)
    return FORMATS[name](local, kind=kind)


_FILE_EXTENSIONS = (".csv", ".json", ".jsonl", ".gz", ".tsv", ".txt", ".parquet")
_HUB_NEEDS_FORMAT = (
    "the format of Hugging Face dataset {label} cannot be detected; pass --format with one of: "
    + ", ".join(_SPECS_BY_NAME)
)


def _where(location: str) -> str:
    """Where a location is: "local", "s3" or "hub"; a missing path that looks like a file is an error."""
    if Path(location).expanduser().exists():
        return "local"
    if location.startswith("s3://"):
        return "s3"
    if location.startswith("hf://"):
        return "hub"
    if location.lower().endswith(_FILE_EXTENSIONS) or location.startswith(("/", ".", "~")):
        raise FileNotFoundError(
            f"benchmark file {location} does not exist (it looks like a file path, so it was not tried "
            "as a Hugging Face dataset id; prefix hub ids with hf:// to force that)"
        )
    return "hub"


@contextmanager
def _downloaded(uri: str, endpoint_url: str | None) -> Iterator[Path]:
    """One S3 object in a temporary directory that is removed afterwards."""
    _, key = parse_s3_uri(uri)
    prefix_problem = "names a prefix (a directory of objects); point at one benchmark file"
    if not key or key.endswith("/"):
        raise DataFormatError(uri, prefix_problem)
    with tempfile.TemporaryDirectory(prefix="safelatent-benchmark-") as scratch:
        local = download(uri, scratch, endpoint_url=endpoint_url)
        if local.is_dir():
            raise DataFormatError(uri, prefix_problem)
        yield local


def _read_hub(name: str, spec: _Format | None, split: str, kind: str | None) -> list[PromptRecord]:
    label = f"hf://{name}"
    if spec is None:
        raise ConfigError(_HUB_NEEDS_FORMAT.format(label=label))
    where = f"{label} (split {split!r})"
    rows = _rows_from_datasets(name, split)
    first = next(rows)
    _check_columns(spec, list(first[1]), where, None)
    if kind is None and spec.name == "hh-rlhf":
        kind = _hh_rlhf_kind(name)
    return _records(
        itertools.chain([first], rows),
        spec,
        f"{spec.name}:{label}",
        kind,
        lambda number, problem: DataFormatError(f"{where}, row {number}", problem),
    )


def summarize(records: Iterable[PromptRecord], format: str) -> dict[str, Any]:
    """Counts for `safelatent data inspect`: records in total, by kind and by category ("(none)" if empty)."""
    records = list(records)
    by_kind = Counter(record.kind for record in records)
    by_category = Counter(record.category or "(none)" for record in records)
    return {
        "format": format,
        "records": len(records),
        "by_kind": dict(sorted(by_kind.items())),
        "by_category": dict(sorted(by_category.items())),
    }
