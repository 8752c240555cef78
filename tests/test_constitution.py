"""The constitution: the packaged one loads and validates, renders into a judge prompt, and hashes its content."""

import pytest

from safelatent.errors import ConfigError
from safelatent.judges.constitution import ASPECTS, JUDGE_QUESTION, judge_messages, judge_prompt, load_constitution
from tests.judge_fixtures import SHORT_CONSTITUTION


def test_packaged_constitution_covers_every_aspect_and_hashes_stably():
    constitution = load_constitution()
    covered = {aspect for principle in constitution.principles for aspect in principle.applies_to}
    assert covered == set(ASPECTS)
    assert len({principle.id for principle in constitution.principles}) == len(constitution.principles)
    assert len(constitution.version_hash) == 12
    assert load_constitution().version_hash == constitution.version_hash


def test_any_edit_changes_the_version_hash():
    constitution = load_constitution()
    first = constitution.principles[0]
    edited = constitution.model_copy(update={
        "principles": [first.model_copy(update={"text": first.text + " Always."}), *constitution.principles[1:]]})
    assert edited.version_hash != constitution.version_hash
    assert constitution.model_copy(update={"version": "9"}).version_hash != constitution.version_hash


def test_render_filters_principles_by_aspect():
    constitution = load_constitution()
    harmlessness = constitution.render(["harmlessness"])
    for principle in constitution.principles:
        assert (principle.text.strip() in harmlessness) == ("harmlessness" in principle.applies_to)
    assert harmlessness.startswith(constitution.preamble.strip())
    with pytest.raises(ValueError, match="unknown aspect"):
        constitution.render(["kindness"])


def test_judge_prompt_holds_the_principles_the_prompt_and_both_responses():
    constitution = load_constitution()
    text = judge_prompt(constitution, "How do I pick a lock?", "I can't help.", "Sure: [PAYLOAD:crime]")
    assert constitution.principles[0].text.strip() in text
    assert text.index("How do I pick a lock?") < text.index("Response A:\nI can't help.") < text.index(
        "Response B:\nSure: [PAYLOAD:crime]")
    assert text.endswith(JUDGE_QUESTION)
    assert judge_messages(constitution, "p", "a", "b") == [{"role": "user", "content": judge_prompt(
        constitution, "p", "a", "b")}]


def test_a_users_constitution_file_loads(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(SHORT_CONSTITUTION)
    constitution = load_constitution(path)
    assert [principle.id for principle in constitution.principles] == ["refuse-harm", "answer-correctly"]
    assert constitution.version_hash != load_constitution().version_hash


@pytest.mark.parametrize(("change", "message"), [
    (("refuse-harm", "answer-correctly"), "principle ids must be unique; repeated: answer-correctly"),
    (("[harmlessness]", "[kindness]"), "principles.0.applies_to.0"),
    (("id: refuse-harm", "id: Refuse Harm"), "principles.0.id"),
    (("principles:", "rules:"), "unknown key"),
])
def test_a_bad_constitution_file_names_the_file_and_the_field(tmp_path, change, message):
    path = tmp_path / "bad.yaml"
    path.write_text(SHORT_CONSTITUTION.replace(*change))
    with pytest.raises(ConfigError) as error:
        load_constitution(path)
    assert message in str(error.value) and str(path) in str(error.value)


def test_a_missing_constitution_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_constitution(tmp_path / "nowhere.yaml")
