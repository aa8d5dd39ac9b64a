"""What `gpo exp` and `gpo plots` show of DVC: a readable `dvc exp show`, and the dvc.yaml plots rendered
offline (`dvc plots show` writes a page that loads vega from a CDN, blank without a network)."""

from __future__ import annotations

import html
import json
import shutil
import subprocess
import sys
from pathlib import Path

from gpo.errors import GpoError
from gpo.io import atomic_write_text


def run_dvc(root: Path, *args: str) -> str:
    """Run the environment's `dvc` in the workspace; a failure is one GpoError with DVC's own words."""
    exe = Path(sys.executable).parent / "dvc"
    exe = str(exe) if exe.exists() else (shutil.which("dvc") or "dvc")
    proc = subprocess.run([exe, *args], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise GpoError(f"`dvc {' '.join(args)}` failed: {(proc.stderr or proc.stdout).strip()[-1500:]}",
                       file=str(root / "dvc.yaml"), fix="run the pipeline first (`make run` or `dvc repro`)")
    return proc.stdout


# `gpo exp`: the columns a reader compares experiments by. DVC matches these regexes from the start of a
# column name; --keep wins over --drop and --only-changed.
EXP_HEADLINE = (r"Experiment|champion_round$|champion\.(headline|counting_heldout_accuracy|"
                r"text_heldout_mean_reward|text_heldout_accuracy)$|base\.headline$")
# dropped: dependency hashes (paths: gpo/model, data/prompts.jsonl, ...) and the metrics of the per-round
# and calibration files (data/rounds/round-I/metrics.json, ...: `cache: false`, so `!` in every experiment);
# params are `section.key` (train.beta, detector.conf) and stay when they differ
EXP_DROP = r".*/.*|headline$|(counting|text|second|detector|ocr)_.*|rounds$|last\."


def exp_show_args(all_columns: bool = False) -> list[str]:
    """The `dvc exp show` arguments of `gpo exp` (also quoted in the README)."""
    base = ["exp", "show", "--no-pager", "--md"]
    if all_columns:
        return base
    return [*base, "--only-changed", "--drop", EXP_DROP, "--keep", EXP_HEADLINE]


def render_plots(root: Path, folder: Path, revs: list[str] | None = None) -> list[str]:
    """Render the workspace's DVC plots (Vega-Lite specs of dvc.yaml `plots:`) with vl-convert into
    `folder`: <plot>.svg, <plot>.html (interactive, vega bundled) and index.html (inline SVG, no scripts).
    Returns the stems written; no plot with data is one GpoError."""
    import vl_convert as vlc

    # revs (commits or experiment names): `dvc plots diff` overlays their curves, one colour each
    args = ["plots", "diff", *revs] if revs else ["plots", "show"]
    data = json.loads(run_dvc(root, *args, "--json")).get("data", {})
    sections, missing, stems = [], [], []
    for source, plots in data.items():
        specs = [p["content"] for p in plots if p.get("type") == "vega" and p.get("content")]
        if not specs:
            missing.append(source)
            continue
        for k, spec in enumerate(specs):
            stem = Path(source).stem + (f"-{k + 1}" if len(specs) > 1 else "")
            folder.mkdir(parents=True, exist_ok=True)
            svg = vlc.vegalite_to_svg(spec)
            atomic_write_text(folder / f"{stem}.svg", svg)
            atomic_write_text(folder / f"{stem}.html", vlc.vegalite_to_html(spec, bundle=True))
            sections.append(f'<h2>{html.escape(source)}</h2>\n<p><a href="{stem}.html">interactive</a> · '
                            f'<a href="{stem}.svg">svg</a></p>\n{svg}')
            stems.append(stem)
    if not sections:
        raise GpoError("no plot has data yet", file=str(root / "dvc.yaml"), value=sorted(missing),
                       fix="run the pipeline first (`make run`, or `dvc repro report`)")
    page = ("<!doctype html>\n<html><head><meta charset='utf-8'><title>gpo: DVC plots</title></head><body>\n"
            "<h1>DVC plots (rendered offline by `gpo plots`)</h1>\n" + "\n".join(sections) +
            ("".join(f"<p>no data yet: {html.escape(m)}</p>" for m in missing)) + "\n</body></html>\n")
    atomic_write_text(folder / "index.html", page)
    return stems
