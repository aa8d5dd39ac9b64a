"""The `gpo` command: help everywhere, clear errors with exit code 2, real small commands."""

import json
import os
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
    assert {r["split"] for r in rows} == {"train", "heldout", "heldout_words", "practice"}


def test_calibrate_with_a_model_path_that_is_not_a_pipeline(tmp_path):
    assert gpo("prompts", "--out", str(tmp_path / "p.jsonl")).returncode == 0
    out = gpo("calibrate", "--model", str(tmp_path), "--prompts", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "c"))
    assert out.returncode == 2 and "model_index.json" in out.stderr and "fix:" in out.stderr


def _usage(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("Usage:"))


@pytest.mark.parametrize("name", COMMANDS)
def test_help_has_no_bool_types_and_click_usage_lines(name):
    out = gpo(name, "--help")
    assert out.returncode == 0
    assert "<bool>" not in out.stdout, out.stdout
    usage = _usage(out.stdout)
    assert "{" not in usage and "}" not in usage, usage


def test_usage_names_arguments_in_capitals():
    assert _usage(gpo("generate", "--help").stdout).endswith(" gpo generate [OPTIONS] PROMPT...")
    assert _usage(gpo("stage", "--help").stdout).endswith(" gpo stage [OPTIONS] STEP")


def test_command_list_shows_each_summary_whole():
    """`gpo --help` at 80 columns: one line per command, its docstring's first sentence, never cut short."""
    out = subprocess.run([sys.executable, "-m", "gpo", "--help"], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "80"})
    lines = out.stdout.split("Commands:\n", 1)[1].splitlines()
    listed = {line.split()[0]: line.split(None, 1)[1] for line in lines if line.strip()}
    assert set(listed) == set(COMMANDS), lines  # no continuation lines
    for info in app.registered_commands:
        summary = info.callback.__doc__.strip().split("\n\n")[0]
        assert "\n" not in summary and summary.endswith("."), summary
        assert listed[info.name] == summary, (info.name, listed[info.name])


@pytest.mark.parametrize("prompt", ["", "   "])
def test_generate_an_empty_prompt_is_one_clear_error(tmp_path, prompt):
    out = gpo("generate", "three red circles", prompt, "--out", str(tmp_path / "s"))
    assert out.returncode == 2, out.stdout
    assert "a prompt is empty" in out.stderr and "fix:" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "s").exists()


def test_generate_zero_images_is_one_clear_error(tmp_path):
    out = gpo("generate", "three red circles", "--n", "0", "--out", str(tmp_path / "s"))
    assert out.returncode == 2 and "--n" in out.stderr and "at least 1" in out.stderr and "fix:" in out.stderr
    assert not (tmp_path / "s").exists()


def test_generate_samples_with_the_sampler_of_eval_yaml(tmp_path, monkeypatch):
    """One source of truth for the sampler: --steps / --guidance default to params/eval.yaml."""
    from typer.testing import CliRunner

    from gpo import generate as gen
    from gpo import params as P

    params = tmp_path / "params"
    P.write_defaults(params)
    P.save(params / "eval.yaml", P.EvalFile(eval=P.EvalParams(steps=3, guidance_scale=1.5)))
    calls, real = [], gen.generate

    def recording_generate(pipe, texts, seeds, **kw):
        calls.append(kw)
        return real(pipe, texts, seeds, **kw)

    monkeypatch.setattr(gen, "generate", recording_generate)
    runner = CliRunner()
    args = ["generate", "one red circle", "--n", "1", "--out", str(tmp_path / "s"), "--params", str(params)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert calls[-1]["steps"] == 3 and calls[-1]["guidance_scale"] == 1.5
    res = runner.invoke(app, args + ["--steps", "2", "--guidance", "1"])
    assert res.exit_code == 0 and calls[-1]["steps"] == 2 and calls[-1]["guidance_scale"] == 1.0
    assert len(list((tmp_path / "s").glob("*.png"))) == 1
    help_text = gpo("generate", "--help").stdout
    assert "eval.steps of params/eval.yaml" in help_text and "eval.guidance_scale" in help_text.replace("\n", " ")


def _params_with_base(tmp_path, base: str):
    from gpo import params as P

    params = tmp_path / "params"
    P.write_defaults(params)
    P.save(params / "models.yaml", P.ModelsFile(base=base))
    return params


def test_params_fails_when_the_base_folder_does_not_exist(tmp_path):
    params = _params_with_base(tmp_path, "release/no-such-model")
    out = gpo("params", "--params", str(params))
    assert out.returncode == 2, out.stdout
    assert "does not exist" in out.stderr and "models.yaml" in out.stderr and "field: base" in out.stderr
    assert "models.yaml: ok" not in out.stdout
    assert gpo("params", "--params", str(_params_with_base(tmp_path / "ok", "release/base"))).returncode == 0


def test_calibrate_names_the_models_yaml_base_setting(tmp_path):
    params = _params_with_base(tmp_path, "release/no-such-model")
    out = gpo("calibrate", "--params", str(params), "--out", str(tmp_path / "c"))
    assert out.returncode == 2
    assert f"field: {params}/models.yaml: base" in out.stderr and "'release/no-such-model'" in out.stderr


def test_a_truncated_weights_file_suggests_git_checkout(tmp_path, root):
    import shutil

    model = tmp_path / "base"
    shutil.copytree(root / "release" / "base", model)
    weights = model / "denoiser" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    out = gpo("generate", "one red circle", "--model", str(model), "--out", str(tmp_path / "s"))
    assert out.returncode == 2 and "cannot load pipeline" in out.stderr
    assert "git checkout -- release/base" in out.stderr and "gpo pretrain" not in out.stderr


def test_champion_prints_its_pipeline_folder(tmp_path, root):
    from gpo import params as P
    from gpo.tracking import Tracker

    params = tmp_path / "params"
    P.write_defaults(params)
    mf = P.MlflowParams(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "art"),
                        experiment="cli-exp", model_name="cli-model")
    P.save(params / "run.yaml", P.RunFile(mlflow=mf))
    client = Tracker(mf, tmp_path).client
    client.create_registered_model("cli-model")
    base = root / "release" / "base"
    client.create_model_version("cli-model", source=str(base), tags={"pipeline_path": str(base)})
    client.set_registered_model_alias("cli-model", "champion", "1")
    out = gpo("champion", "--params", str(params))
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["champion"] == 1 and shown["pipeline"] == str(base) and shown["uri"] == "models:/cli-model@champion"


def test_torch_pin_memory_warning_from_easyocr_is_silenced_once_in_gpo():
    loaders = ("from torch.utils.data import DataLoader; import torch\n"
               "list(DataLoader([1, 2], pin_memory=True))\n"
               "print('accelerator' if torch.cuda.is_available() else 'cpu only')\n")
    plain = subprocess.run([sys.executable, "-c", loaders], capture_output=True, text=True)
    assert "pin_memory" in plain.stderr or "accelerator" in plain.stdout, plain.stderr
    ours = subprocess.run([sys.executable, "-c", "import gpo.cli\n" + loaders], capture_output=True, text=True)
    assert ours.returncode == 0 and "pin_memory" not in ours.stderr, ours.stderr
