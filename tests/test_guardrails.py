"""Guardrails: PII redaction, harm checks with each policy, streamed moderation, and the judges behind them."""

import pytest

from safelatent.errors import ConfigError
from safelatent.serving import pii
from safelatent.serving.guardrails import (
    ORACLE,
    ClassifierJudge,
    Guardrail,
    GuardrailSettings,
    OracleJudge,
    load_judge,
)

PAYLOAD_REPLY = "Sure, here is how. [PAYLOAD:cybercrime]"


@pytest.mark.parametrize(("text", "kinds"), [
    ("write to jane.doe@example.org today", ["email"]),
    ("call +1 555-123-4567 or (020) 7946 0958", ["phone", "phone"]),
    ("SSN 123-45-6789", ["ssn"]),
    ("card 4111 1111 1111 1111 expires", ["card"]),
    ("server at 192.168.10.254 is down", ["ipv4"]),
])
def test_pii_is_found_and_redacted(text, kinds):
    redacted, found = pii.redact(text)
    assert found == kinds
    for kind in kinds:
        assert f"[REDACTED:{kind.upper()}]" in redacted
    assert pii.redact(redacted)[1] == []  # redaction is complete


@pytest.mark.parametrize("text", ["12 + 7 = 19. Answer: 19", "It was 1999 and 2024", "4111 1111 1111 1112",
                                  "3.5 km is 3500 m", "version 1.2.3.4000", "Answer: 1234567"])
def test_ordinary_numbers_are_not_pii(text):
    assert pii.redact(text) == (text, [])


def oracle_guardrail(**policies) -> Guardrail:
    return Guardrail(GuardrailSettings(harm_judge=ORACLE, **policies), OracleJudge())


def test_output_harm_block_flag_and_off():
    blocked = oracle_guardrail(output_harm="block").check_output("How do I hack a bank?", PAYLOAD_REPLY)
    assert blocked.blocked and blocked.findings == ["harm"] and blocked.harm_probability == 1.0
    flagged = oracle_guardrail(output_harm="flag").check_output("How do I hack a bank?", PAYLOAD_REPLY)
    assert not flagged.blocked and flagged.findings == ["harm"] and flagged.text == PAYLOAD_REPLY
    passed = oracle_guardrail(output_harm="off").check_output("How do I hack a bank?", PAYLOAD_REPLY)
    assert not passed.blocked and passed.findings == [] and passed.harm_probability is None
    safe = oracle_guardrail(output_harm="block").check_output("What is 2 plus 2?", "Answer: 4")
    assert not safe.blocked and safe.findings == []


def test_input_harm_judges_the_users_own_message():
    guard = oracle_guardrail(input_harm="block")
    assert guard.check_input(["hi", f"Continue this: {PAYLOAD_REPLY}"]).blocked
    assert not guard.check_input([f"earlier: {PAYLOAD_REPLY}", "What is 2 plus 2?"]).blocked  # the newest only


def test_a_score_from_a_batch_stands_in_for_the_judge():
    """A server scores the judgement pairs of many requests at once and hands each check its score."""
    class Counting(OracleJudge):
        calls = 0

        def probabilities(self, prompts, texts):
            Counting.calls += 1
            return super().probabilities(prompts, texts)

    guard = Guardrail(GuardrailSettings(harm_judge=ORACLE, input_harm="block", output_harm="block"), Counting())
    assert guard.input_judgement(["hi", "What is 2 plus 2?"]) == ("", "What is 2 plus 2?")
    assert guard.output_judgement("q", PAYLOAD_REPLY) == ("q", PAYLOAD_REPLY)
    assert guard.output_judgement("q", "") is None  # nothing to judge yet
    assert guard.check_output("q", "Answer: 4", harm_probability=0.9).blocked  # the given score decides
    assert not guard.check_input([PAYLOAD_REPLY], harm_probability=0.1).blocked
    assert Counting.calls == 0
    assert guard.check_output("q", PAYLOAD_REPLY).blocked and Counting.calls == 1  # no score: the judge is asked
    off = oracle_guardrail(input_harm="off", output_harm="off")
    assert off.input_judgement(["x"]) is None and off.output_judgement("q", PAYLOAD_REPLY) is None



def test_the_guardrail_deployment_judges_a_batch_of_checks_in_one_forward():
    """The ingress sends the checks that arrive together as one call: one judge forward for the pairs that need a
    score, each verdict in its request's place."""
    import asyncio

    from actors.serving import Guardrail as Deployment

    deployment = Deployment.func_or_class({"harm_judge": ORACLE, "input_harm": "block", "output_harm": "block",
                                           "pii": "redact"}, "cpu")
    forwards = []

    class Recording(OracleJudge):
        def probabilities(self, prompts, texts):
            forwards.append(len(texts))
            return super().probabilities(prompts, texts)

    deployment.checks.judge = Recording()
    replies = [("q", "Answer: 4", True), ("q", "", False), ("q", PAYLOAD_REPLY, True),
               ("q", "Mail jane.doe@example.org", True)]
    outputs = asyncio.run(deployment.check_outputs(replies))
    assert forwards == [3]  # the empty reply so far has nothing to judge
    assert [verdict["blocked"] for verdict in outputs] == [False, False, True, False]
    assert outputs[0]["text"] == "Answer: 4" and outputs[1]["text"] == ""
    assert outputs[3]["text"] == "Mail [REDACTED:EMAIL]" and outputs[3]["found"] == ["email"]
    inputs = asyncio.run(deployment.check_inputs([(["What is 2 plus 2?"], ["be brief", "What is 2 plus 2?"]),
                                                  ([f"Continue this: {PAYLOAD_REPLY}"], ["call 555-123-4567"])]))
    assert forwards == [3, 2]
    assert [verdict["blocked"] for verdict in inputs] == [False, True]
    assert inputs[0]["messages"] == ["be brief", "What is 2 plus 2?"]
    assert inputs[1]["messages"] == ["call [REDACTED:PHONE]"]

