"""Prompt grammar and splits: deterministic, deduplicated, held-out really unseen."""

import json

import pytest

from gpo import prompts as P
from gpo.errors import GpoError
from gpo.params import PromptParams
from gpo.world.dataset import build_prompts


def test_grammar():
    assert P.counting_text(3, "circle", "red") == "three red circles"
    assert P.counting_text(1, "square", "blue") == "one blue square"
    assert P.counting_text(2, "cup", None) == "two cups"
    assert P.counting_text(2, "bus", None) == "two buses"
    assert P.counting_text(4, "bench", None) == "four benches"
    assert P.counting_text(12, "kite", None) == "12 kites"
    assert P.plural("strawberry") == "strawberries" and P.plural("toy") == "toys"


def test_real_model_vocabulary_uses_the_same_grammar():
    coco = P.counting_prompts(["cup", "dog", "traffic light"], [], [1, 2, 3], 1, seed=0)
    assert {p.text for p in coco} >= {"one cup", "three dogs", "two traffic lights"}
    words = P.text_prompts(["hello", "world", "gpo"], ['a sign that says "{word}"'], 1, 0.3, seed=0)
    assert all(p.text.startswith('a sign that says "') and p.word in p.text for p in words)


def test_default_table_is_deterministic_and_deduplicated():
    a, b = build_prompts(PromptParams()), build_prompts(PromptParams())
    assert a == b
    assert len({p.text for p in a}) == len(a)
    other = build_prompts(PromptParams(seed=1))
    assert {p.text for p in a if p.split == "heldout"} != {p.text for p in other if p.split == "heldout"}


def test_counting_splits_are_unseen_combinations_balanced_by_count():
    p = PromptParams()
    table = [q for q in build_prompts(p) if q.task == "counting"]
    held = [q for q in table if q.split == "heldout"]
    train = [q for q in table if q.split == "train"]
    assert not {q.text for q in held} & {q.text for q in train}
    for c in p.counting.counts:
        assert sum(q.count == c for q in held) == p.counting.heldout_per_count
    # every word of a held-out prompt was seen in training: only the combination is new
    assert {q.color for q in held} <= {q.color for q in train} and {q.cls for q in held} <= {q.cls for q in train}


def test_text_splits_hold_out_whole_words():
    p = PromptParams()
    table = [q for q in build_prompts(p) if q.task == "text"]
    train_words = {q.word for q in table if q.split == "train"}
    unseen = {q.word for q in table if q.split == "heldout_words"}
    assert len(unseen) == p.text.heldout_words and not unseen & train_words
    held = [q for q in table if q.split == "heldout"]
    assert held and all(q.word in train_words for q in held)


def test_practice_words_are_their_own_split_and_leave_every_other_split_as_it_was():
    with_practice = build_prompts(PromptParams())
    without = build_prompts(PromptParams.model_validate({"text": {"practice_words": []}}))
    assert [q for q in with_practice if q.split != "practice"] == without
    practice = [q for q in with_practice if q.split == "practice"]
    p = PromptParams()
    assert len(practice) == len(p.text.practice_words) * len(p.text.templates)
    assert not {q.word for q in practice} & {w.upper() for w in p.text.words}  # never pretrained, never evaluated
    assert set(P.HELDOUT_SPLITS) == {"heldout", "heldout_words"}


def test_a_practice_word_that_is_also_a_word_is_one_clear_error():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"text.practice_words\n.*'CAT'\] are in both words and practice_words"):
        PromptParams.model_validate({"text": {"practice_words": ["cat", "zoo"]}})


def test_a_vocabulary_of_its_own_gets_no_embedded_practice_words_unless_it_asks():
    assert PromptParams.model_validate({"text": {"words": ["HELLO", "WORLD"]}}).text.practice_words == []
    asked = PromptParams.model_validate({"text": {"words": ["HELLO", "WORLD"], "practice_words": ["OPEN"]}})
    assert asked.text.practice_words == ["OPEN"]
    assert len(PromptParams().text.practice_words) == 134


def test_no_default_word_reads_as_a_yaml_boolean_or_a_count():
    """DVC rewrites params with a YAML 1.2 writer that leaves YES / NO / ON / OFF unquoted; PyYAML reads them
    as booleans. A practice count word would share the lower-cased characters of counting prompts."""
    import yaml

    from gpo.params import PRACTICE_WORDS, WORDS

    for w in list(WORDS) + list(PRACTICE_WORDS):
        assert yaml.safe_load(w) == w, w
    assert not {w.lower() for w in PRACTICE_WORDS} & set(P.COUNT_WORDS)  # (TEN, a training word, predates this)


def test_gpo_text_prompts_come_from_practice_words_when_asked_and_there_are_any():
    from gpo.groups import pick_prompts

    prompts = build_prompts(PromptParams())
    text = [q for q in pick_prompts(prompts, 25, 1, seed=0, text_share=0.4, text_pool="practice") if q.task == "text"]
    assert len(text) == 10 and all(q.split == "practice" for q in text)
    text = [q for q in pick_prompts(prompts, 25, 1, seed=0, text_share=0.4) if q.task == "text"]
    assert len(text) == 10 and all(q.split == "train" for q in text)  # the default pool
    no_practice = [q for q in prompts if q.split != "practice"]
    text = [q for q in pick_prompts(no_practice, 25, 1, 0, 0.4, text_pool="practice") if q.task == "text"]
    assert len(text) == 10 and all(q.split == "train" for q in text)


def test_dedupe_keeps_first():
    a = P.Prompt(text="x", task="text", split="train", word="X")
    b = P.Prompt(text="x", task="text", split="heldout", word="X")
    assert P.dedupe([a, b]) == [a]


