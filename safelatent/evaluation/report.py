"""Evaluation reports: models side by side on every metric, with provenance and plots, in Markdown and HTML.

`write_report(results_list, out_dir)` takes one or more results (the dicts `run_eval` writes to
results.json) and writes to out_dir:
- report.md and report.html: a table with one row per model and one column per metric (value, 95%
  interval, n; rates in %), each model's data, config hash, seed, commit and judges, harmlessness per
  harm category, and the notes each run left (a refusal proxy, a metric the data could not support);
- harmlessness_by_category.png: harmlessness per harm category, grouped bars per model, intervals as
  error bars;
- over_refusal_vs_harmlessness.png: one point per model, over-refusal across and harmlessness up (the
  top left is best), intervals as error bars.
A plot no result has data for is left out, and the report says so. Plots are drawn on matplotlib's
non-interactive Agg canvas, never through pyplot, so no display and no global backend are touched.
`compare_runs(result_dirs, out_dir)` builds the same report from existing `safelatent eval` directories.
"""

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from safelatent.errors import SafelatentError
from safelatent.evaluation.metrics import ASR_PREFIX, METRIC_ORDER, Metric

REPORT_MARKDOWN = "report.md"
REPORT_HTML = "report.html"
CATEGORY_PLOT = "harmlessness_by_category.png"
TRADEOFF_PLOT = "over_refusal_vs_harmlessness.png"
RESULTS_FILE = "results.json"
REQUIRED_KEYS = ("model", "data", "seed", "commit", "metrics")
SCORE_METRICS = frozenset({"helpfulness_score"})  # 1-10 means; every other metric is a rate shown in %

_TITLES = {
    "harmlessness": "harmlessness",
    "over_refusal": "over-refusal",
    "task_accuracy": "task accuracy",
    "helpfulness_win_rate": "win-rate",
    "helpfulness_score": "helpfulness score",
}


def load_results(directory: str | Path) -> dict[str, Any]:
    """The results.json of an evaluation directory, checked for the keys every report needs."""
    path = Path(directory) / RESULTS_FILE
    if not path.is_file():
        raise SafelatentError(f"{directory} has no {RESULTS_FILE}; run `safelatent eval --out {directory}` first")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SafelatentError(f"{path} is not valid JSON ({error}); rerun the evaluation to rewrite it") from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(results, dict) or key not in results]
    if missing:
        raise SafelatentError(f"{path} lacks {', '.join(missing)}; it was not written by `safelatent eval`")
    return results


def compare_runs(result_dirs: Sequence[str | Path], out_dir: str | Path) -> Path:
    """A report comparing the results.json of several evaluation directories; returns report.md's path."""
    if not result_dirs:
        raise SafelatentError("compare_runs needs at least one evaluation directory")
    return write_report([load_results(directory) for directory in result_dirs], out_dir)


def write_report(results_list: Sequence[dict[str, Any]], out_dir: str | Path) -> Path:
    """Write report.md, report.html and their plots for these results to out_dir; returns report.md's path."""
    if not results_list:
        raise SafelatentError("a report needs the results of at least one evaluation")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = model_labels(results_list)
    plots = {
        CATEGORY_PLOT: _plot_harmlessness_by_category(results_list, labels, out / CATEGORY_PLOT),
        TRADEOFF_PLOT: _plot_tradeoff(results_list, labels, out / TRADEOFF_PLOT),
    }
    sections = _sections(results_list, labels, plots)
    (out / REPORT_MARKDOWN).write_text(_markdown(sections))
    (out / REPORT_HTML).write_text(_html(sections))
    return out / REPORT_MARKDOWN


def metric_columns(results_list: Sequence[dict[str, Any]]) -> list[str]:
    """Metric names present in any result: the fixed ones in METRIC_ORDER, then asr/<wrapper> sorted."""
    present = {name for results in results_list for name in results["metrics"]}
    fixed = [name for name in METRIC_ORDER if name in present]
    return fixed + sorted(name for name in present if name.startswith(ASR_PREFIX))


def format_metric(name: str, metric: Metric) -> str:
    """"80.0% [49.0, 94.3] n=10" for rates, "7.50 [6.04, 9.96] n=5" for 1-10 scores."""
    low, high = metric.ci95
    if name in SCORE_METRICS:
        return f"{metric.value:.2f} [{low:.2f}, {high:.2f}] n={metric.n}"
    return f"{100 * metric.value:.1f}% [{100 * low:.1f}, {100 * high:.1f}] n={metric.n}"


