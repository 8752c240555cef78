"""Evaluation reports: the comparison table, provenance, valid PNG plots, and comparing result directories."""

import json

import pytest

from safelatent.errors import SafelatentError
from safelatent.evaluation.metrics import Metric
from safelatent.evaluation.report import compare_runs, format_metric, metric_columns, model_labels, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def metric(value, low, high, n):
    return {"value": value, "ci95": [low, high], "n": n}


def results_for(model, harmlessness=0.8, **extra):
    return {
        "model": model,
        "data": "microworld:test",
        "seed": 0,
        "commit": "0123456789abcdef",
        "config_hash": "abc123def456",
        "metrics": {
            "harmlessness": metric(harmlessness, 0.49, 0.94, 10),
            "over_refusal": metric(0.1, 0.02, 0.4, 10),
            "helpfulness_score": metric(7.5, 6.0, 9.0, 10),
            "asr/role_play": metric(0.3, 0.1, 0.6, 10),
        },
        "against": None,
        "judges": {"harm": "micro-world oracle", "labeler": "micro-world oracle"},
        "notes": ["a note | with a pipe"],
        "breakdown": {"harmlessness_by_category": {"fraud": metric(1.0, 0.5, 1.0, 4),
                                                   "hate": metric(0.5, 0.2, 0.8, 6)}},
        **extra,
    }


def is_png(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100


def test_format_metric_shows_rates_in_percent_and_scores_as_is():
    assert format_metric("harmlessness", Metric(0.8, (0.4902, 0.9433), 10)) == "80.0% [49.0, 94.3] n=10"
    assert format_metric("helpfulness_score", Metric(7.5, (6.04, 9.96), 5)) == "7.50 [6.04, 9.96] n=5"


def test_model_labels_are_the_shortest_distinct_path_suffixes():
    assert model_labels([{"model": "runs/a/model", "data": "d"}, {"model": "runs/b/model", "data": "d"}]) == [
        "a/model", "b/model"]
    assert model_labels([{"model": "runs/sft", "data": "d"}, {"model": "runs/sls/", "data": "d"}]) == ["sft", "sls"]
    assert model_labels([{"model": "m", "data": "x"}, {"model": "m", "data": "y"}]) == ["m [x]", "m [y]"]


def test_metric_columns_follow_the_design_order_then_attacks():
    columns = metric_columns([results_for("a"), {"metrics": {"asr/distractor": {}, "task_accuracy": {}}}])
    assert columns == ["harmlessness", "over_refusal", "task_accuracy", "helpfulness_score", "asr/distractor",
                       "asr/role_play"]


def test_report_compares_models_with_provenance_and_valid_plots(tmp_path):
    first = results_for("runs/sft")
    second = results_for("runs/sls", harmlessness=0.95)
    del second["metrics"]["helpfulness_score"]
    report = write_report([first, second], tmp_path)
    markdown = report.read_text()
    assert report == tmp_path / "report.md"
    table_rows = [line for line in markdown.splitlines() if line.startswith("| sft") or line.startswith("| sls")]
    assert "80.0% [49.0, 94.0] n=10" in table_rows[0] and "95.0% [49.0, 94.0] n=10" in table_rows[1]
    assert table_rows[1].count(" - ") >= 1  # the metric the second run lacks
    for text in ("abc123def456", "0123456789abcdef", "microworld:test", "micro-world oracle",
                 "harmlessness_by_category.png", "over_refusal_vs_harmlessness.png", "sft: a note | with a pipe"):
        assert text in markdown, text
    page = (tmp_path / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert '<img src="harmlessness_by_category.png"' in page and '<img src="over_refusal_vs_harmlessness.png"' in page
    assert "abc123def456" in page
    is_png(tmp_path / "harmlessness_by_category.png")
    is_png(tmp_path / "over_refusal_vs_harmlessness.png")


def test_plots_without_data_are_left_out_and_the_report_says_why(tmp_path):
    results = results_for("runs/bench")
    results["metrics"] = {"harmlessness": metric(0.5, 0.1, 0.9, 2)}
    results["breakdown"] = {"harmlessness_by_category": {}}
    markdown = write_report([results], tmp_path).read_text()
    assert "No per-category harmlessness" in markdown and "No trade-off plot" in markdown
    assert not (tmp_path / "harmlessness_by_category.png").exists()
    assert not (tmp_path / "over_refusal_vs_harmlessness.png").exists()


def test_compare_runs_reads_result_directories(tmp_path):
    for name in ("sft", "sls"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(results_for(f"runs/{name}")))
    report = compare_runs([tmp_path / "sft", tmp_path / "sls"], tmp_path / "comparison")
    assert "| sls |" in report.read_text()
    with pytest.raises(SafelatentError, match=r"has no results\.json; run `safelatent eval --out"):
        compare_runs([tmp_path / "missing"], tmp_path / "comparison")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text(json.dumps({"model": "m"}))
    with pytest.raises(SafelatentError, match="lacks data, seed, commit, metrics"):
        compare_runs([tmp_path / "broken"], tmp_path / "comparison")
