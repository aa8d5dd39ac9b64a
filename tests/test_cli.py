"""The `gpo` command: help everywhere, clear errors with exit code 2, real small commands."""

import json
import subprocess
import sys

import pytest

from gpo.cli import app

COMMANDS = [c.name for c in app.registered_commands]


def gpo(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "gpo", *args], capture_output=True, text=True, cwd=cwd)


def test_top_level_help_lists_commands():
    out = gpo("--help")
    assert out.returncode == 0
    for name in COMMANDS:
        assert name in out.stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help(name):
    out = gpo(name, "--help")
    assert out.returncode == 0 and "Usage" in out.stdout and "--" in out.stdout


def test_bad_params_file_exits_2_with_a_clear_message(tmp_path):
    (tmp_path / "world.yaml").write_text("prompts:\n  counting:\n    counts: [1, two]\n")
    out = gpo("prompts", "--params", str(tmp_path), "--out", str(tmp_path / "p.jsonl"))
    assert out.returncode == 2
    assert "world.yaml" in out.stderr and "prompts.counting.counts.1" in out.stderr and "'two'" in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_prompt_file_is_a_clear_error(tmp_path):
    out = gpo("calibrate", "--prompts", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "c"))
    assert out.returncode == 2 and "prompt file not found" in out.stderr and "gpo prompts" in out.stderr


def test_params_write_and_prompts(tmp_path):
    assert gpo("params", "--params", str(tmp_path), "--write").returncode == 0
    out = gpo("prompts", "--params", str(tmp_path), "--out", str(tmp_path / "p.jsonl"))
    assert out.returncode == 0, out.stderr
    rows = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"train", "heldout", "heldout_words"}


def test_calibrate_with_a_model_path_that_is_not_a_pipeline(tmp_path):
    assert gpo("prompts", "--out", str(tmp_path / "p.jsonl")).returncode == 0
    out = gpo("calibrate", "--model", str(tmp_path), "--prompts", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "c"))
    assert out.returncode == 2 and "model_index.json" in out.stderr and "fix:" in out.stderr
