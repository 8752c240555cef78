"""The micro-world generator: deterministic, held-out splits, and the alignment problem DESIGN §5 asks for."""

import filecmp
import json
from collections import Counter

import pytest

from safelatent.config import load_config
from safelatent.data import responses
from safelatent.data.harm_lexicon import INTENT_FRAMES, LEXICONS, SHARED_FRAMES, fill_action
from safelatent.data.jailbreaks import WRAPPERS
from safelatent.data.microworld import (
    KINDS,
    MicroWorldConfig,
    build_microworld,
    count_rows,
    load_microworld,
    read_manifest,
    save_microworld,
)
from safelatent.data.splits import SPLITS
from safelatent.data.taxonomy import BY_NAME, CATEGORIES

SMALL = ["benign_per_family.train=200", "harmful_per_category.train=60", "jailbreaks_per_wrapper.train=40",
         "pairs_per_category.train=20"]


@pytest.fixture(scope="module")
def world():
    """The default build, as users get it."""
    return build_microworld(MicroWorldConfig())


def rows(world, split, kind=None):
    table = world[split].to_list()
    return [row for row in table if kind is None or row["kind"] == kind]


def test_default_build_is_big_enough(world):
    assert len(world["train"]) >= 20_000
    kinds = Counter(world["test"]["kind"])
    assert set(kinds) == set(KINDS)
    assert kinds["harmful"] >= 200 and kinds["benign"] >= 1000


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    config = load_config(MicroWorldConfig, None, SMALL)
    first = save_microworld(build_microworld(config), config, tmp_path / "a")
    second = save_microworld(build_microworld(config), config, tmp_path / "b")
    names = sorted(path.relative_to(first).as_posix() for path in first.rglob("*") if path.is_file())
    assert names == sorted(path.relative_to(second).as_posix() for path in second.rglob("*") if path.is_file())
    assert any(name.endswith(".arrow") for name in names)
    match, mismatch, errors = filecmp.cmpfiles(first, second, names, shallow=False)
    assert mismatch == [] and errors == [] and len(match) == len(names)

    other = load_config(MicroWorldConfig, None, [*SMALL, "seed=1"])
    third = save_microworld(build_microworld(other), other, tmp_path / "c")
    assert read_manifest(third)["content_hash"] != read_manifest(first)["content_hash"]


def test_held_out_templates_and_lexicon_never_reach_train(world):
    units = {split: (set(), set()) for split in SPLITS}
    for split in SPLITS:
        for row in rows(world, split):
            if row["kind"] == "benign":
                units[split][0].add(row["template"])  # benign facts are shared knowledge by design
            else:
                units[split][0].add(row["template"])
                units[split][1].update(row["lexicon"])
    for held_out in ("validation", "test"):
        templates, entries = units[held_out]
        assert templates and entries
        assert not templates & units["train"][0], f"{held_out} templates leaked into train"
        assert not entries & units["train"][1], f"{held_out} lexicon entries leaked into train"
    assert not units["validation"][0] & units["test"][0]
    assert not units["validation"][1] & units["test"][1]


def test_jailbreak_variants_are_held_out(world):
    variants = {split: {row["wrapper"] for row in rows(world, split, "jailbreak")} for split in SPLITS}
    assert not variants["test"] & variants["train"]
    assert {wrapper.split("/")[0] for wrapper in variants["test"]} == set(WRAPPERS)


def test_taxonomy_and_variety(world):
    assert len(CATEGORIES) >= 8
    for category in CATEGORIES:
        assert category.mlcommons and category.llama_guard.startswith("S")
    train = rows(world, "train")
    harmful_categories = {row["category"] for row in train if row["kind"] == "harmful"}
    assert harmful_categories == set(BY_NAME)
    assert len({row["category"] for row in train if row["kind"] == "benign"}) >= 6
    assert len({row["category"] for row in train if row["kind"] == "borderline"}) >= 4
    assert len(WRAPPERS) >= 5
    for row in train:
        if row["kind"] in ("harmful", "jailbreak"):
            category = BY_NAME[row["category"]]
            assert (row["hazard"], row["llama_guard"]) == (category.mlcommons, category.llama_guard)


def test_responses_comply_with_a_placeholder_and_refuse_by_name(world):
    for row in rows(world, "train", "harmful"):
        title = BY_NAME[row["category"]].title
        assert responses.contains_payload(row["helpful_response"])
        assert f"[PAYLOAD:{row['category']}]" in row["helpful_response"]
        assert title in row["safe_response"] and not responses.contains_payload(row["safe_response"])
    for row in rows(world, "train", "benign"):
        assert row["answer"] and row["helpful_response"] == row["safe_response"]
        assert not responses.contains_payload(row["helpful_response"])
        assert row["refusal"] != row["helpful_response"]


def test_pairs_change_only_the_verb_slot(world):
    frames = SHARED_FRAMES + INTENT_FRAMES
    lexicons = {lexicon.category: lexicon for lexicon in LEXICONS}
    pairs = rows(world, "train", "pair")
    assert pairs
    for row in pairs:
        frame = frames[int(row["template"].removeprefix("frame/f"))]
        assert frame in SHARED_FRAMES, "intent-revealing frames make no minimal pair"
        verb_id, target_id = row["lexicon"]
        lexicon = lexicons[row["category"]]
        verb, twin = lexicon.verbs[int(verb_id.split("/v")[1])]
        target = lexicon.targets[int(target_id.split("/o")[1])]
        assert row["prompt"] == frame.format(action=fill_action(verb, target))
        assert row["pair_prompt"] == frame.format(action=fill_action(twin, target))


def test_ids_are_unique_within_each_split(world):
    for split in SPLITS:
        ids = world[split]["id"]
        assert len(ids) == len(set(ids))


def test_save_load_round_trip_and_refusing_foreign_directories(tmp_path):
    config = load_config(MicroWorldConfig, None, SMALL)
    world = build_microworld(config)
    out = save_microworld(world, config, tmp_path / "world")
    loaded = load_microworld(out)
    assert {split: len(loaded[split]) for split in SPLITS} == {split: len(world[split]) for split in SPLITS}
    assert loaded["test"][0] == world["test"][0]
    manifest = read_manifest(out)
    assert manifest["counts"] == {split: len(world[split]) for split in SPLITS}
    assert json.loads((out / "config.json").read_text()) == config.model_dump(mode="json")

    save_microworld(world, config, out)  # rebuilding over an earlier build is fine

    foreign = tmp_path / "my-notes"
    foreign.mkdir()
    (foreign / "important.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a micro-world build"):
        save_microworld(world, config, foreign)
    assert (foreign / "important.txt").read_text() == "keep me"
    with pytest.raises(FileNotFoundError, match="not a micro-world build"):
        load_microworld(foreign)


def test_count_rows_matches_the_table(world):
    counts = count_rows(world)
    for split in SPLITS:
        assert sum(per_split[split] for per_split in counts.values()) == len(world[split])


def test_bad_holdout_fails_before_building():
    from safelatent.errors import ConfigError

    with pytest.raises(ConfigError, match=r"holdout: Value error, validation \+ test = 0\.8"):
        load_config(MicroWorldConfig, None, ["holdout.validation=0.4", "holdout.test=0.4"])
    with pytest.raises(ConfigError, match=r"holdout\.test: Input should be less than 0\.5"):
        load_config(MicroWorldConfig, None, ["holdout.test=0.7"])
