"""Property tests: random params files and prompt rows either load or raise the project's GpoError
(naming the file) — never a traceback from deep inside a library."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpo import params as P
from gpo.errors import GpoError
from gpo.prompts import read_prompts

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=8)
keys = st.sampled_from(["groups", "train", "eval", "rounds", "promotion", "mlflow", "prompts", "render", "detector",
                        "ocr", "model", "pretrain", "base", "beta", "lr", "x"])
docs = st.dictionaries(keys, st.one_of(values, st.dictionaries(
    st.sampled_from(["lr", "beta", "epochs", "group_size", "steps", "z", "counts", "words", "start", "prev", "y"]),
    values, max_size=4)), max_size=4)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(name=st.sampled_from(sorted(P.FILES)), doc=st.one_of(docs, values))
def test_random_params_files_load_or_raise_gpoerror(tmp_path, name, doc):
    path = tmp_path / name
    path.write_text(json.dumps(doc, default=str))  # JSON is YAML
    try:
        P.load(path, P.FILES[name])
    except GpoError as err:
        assert str(path) in str(err)


@FUZZ
@given(text=st.text(max_size=200))
def test_random_yaml_text_loads_or_raises_gpoerror(tmp_path, text):
    path = tmp_path / "gpo.yaml"
    path.write_text(text)
    try:
        P.load(path, P.GpoFile)
    except GpoError as err:
        assert str(path) in str(err)


row_values = st.one_of(scalars, st.lists(scalars, max_size=3))
rows = st.dictionaries(st.sampled_from(["text", "task", "split", "cls", "color", "count", "word", "template", "zz"]),
                       row_values, max_size=8)


@FUZZ
@given(lines=st.lists(st.one_of(rows.map(lambda r: json.dumps(r, default=str)), st.text(max_size=40)), max_size=5))
def test_random_prompt_rows_load_or_raise_gpoerror(tmp_path, lines):
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(lines))
    try:
        read_prompts(path)
    except GpoError as err:
        assert str(path) in str(err)
