"""Params: defaults load, every field is documented, bad files fail with file/key/value/fix."""

from pathlib import Path

import pytest
import yaml

from gpo import params as P
from gpo.errors import GpoError


def test_committed_params_load(root):
    loaded = P.load_all(root / "params")
    assert set(loaded) == set(P.FILES)


def test_every_field_has_a_description():
    def walk(model):
        for name, info in model.model_fields.items():
            ann = info.annotation
            if isinstance(ann, type) and issubclass(ann, P.Strict):
                yield from walk(ann)
            else:
                yield model.__name__, name, info.description
    missing = [(m, f) for m, f, d in (x for model in P.FILES.values() for x in walk(model)) if not d]
    assert not missing


def test_committed_yaml_comments_every_key(root):
    for name in P.FILES:
        lines = (root / "params" / name).read_text().splitlines()
        for i, line in enumerate(lines):
            s = line.strip()
            entry = s.startswith("'")  # one entry of a mapping (run.yaml rounds), commented above the mapping
            if s and not s.startswith("#") and ":" in s and not s.endswith(":") and not entry:
                assert lines[i - 1].strip().startswith("#"), f"{name}:{i + 1} has no comment: {s}"


def test_written_defaults_roundtrip(tmp_path):
    P.write_defaults(tmp_path)
    for name, model in P.FILES.items():
        assert P.load(tmp_path / name, model) == model()


def _bad(tmp_path, text: str) -> str:
    path = tmp_path / "pretrain.yaml"
    path.write_text(text)
    with pytest.raises(GpoError) as err:
        P.load(path, P.PretrainFile)
    msg = str(err.value)
    assert str(path) in msg and "fix:" in msg
    return msg


def test_wrong_type(tmp_path):
    msg = _bad(tmp_path, "pretrain:\n  steps: many\n")
    assert "pretrain.steps" in msg and "'many'" in msg and "optimizer steps" in msg


def test_out_of_range(tmp_path):
    msg = _bad(tmp_path, "pretrain:\n  lr: -0.1\n")
    assert "pretrain.lr" in msg and "-0.1" in msg and "greater than 0" in msg


def test_unknown_key_lists_allowed(tmp_path):
    msg = _bad(tmp_path, "pretrain:\n  stepz: 3\n")
    assert "pretrain.stepz" in msg and "allowed here" in msg and "steps" in msg


def test_bad_choice(tmp_path):
    msg = _bad(tmp_path, "model:\n  arch: gan\n")
    assert "model.arch" in msg and "'unet'" in msg and "'sd3'" in msg


def test_bad_yaml_and_wrong_top_level(tmp_path):
    assert "not valid YAML" in _bad(tmp_path, "pretrain: [1,\n")
    assert "mapping" in _bad(tmp_path, "- 1\n- 2\n")


def test_missing_file(tmp_path):
    with pytest.raises(GpoError, match="not found"):
        P.load(tmp_path / "nope.yaml", P.EvalFile)


def test_vocabulary_validators(tmp_path):
    path = tmp_path / "world.yaml"
    path.write_text(yaml.safe_dump({"prompts": {"text": {"words": ["CAT", "C4T"]}}}))
    with pytest.raises(GpoError, match="letters only"):
        P.load(path, P.WorldParams)
    path.write_text(yaml.safe_dump({"prompts": {"counting": {"counts": [0, 2]}}}))
    with pytest.raises(GpoError, match=">= 1"):
        P.load(path, P.WorldParams)


def test_mixed_precision_no_survives_an_unquoted_yaml_no(tmp_path):
    """`dvc exp run -S` rewrites params/gpo.yaml with `mixed_precision: no` unquoted (YAML 1.1: false)."""
    from gpo import params as P

    path = tmp_path / "gpo.yaml"
    path.write_text("train:\n  mixed_precision: no\n")
    assert P.load(path, P.GpoFile).train.mixed_precision == "no"
    path.write_text("train:\n  mixed_precision: yes\n")
    with pytest.raises(GpoError):
        P.load(path, P.GpoFile)


@pytest.mark.parametrize("text,model,field,allowed", [
    ("train:\n  beta: -1\n", P.GpoFile, "train.beta", "train.beta must be > 0 (default: 5000.0)"),
    ("render:\n  size: 4\n", P.WorldParams, "render.size", "render.size must be >= 16 and <= 512 (default: 32)"),
    ("pretrain:\n  cfg_dropout: 1\n", P.PretrainFile, "pretrain.cfg_dropout", "must be >= 0 and < 1"),
    ("prompts:\n  counting:\n    counts: []\n", P.WorldParams, "prompts.counting.counts",
     "must be a list of at least 1 item"),
])
def test_range_errors_quote_the_allowed_range_not_the_description(tmp_path, text, model, field, allowed):
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(GpoError) as err:
        P.load(path, model)
    msg = str(err.value)
    fix = msg.split("fix: ", 1)[1]
    assert f"field: {field}" in msg and allowed in fix, msg
    _, info = P._field_info(model, tuple(field.split(".")))
    assert info.description not in fix and "expected:" not in fix


def test_base_must_be_a_pipeline_folder(tmp_path, root):
    file = tmp_path / "models.yaml"
    assert P.check_base(P.ModelsFile(), file, root) == root / "release" / "base"
    with pytest.raises(GpoError) as err:
        P.check_base(P.ModelsFile(base="release/no-such-model"), file, root)
    msg = str(err.value)
    assert "does not exist" in msg and f"file: {file}" in msg and "field: base" in msg
    assert "'release/no-such-model'" in msg and "git checkout -- release/base" in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(GpoError, match="no model_index.json"):
        P.check_base(P.ModelsFile(base=str(tmp_path / "empty")), file, root)