def model_labels(results_list: Sequence[dict[str, Any]]) -> list[str]:
    """Short distinct names for plots and tables: the shortest path suffix of each model that tells them apart."""
    parts = [str(results["model"]).rstrip("/").split("/") for results in results_list]
    longest = max(len(pieces) for pieces in parts)
    labels = ["/".join(pieces[-1:]) for pieces in parts]
    for depth in range(1, longest + 1):
        labels = ["/".join(pieces[-depth:]) for pieces in parts]
        if len(set(labels)) == len(labels):
            return labels
    # The same model more than once (e.g. on two data sets): tell the runs apart by data, then by position.
    labels = [f"{label} [{results['data']}]" for label, results in zip(labels, results_list, strict=True)]
    if len(set(labels)) < len(labels):
        labels = [f"{label} #{index + 1}" for index, label in enumerate(labels)]
    return labels


# --- content, shared by the Markdown and HTML renderings --------------------------------------------------


def _sections(results_list: Sequence[dict[str, Any]], labels: list[str],
              plots: dict[str, bool]) -> list[tuple[str, Any]]:
    """The report as (kind, content) blocks: ("h", title), ("p", text), ("table", (header, rows)), ("img", file)."""
    columns = metric_columns(results_list)
    metrics_header = ["model", *(_TITLES.get(name, name) for name in columns)]
    metrics_rows = [[label, *(_cell(results, name) for name in columns)]
                    for label, results in zip(labels, results_list, strict=True)]
    provenance_header = ["model", "path or id", "data", "config hash", "seed", "commit", "harm judge", "labeler",
                         "against"]
    provenance_rows = [[label, str(results["model"]), str(results["data"]), str(results.get("config_hash", "-")),
                        str(results["seed"]), str(results["commit"]), str(results.get("judges", {}).get("harm", "-")),
                        str(results.get("judges", {}).get("labeler", "-")), str(results.get("against") or "-")]
                       for label, results in zip(labels, results_list, strict=True)]
    sections: list[tuple[str, Any]] = [
        ("h", "Evaluation report"),
        ("p", "Each cell: value, 95% interval (Wilson for rates, t for the 1-10 score) and n. Rates are % of "
              "prompts: harmlessness of harmful prompts judged safe, over-refusal of benign and borderline "
              "prompts refused, asr/<wrapper> of jailbreaks judged harmful."),
        ("table", (metrics_header, metrics_rows)),
        ("h", "Runs"),
        ("table", (provenance_header, provenance_rows)),
    ]
    categories = sorted({category for results in results_list for category in _by_category(results)})
    sections.append(("h", "Harmlessness by harm category"))
    if categories:
        rows = [[category, *(_category_cell(results, category) for results in results_list)]
                for category in categories]
        sections.append(("table", (["category", *labels], rows)))
    if plots[CATEGORY_PLOT]:
        sections.append(("img", CATEGORY_PLOT))
    else:
        sections.append(("p", "No per-category harmlessness: no run had harmful prompts with categories."))
    sections.append(("h", "Over-refusal vs harmlessness"))
    if plots[TRADEOFF_PLOT]:
        sections.append(("img", TRADEOFF_PLOT))
    else:
        sections.append(("p", "No trade-off plot: no run has both over-refusal and harmlessness."))
    notes = [(label, note) for label, results in zip(labels, results_list, strict=True)
             for note in results.get("notes", [])]
    if notes:
        sections.append(("h", "Notes"))
        sections.extend(("p", f"{label}: {note}") for label, note in notes)
    return sections


def _cell(results: dict[str, Any], name: str) -> str:
    data = results["metrics"].get(name)
    return format_metric(name, Metric.from_json(data)) if data is not None else "-"


def _by_category(results: dict[str, Any]) -> dict[str, Any]:
    return results.get("breakdown", {}).get("harmlessness_by_category", {})


def _category_cell(results: dict[str, Any], category: str) -> str:
    data = _by_category(results).get(category)
    return format_metric("harmlessness", Metric.from_json(data)) if data is not None else "-"


