"""The library half of hyperparameter search: the search space, the objective, the Pareto front, the gate."""

import pytest
from pydantic import ValidationError

from pipelines.sls_rlaif import SLSRLAIFConfig
from safelatent.config import load_config
from safelatent.errors import ConfigError
from safelatent.tuning.gate import ReleaseGate
from safelatent.tuning.objective import ObjectiveSettings, pareto_front, rank, score
from safelatent.tuning.space import Parameter, apply_sample, check_space


def metrics(harmlessness=0.9, task_accuracy=0.6, over_refusal=0.02, asr=0.1):
    return {"harmlessness": {"value": harmlessness, "ci95": [0, 1], "n": 10},
            "task_accuracy": {"value": task_accuracy, "ci95": [0, 1], "n": 10},
            "over_refusal": {"value": over_refusal, "ci95": [0, 1], "n": 10},
            "asr/role_play": {"value": asr, "ci95": [0, 1], "n": 10}}


@pytest.fixture(scope="module")
def base():
    return load_config(SLSRLAIFConfig, None).model_dump(mode="json")


def test_parameters_take_exactly_one_distribution():
    assert Parameter(loguniform=(0.05, 2.0)).kind == "loguniform"
    assert Parameter(grid=[1, 2]).values() == [1, 2]
    for bad in ({}, {"uniform": (1, 0)}, {"loguniform": (0, 1)}, {"choice": []},
                {"uniform": (0, 1), "choice": [1]}):
        with pytest.raises(ValidationError):
            Parameter(**bad)


def test_a_space_over_the_sls_config_is_checked_against_it(base):
    space = {"ppo.kl.beta": Parameter(loguniform=(0.05, 2.0)), "head.facets": Parameter(choice=[1, 2, 4]),
             "head.lambda_move": Parameter(uniform=(0.01, 0.5)), "optimizer.learning_rate": Parameter(
                 loguniform=(1e-5, 1e-3))}
    check_space(space, SLSRLAIFConfig, base)
    raw = apply_sample(base, {"ppo.kl.beta": 0.3, "head.facets": 2})
    config = SLSRLAIFConfig.model_validate(raw)
    assert (config.ppo.kl.beta, config.head.facets) == (0.3, 2)
    assert base["head"]["facets"] != 2 or base["ppo"]["kl"]["beta"] != 0.3  # the base is not changed


def test_a_bad_space_names_every_problem_before_any_trial(base):
    space = {"head.facet": Parameter(choice=[1, 2]), "head.facets": Parameter(choice=[1, 0]),
             "ppo.kl.beta": Parameter(uniform=(0.1, 0.5))}
    with pytest.raises(ConfigError) as error:
        check_space(space, SLSRLAIFConfig, base)
    message = str(error.value)
    assert "head.facet = 1" in message and "head.facets = 0" in message and "ppo.kl.beta" not in message
    with pytest.raises(ConfigError, match="empty"):
        check_space({}, SLSRLAIFConfig, base)


def test_default_objective_penalises_accuracy_lost_beyond_three_points():
    settings = ObjectiveSettings()
    assert score(metrics(0.9, 0.58), settings, baseline_accuracy=0.60) == pytest.approx(0.9)  # 2 points: free
    assert score(metrics(0.9, 0.55), settings, baseline_accuracy=0.60) == pytest.approx(0.88)  # 5: 2 over
    assert score(metrics(0.9, 0.55), settings, baseline_accuracy=None) == pytest.approx(0.9)
    assert score(metrics(over_refusal=0.1), ObjectiveSettings(metric="over_refusal", penalty=0), None) == -0.1
    assert score(metrics(asr=0.2), ObjectiveSettings(metric="asr/role_play", penalty=0), None) == -0.2
    with pytest.raises(KeyError, match="no metric 'helpfulness'"):
        score(metrics(), ObjectiveSettings(metric="helpfulness"), None)


def test_a_refusal_penalty_separates_trials_that_tie_on_harmlessness():
    settings = ObjectiveSettings(over_refusal_penalty=0.5, max_over_refusal=0.05)
    careful = metrics(1.0, 0.60, over_refusal=0.04)
    refusing = metrics(1.0, 0.60, over_refusal=0.25)
    assert score(careful, ObjectiveSettings(), 0.60) == score(refusing, ObjectiveSettings(), 0.60) == 1.0
    assert score(careful, settings, 0.60) == pytest.approx(1.0)  # within the allowance: free
    assert score(refusing, settings, 0.60) == pytest.approx(1.0 - 0.5 * 0.20)
    assert score(metrics(1.0, 0.55, over_refusal=0.25), settings, 0.60) == pytest.approx(1.0 - 0.10 - 0.02)
    with pytest.raises(ValueError):
        ObjectiveSettings(over_refusal_penalty=-1)


def test_pareto_front_keeps_the_undominated_points():
    points = [(0.99, 0.55), (0.95, 0.60), (0.90, 0.58), (0.99, 0.50), (0.80, 0.61), (0.95, 0.60)]
    assert pareto_front(points) == [4, 1, 5, 0]
    assert pareto_front([]) == []


def test_release_gate_says_which_threshold_failed_and_by_how_much():
    gate = ReleaseGate(min_harmlessness=0.95, max_over_refusal=0.05, min_task_accuracy=0.55)
    assert gate.failures(metrics(0.99, 0.58, 0.01)) == []
    failures = gate.failures(metrics(0.93, 0.50, 0.08))
    assert failures == ["harmlessness 93.0% must be at least 95.0% (2.0 points short)",
                        "over_refusal 8.0% must be at most 5.0% (3.0 points over)",
                        "task_accuracy 50.0% must be at least 55.0% (5.0 points short)"]
    assert ReleaseGate(min_harmlessness=None, max_over_refusal=None).failures(metrics(0.1, 0.1, 0.9)) == []


def test_ties_on_the_objective_go_to_accuracy_then_to_fewer_refusals():
    trials = {"default": (1.0, {"task_accuracy": 0.65, "over_refusal": 0.2}),
              "accurate": (1.0, {"task_accuracy": 0.70, "over_refusal": 0.225}),
              "careful": (1.0, {"task_accuracy": 0.70, "over_refusal": 0.1}),
              "unsafe": (0.95, {"task_accuracy": 0.9, "over_refusal": 0.0})}
    order = sorted(trials, key=lambda name: rank(*trials[name]))
    assert order == ["unsafe", "default", "accurate", "careful"]
