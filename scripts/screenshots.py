"""Screenshots of what a user sees, taken in headless Chromium from this workspace (docs/screenshots/):

    python scripts/screenshots.py [--experiment gpo-embedded] [--model gpo-embedded]

- mlflow_run.png: a round's MLflow run, its counting grid (each tile: asked vs found, framed right/wrong)
- mlflow_runs.png: the experiment's training runs (each run spans its round)
- mlflow_version.png: the newest registered version, its promotion decision as description and tags
- dvc_plots.png: `gpo plots`'s offline page (dvc_plots/index.html: inline SVG, nothing from a CDN)

Needs a workspace after `make run` (or the study's experiment: --experiment gpo-study --model gpo-study)
and Debian's `chromium-headless-shell` (`apt-get install chromium-headless-shell`: installed here when
missing). MLflow's UI is served on a free local port for the shots and stopped after.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "screenshots"


def chromium() -> str:
    exe = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    if exe is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium-headless-shell"], check=True)
        exe = shutil.which("chromium-headless-shell")
    return exe


def shoot(exe: str, url: str, path: Path, size: str = "1500,1100") -> None:
    subprocess.run([exe, "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--window-size={size}",
                    "--virtual-time-budget=20000", f"--screenshot={path}", url], check=True, capture_output=True,
                   timeout=180)
    from PIL import Image

    Image.open(path).convert("RGB").quantize(colors=256).save(path, optimize=True)  # ≈ 3× smaller, same look
    print(f"wrote {path.relative_to(ROOT)}  ({url})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", default="gpo-embedded")
    ap.add_argument("--model", default="gpo-embedded")
    ap.add_argument("--round", default="1", help="the round whose run page is shown")
    a = ap.parse_args()
    import mlflow

    uri = f"sqlite:///{ROOT / 'mlflow' / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, uri)
    exp = client.get_experiment_by_name(a.experiment)
    if exp is None:
        sys.exit(f"no MLflow experiment {a.experiment!r} in {uri}: run `make run` first")
    run = client.search_runs([exp.experiment_id], f"tags.round = '{a.round}'", max_results=1,
                             order_by=["attributes.start_time DESC"])[0]
    version = max(int(v.version) for v in client.search_model_versions(f"name = '{a.model}'"))
    exe = chromium()
    OUT.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "ui", "--host", "127.0.0.1", "--port",
                               str(port), "--backend-store-uri", uri], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(1)
        time.sleep(3)
        shoot(exe, f"{base}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}/artifacts/grids/model_counting_grid.png",
              OUT / "mlflow_run.png")
        shoot(exe, f"{base}/#/experiments/{exp.experiment_id}/runs", OUT / "mlflow_runs.png")
        shoot(exe, f"{base}/#/models/{a.model}/versions/{version}", OUT / "mlflow_version.png")
    finally:
        server.terminate()
        server.wait(timeout=30)
    page = ROOT / "dvc_plots" / "index.html"
    plots = subprocess.run([str(Path(sys.executable).parent / "gpo"), "plots"], cwd=ROOT, capture_output=True, text=True)
    if plots.returncode != 0:  # no rounds in this workspace yet: say so, keep the MLflow shots
        print(f"no dvc_plots.png: `gpo plots` failed: {plots.stderr.strip()[-400:]}")
        return
    shoot(exe, page.as_uri(), OUT / "dvc_plots.png", size="1100,1400")


if __name__ == "__main__":
    main()