def _markdown(sections: list[tuple[str, Any]]) -> str:
    lines: list[str] = []
    for kind, content in sections:
        if kind == "h":
            lines += [f"{'#' if not lines else '##'} {content}", ""]
        elif kind == "p":
            lines += [content, ""]
        elif kind == "img":
            lines += [f"![{Path(content).stem.replace('_', ' ')}]({content})", ""]
        else:
            header, rows = content
            lines.append("| " + " | ".join(_markdown_cell(text) for text in header) + " |")
            lines.append("|" + "|".join("---" for _ in header) + "|")
            lines += ["| " + " | ".join(_markdown_cell(text) for text in row) + " |" for row in rows]
            lines.append("")
    return "\n".join(lines)


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _html(sections: list[tuple[str, Any]]) -> str:
    body: list[str] = []
    for kind, content in sections:
        if kind == "h":
            tag = "h1" if not body else "h2"
            body.append(f"<{tag}>{html.escape(content)}</{tag}>")
        elif kind == "p":
            body.append(f"<p>{html.escape(content)}</p>")
        elif kind == "img":
            alt = html.escape(Path(content).stem.replace("_", " "))
            body.append(f'<p><img src="{html.escape(content)}" alt="{alt}"></p>')
        else:
            header, rows = content
            head = "".join(f"<th>{html.escape(text)}</th>" for text in header)
            cells = "".join("<tr>" + "".join(f"<td>{html.escape(text)}</td>" for text in row) + "</tr>"
                            for row in rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
    style = ("body{font-family:sans-serif;max-width:80em;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .6em;"
             "text-align:left}th{background:#f3f3f3}img{max-width:100%}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Evaluation report</title>"
            f"<style>{style}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


# --- plots ---------------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _error_bars(metrics: Sequence[dict[str, Any]]) -> list[list[float]]:
    """Matplotlib's asymmetric error bars, [[below...], [above...]], from metric dicts."""
    return [[max(0.0, metric["value"] - metric["ci95"][0]) for metric in metrics],
            [max(0.0, metric["ci95"][1] - metric["value"]) for metric in metrics]]


def _plot_harmlessness_by_category(results_list: Sequence[dict[str, Any]], labels: list[str], path: Path) -> bool:
    categories = sorted({category for results in results_list for category in _by_category(results)})
    if not categories:
        path.unlink(missing_ok=True)
        return False
    width = 0.8 / len(results_list)
    figure = _figure(max(6.0, 0.5 * len(categories) * max(1, len(results_list)) + 2), 4.5)
    axes = figure.add_subplot()
    for number, (label, results) in enumerate(zip(labels, results_list, strict=True)):
        by_category = _by_category(results)
        positions = [index + (number - (len(results_list) - 1) / 2) * width
                     for index, category in enumerate(categories) if category in by_category]
        metrics = [by_category[category] for category in categories if category in by_category]
        axes.bar(positions, [metric["value"] for metric in metrics], width=width, label=label,
                 yerr=_error_bars(metrics), capsize=2)
    axes.set_xticks(range(len(categories)), categories, rotation=40, ha="right")
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("harmlessness (share judged safe)")
    axes.set_title("Harmlessness per harm category (95% intervals)")
    axes.legend(fontsize="small")
    figure.savefig(path, dpi=110)
    return True


def _plot_tradeoff(results_list: Sequence[dict[str, Any]], labels: list[str], path: Path) -> bool:
    points = [(label, results["metrics"]["over_refusal"], results["metrics"]["harmlessness"])
              for label, results in zip(labels, results_list, strict=True)
              if "over_refusal" in results["metrics"] and "harmlessness" in results["metrics"]]
    if not points:
        path.unlink(missing_ok=True)
        return False
    figure = _figure(6.0, 5.0)
    axes = figure.add_subplot()
    for label, refusal, harmless in points:
        axes.errorbar([refusal["value"]], [harmless["value"]], xerr=_error_bars([refusal]),
                      yerr=_error_bars([harmless]), fmt="o", capsize=3, label=label)
        axes.annotate(label, (refusal["value"], harmless["value"]), textcoords="offset points", xytext=(5, 5),
                      fontsize="small")
    axes.set_xlim(-0.02, 1.02)
    axes.set_ylim(-0.02, 1.08)  # room for a label on a point at the top
    axes.set_xlabel("over-refusal (benign and borderline prompts refused)")
    axes.set_ylabel("harmlessness (harmful prompts judged safe)")
    axes.set_title("Over-refusal vs harmlessness (top left is best)")
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=110)
    return True
