"""File names from prompts/params cannot escape the workspace; unknown rounds are clear errors."""

import pytest

from gpo import params as P
from gpo.errors import GpoError
from gpo.paths import inside, safe_name
from gpo.stages import Workspace, start_champion


@pytest.mark.parametrize("text", ['../../etc/passwd', '"CAT" on a sign/../..', "..", "/abs/olute", "a\\b\x00c"])
def test_prompt_derived_names_stay_inside(tmp_path, text):
    name = safe_name(text)
    assert "/" not in name and "\\" not in name and ".." not in name and "\x00" not in name
    assert inside(tmp_path, "images", name, "1.png").parent.parent == (tmp_path / "images").resolve()


@pytest.mark.parametrize("parts", [("..", "x"), ("a", "..", "..", "x"), ("/etc/passwd",)])
def test_inside_refuses_escapes(tmp_path, parts):
    with pytest.raises(GpoError, match="escapes"):
        inside(tmp_path, *parts)


def test_a_round_that_is_not_listed_is_a_clear_error(tmp_path):
    P.write_defaults(tmp_path / "params")
    with pytest.raises(GpoError) as err:
        start_champion(Workspace.default(tmp_path), 7)
    assert "round 7 is not listed" in str(err.value) and "run.yaml" in str(err.value)
    with pytest.raises(GpoError, match="champion record is missing"):
        start_champion(Workspace.default(tmp_path), 1)  # listed, but round 0 has not run