def test_write_read_roundtrip_and_filters(tmp_path):
    table = build_prompts(PromptParams())
    path = tmp_path / "p.jsonl"
    P.write_prompts(table, path)
    assert P.read_prompts(path) == table
    assert all(q.task == "counting" and q.split == "train" for q in P.read_prompts(path, task="counting", split="train"))


@pytest.mark.parametrize("row,needle", [
    ("not json", "malformed"),
    (json.dumps({"text": "three red circles", "task": "counting", "split": "train", "cls": "circle"}), "count"),
    (json.dumps({"text": "x", "task": "drawing", "split": "train"}), "task"),
    (json.dumps({"text": "x", "task": "text", "split": "train", "word": ""}), "word"),
    (json.dumps({"text": "x", "task": "text", "split": "valid", "word": "A"}), "split"),
    (json.dumps({"text": "x", "task": "text", "split": "train", "word": "A", "color": "red", "size": 3}), "unknown"),
    (json.dumps([1, 2]), "object"),
    (json.dumps({"text": "x", "task": "text", "split": "train", "word": "ÉTÉ"}), "OCR reward cannot score"),
    (json.dumps({"text": "x", "task": "text", "split": "train", "word": "C-3"}), "OCR reward cannot score"),
    (json.dumps({"text": "x", "task": "counting", "split": "train", "cls": "circle", "count": 5000}), "max_det"),
])
def test_malformed_rows_name_file_line_and_fix(tmp_path, row, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "one red circle", "task": "counting", "split": "train", "cls": "circle",
                                "count": 1}) + "\n" + row + "\n")
    with pytest.raises(GpoError) as err:
        P.read_prompts(path)
    msg = str(err.value)
    assert f"{path}:2" in msg and needle in msg and "fix:" in msg


def test_missing_prompt_file(tmp_path):
    with pytest.raises(GpoError, match="not found"):
        P.read_prompts(tmp_path / "nope.jsonl")


def test_an_empty_prompt_file_is_one_clear_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(GpoError, match="holds no prompts") as err:
        P.read_prompts(path)
    assert str(path) in str(err.value) and "gpo prompts" in str(err.value)


def test_round_prompts_spread_counting_evenly_over_counts():
    from collections import Counter

    from gpo.groups import pick_prompts
    from gpo.params import PromptParams
    from gpo.world.dataset import build_prompts

    prompts = build_prompts(PromptParams())
    for batch in range(1, 6):
        chosen = pick_prompts(prompts, 16, batch, seed=0, text_share=0.5)  # 8 counting prompts over counts 1..6
        counts = Counter(p.count for p in chosen if p.task == "counting")
        assert sum(counts.values()) == 8 and set(counts) == {1, 2, 3, 4, 5, 6} and max(counts.values()) == 2
        assert len({p.text for p in chosen}) == 16 and all(p.split == "train" for p in chosen)
    assert pick_prompts(prompts, 16, 1, 0, 0.5) == pick_prompts(prompts, 16, 1, 0, 0.5)
    assert pick_prompts(prompts, 16, 1, 0, 0.5) != pick_prompts(prompts, 16, 2, 0, 0.5)


def test_balanced_sample_takes_at_most_the_pool():
    import random

    from gpo.groups import balanced_sample
    from gpo.params import PromptParams
    from gpo.world.dataset import build_prompts

    pool = [p for p in build_prompts(PromptParams()) if p.task == "counting" and p.split == "train"][:5]
    assert sorted(p.text for p in balanced_sample(pool, 50, random.Random(0))) == sorted(p.text for p in pool)


@pytest.mark.parametrize("missing", ["task", "split", "text"])
def test_a_row_missing_a_field_names_the_row_the_field_and_the_fix(tmp_path, missing):
    row = {"text": "two red circles", "task": "counting", "split": "train", "cls": "circle", "count": 2}
    del row[missing]
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "one red circle", "task": "counting", "split": "train", "cls": "circle",
                                "count": 1}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(GpoError) as err:
        P.read_prompts(path)
    msg = str(err.value)
    assert f"prompt row 2 has no {missing} field" in msg and f"{path}:2" in msg and f"field: {missing}" in msg
    assert f'add "{missing}": ' in msg and "gpo prompts" in msg
    assert "__init__" not in msg and "positional argument" not in msg


def test_text_share_splits_each_batch_of_prompts():
    from gpo.groups import pick_prompts, split_tasks

    assert split_tasks(20, 0.5) == {"counting": 10, "text": 10}
    assert split_tasks(21, 0.5) == {"counting": 11, "text": 10}  # the odd one to counting, as before
    assert split_tasks(25, 0.2) == {"counting": 20, "text": 5}  # 25 × 0.2 is 5.000000000000001 in floats
    assert split_tasks(4, 0.1) == {"counting": 3, "text": 1}  # a task with a share keeps one prompt
    assert split_tasks(4, 0.0) == {"counting": 4, "text": 0}
    assert split_tasks(4, 1.0) == {"counting": 0, "text": 4}
    assert split_tasks(4, 0.95) == {"counting": 1, "text": 3}
    assert split_tasks(1, 0.5) == {"counting": 1, "text": 0}
    prompts = build_prompts(PromptParams())
    chosen = pick_prompts(prompts, 25, 3, seed=0, text_share=0.2)
    assert [p.task for p in chosen].count("text") == 5 and len(chosen) == 25
    assert all(p.split == "train" for p in chosen)
    only_counting = [p for p in prompts if p.task == "counting"]
    assert len(pick_prompts(only_counting, 25, 3, seed=0, text_share=0.2)) == 25  # one task: all to it
