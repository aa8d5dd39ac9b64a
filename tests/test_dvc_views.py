"""`gpo plots` and `gpo exp` on a real, tiny DVC repository.

`dvc plots show` writes HTML that loads vega from a CDN (blank offline): `gpo plots` renders the same
specs to SVG and self-contained HTML. `dvc exp show` prints every param, metric and dependency hash:
`gpo exp` keeps the headline metrics and the params that differ.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gpo.dvc_views import EXP_DROP, EXP_HEADLINE, exp_show_args

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, env=env)


def _gpo(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return _run(cwd, sys.executable, "-m", "gpo", *args, env={**os.environ, "GPO_WORKSPACE": str(cwd)})


def _dvc_repo(tmp_path: Path) -> Path:
    """A git + DVC repository whose one stage writes a rounds.json like the report stage's."""
    repo = tmp_path / "repo"
    (repo / "params").mkdir(parents=True)
    (repo / "src").mkdir()
    (repo / "src" / "code.py").write_text("x = 1\n")
    (repo / "params" / "gpo.yaml").write_text("train:\n  beta: 5000\n  lr: 2.0e-05\ngroups:\n  group_size: 8\n")
    writer = ("import json, os, yaml; p = yaml.safe_load(open('params/gpo.yaml')); b = p['train']['beta'];"
              "os.makedirs('data/metrics', exist_ok=True);"
              "json.dump({'rounds': 2, 'champion_round': 1, 'champion': {'headline': b / 10000, "
              "'counting_heldout_accuracy': 0.5, 'text_heldout_accuracy': 0.1, 'text_heldout_mean_reward': 0.6}, "
              "'base': {'headline': 0.4}}, open('data/metrics/rounds.json', 'w'));"
              "os.makedirs('data/rounds/round-1', exist_ok=True);"
              "json.dump({'headline': b / 10000, 'counting_heldout_accuracy': 0.5, 'text_heldout_accuracy': 0.1}, "
              "open('data/rounds/round-1/metrics.json', 'w'));"
              "json.dump([{'round': 0, 'counting_accuracy': 0.5, 'ocr_mean_reward': 0.6, 'ocr_exact': 0.1, "
              "'unseen_words_ocr_exact': 0.3}, {'round': 1, 'counting_accuracy': 0.55, 'ocr_mean_reward': b / 10000, "
              "'ocr_exact': 0.12, 'unseen_words_ocr_exact': 0.32}], "
              "open('data/metrics/rounds_curve.json', 'w'))")
    project = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    report = project["stages"]["report"]
    stage = {"cmd": f'{sys.executable} -c "{writer}"', "deps": ["src/code.py"],
             "params": [{"params/gpo.yaml": ["train", "groups"]}],
             # the project's own declarations of these two outputs
             "outs": [o for o in report["outs"] if "data/metrics/rounds_curve.json" in o],
             # + a round's metrics file, declared like the project's evaluate stage declares it
             "metrics": [*report["metrics"], {"data/rounds/round-1/metrics.json": {"cache": False}}]}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"report": stage},
                                                   "plots": [p for p in project["plots"]
                                                             if "data/metrics/rounds_curve.json" in p]}))
    (repo / ".gitignore").write_text("/data/\n/dvc_plots/\n")
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@example.org"],
                ["git", "config", "user.name", "t"], [str(BIN / "dvc"), "init", "-q"],
                [str(BIN / "dvc"), "config", "core.analytics", "false"], [str(BIN / "dvc"), "repro", "-q"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        out = _run(repo, *cmd)
        assert out.returncode == 0, (cmd, out.stdout, out.stderr)
    return repo


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = _dvc_repo(tmp_path_factory.mktemp("dvc-views"))
    out = _run(repo, str(BIN / "dvc"), "exp", "run", "-q", "-n", "beta-2000", "-S", "params/gpo.yaml:train.beta=2000")
    assert out.returncode == 0, out.stderr
    return repo


def test_gpo_plots_renders_offline_svg_and_self_contained_html(repo):
    out = _gpo(repo, "plots")
    assert out.returncode == 0, out.stderr
    folder = repo / "dvc_plots"
    svg = (folder / "rounds_curve.svg").read_text()
    assert svg.startswith("<svg") and "held-out accuracy per round" in svg
    page = (folder / "index.html").read_text()
    assert page.count("<svg") == 1 and "<script" not in page
    interactive = (folder / "rounds_curve.html").read_text()
    assert len(interactive) > 100_000  # vega, vega-lite and vega-embed bundled in
    loads = re.findall(r"<(?:script|link)[^>]+(?:src|href)=[\"']([^\"']+)", interactive)
    assert not [u for u in loads if "://" in u], loads  # nothing fetched from a CDN
    # what DVC itself writes loads vega from the network: the reason for this command
    dvc_page = _run(repo, str(BIN / "dvc"), "plots", "show", "-o", str(repo / "dvc_default"))
    assert dvc_page.returncode == 0
    assert "https://cdn.jsdelivr.net" in (repo / "dvc_default" / "index.html").read_text()


def test_gpo_plots_overlays_experiments(repo):
    """`gpo plots EXP REV`: `dvc plots diff` rendered offline. The curves are cached outputs, so an
    experiment's commit carries them (a git-ignored `cache: false` file would be missing from it)."""
    out = _gpo(repo, "plots", "beta-2000", "HEAD", "--out", "dvc_plots_diff")
    assert out.returncode == 0, out.stderr
    svg = (repo / "dvc_plots_diff" / "rounds_curve.svg").read_text()
    assert "beta-2000" in svg and "HEAD" in svg  # one legend entry per revision


def test_gpo_plots_without_data_is_one_clear_error(tmp_path):
    repo = tmp_path / "empty"
    repo.mkdir()
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"plots": [{"data/metrics/rounds_curve.json": {"x": "round"}}]}))
    assert _run(repo, str(BIN / "dvc"), "init", "--no-scm", "-q").returncode == 0
    out = _gpo(repo, "plots")
    assert out.returncode == 2 and "no plot has data yet" in out.stderr and "make run" in out.stderr
    assert not (repo / "dvc_plots").exists()