def test_pii_policies():
    text = "Mail me at jane.doe@example.org"
    redacted = oracle_guardrail(pii="redact").check_output("q", text)
    assert redacted.text == "Mail me at [REDACTED:EMAIL]" and redacted.findings == ["email"] and not redacted.blocked
    assert oracle_guardrail(pii="block").check_output("q", text).blocked
    flagged = oracle_guardrail(pii="flag").check_output("q", text)
    assert flagged.text == text and flagged.findings == ["email"] and not flagged.blocked
    assert oracle_guardrail(pii="redact").redact_messages([text, "no pii"]) == ["Mail me at [REDACTED:EMAIL]",
                                                                               "no pii"]
    assert oracle_guardrail(pii="flag").redact_messages([text]) == [text]


def test_streamed_moderation_releases_only_settled_text():
    guard = oracle_guardrail(pii="redact", stream_holdback_chars=8)
    reply = "Sure. Write to support at jane.doe@example.org and mention your order number please."
    sent = ""
    for end in range(1, len(reply) + 1):
        released = guard.check_output("q", reply[:end], final=False).text
        assert released.startswith(sent)  # nothing already sent is ever taken back
        sent = released
        assert "jane" not in sent
    final = guard.check_output("q", reply, final=True).text
    assert final.startswith(sent) and final == pii.redact(reply)[0]


def test_settings_refuse_a_harm_check_without_a_judge():
    with pytest.raises(ValueError, match="harm_judge is not set"):
        GuardrailSettings(output_harm="block")
    assert GuardrailSettings().active  # PII redaction is on by default; harm checks need a judge
    assert not GuardrailSettings(output_harm="off", pii="off").active
    assert GuardrailSettings(pii=False).pii == "off"  # a bare `off` in YAML
    with pytest.raises(ValueError, match="judge must be given"):
        Guardrail(GuardrailSettings(harm_judge=ORACLE, output_harm="flag"))


def test_learned_judge_loads_from_a_judges_build(tiny_judges_dir, tmp_path):
    judge = load_judge(str(tiny_judges_dir / "harm_classifier"), device="cpu")
    assert isinstance(judge, ClassifierJudge) and judge.version.startswith("harm-classifier")
    probabilities = judge.probabilities(["How do I hack a bank?", ""], [PAYLOAD_REPLY, "Answer: 4"])
    assert len(probabilities) == 2 and all(0.0 <= p <= 1.0 for p in probabilities)
    guard = Guardrail(GuardrailSettings(harm_judge="x", output_harm="flag", threshold=0.999999), judge)
    assert guard.cut == 0.999999
    assert isinstance(load_judge(ORACLE), OracleJudge)
    with pytest.raises(FileNotFoundError, match=r"judge\.json"):
        load_judge(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        load_judge(str(tiny_judges_dir))  # the build folder, not its harm_classifier


def test_serve_config_rejects_what_cannot_work():
    from safelatent.config import validate_config
    from safelatent.serving.settings import ServeConfig

    with pytest.raises(ConfigError, match="models:/NAME@ALIAS"):
        validate_config(ServeConfig, {"model": "models:/just-a-name"})
    with pytest.raises(ConfigError, match="default_max_tokens"):
        validate_config(ServeConfig, {"model": "m", "limits": {"max_tokens": 8, "default_max_tokens": 16}})
    with pytest.raises(ConfigError, match="guardrails"):
        validate_config(ServeConfig, {"model": "m", "guardrails": {"input_harm": "block"}})
    with pytest.raises(ConfigError, match="unknown key"):
        validate_config(ServeConfig, {"model": "m", "batching": {"size": 4}})
    assert ServeConfig(model="runs/x/sls/model").served_name() == "sls"
    assert ServeConfig(model="models:/sls-rlaif@champion").served_name() == "sls-rlaif"
    assert ServeConfig(model="s3://bucket/models/safe-7b/").served_name() == "safe-7b"


@pytest.mark.parametrize("enabled", [True, False])
def test_a_model_replica_has_room_for_its_concurrent_batches(enabled):
    """Batching on or off, a replica takes every request its batches can hold (Ray's rule for serve.batch), so
    an unbatched replica queues waiting requests itself instead of turning them away to the ingress."""
    from actors.serving import CONCURRENT_BATCHES
    from pipelines.deploy import model_server_room
    from safelatent.serving.settings import ServeConfig

    config = ServeConfig(model="m", batching={"enabled": enabled, "max_batch_size": 24})
    assert model_server_room(config) >= CONCURRENT_BATCHES * 24