def test_gpo_exp_shows_headline_metrics_and_changed_params_only(repo):
    full = _run(repo, str(BIN / "dvc"), *exp_show_args(all_columns=True))
    out = _gpo(repo, "exp")
    assert out.returncode == 0, out.stderr
    header = [c.strip() for c in out.stdout.splitlines()[0].strip("|").split("|")]
    everything = [c.strip() for c in full.stdout.splitlines()[0].strip("|").split("|")]
    assert "src/code.py" in everything and "train.lr" in everything and "groups.group_size" in everything
    assert header[0] == "Experiment" and "champion.headline" in header and "train.beta" in header
    assert "src/code.py" not in header and "train.lr" not in header and "groups.group_size" not in header
    assert "headline" in everything and "headline" not in header  # the round file's metrics: `!` in experiments
    rows = {line.split("|")[1].strip(): line for line in out.stdout.splitlines()[2:]}
    assert any("2000" in r and "0.2" in r for r in rows.values()), out.stdout  # the experiment's own metrics
    assert "!" not in out.stdout.split("\n", 2)[2], out.stdout  # every experiment has its metrics


def test_the_report_metrics_are_cached_so_experiments_keep_them():
    """A cache: false metrics file in the git-ignored data/ is in no experiment commit: `dvc exp show` then
    prints `!` for every experiment's metrics."""
    report = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["report"]
    (entry,) = [m for m in report["metrics"] if "data/metrics/rounds.json" in m]
    assert entry == "data/metrics/rounds.json" or entry["data/metrics/rounds.json"].get("cache", True) is True
    assert re.match(EXP_DROP, "data/prompts.jsonl") and not re.match(EXP_DROP, "train.beta")
    assert re.match(EXP_DROP, "counting_heldout_accuracy") and not re.match(EXP_DROP, "detector.conf")
    assert re.match(EXP_DROP, "second_text_heldout_mean_reward")
    assert not re.match(EXP_DROP, "rounds.1.start") and not re.match(EXP_DROP, "ocr.upscale")
    assert re.match(EXP_HEADLINE, "champion.headline") and not re.match(EXP_HEADLINE, "champion.version")
