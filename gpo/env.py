"""The one place that makes every tool offline, quiet and workspace-local.

Imported first by `gpo/__init__.py`, so any entry point (CLI, DVC stage, Prefect task, test) gets
the same switches before ultralytics, EasyOCR, transformers, MLflow or Prefect are imported.
Every value is a default: a variable the user already exported wins.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def workspace() -> Path:
    """Root of the project checkout: `GPO_WORKSPACE`, else the nearest parent holding dvc.yaml."""
    if "GPO_WORKSPACE" in os.environ:
        return Path(os.environ["GPO_WORKSPACE"]).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").exists() and (folder / "gpo").is_dir():
            return folder
    return Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Where tool caches live (`GPO_CACHE`, default `<workspace>/.cache`); never the home folder."""
    return Path(os.environ.get("GPO_CACHE", workspace() / ".cache")).resolve()


def _switches(cache: Path) -> dict[str, str]:
    return {
        # Hugging Face: no hub calls, caches inside the project.
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": str(cache / "hf"),
        "DIFFUSERS_NO_ADVISORY_WARNINGS": "1",
        # ultralytics: no downloads, no hub sync, settings + fonts inside the project.
        "YOLO_OFFLINE": "1",
        "YOLO_CONFIG_DIR": str(cache / "ultralytics"),
        # EasyOCR would otherwise create ~/.EasyOCR.
        "EASYOCR_MODULE_PATH": str(cache / "easyocr"),
        # Prefect / MLflow / generic telemetry.
        "PREFECT_HOME": str(cache / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # matplotlib (pulled in by ultralytics) writes a font cache.
        "MPLCONFIGDIR": str(cache / "matplotlib"),
        "TORCH_HOME": str(cache / "torch"),
        "TQDM_DISABLE": os.environ.get("TQDM_DISABLE", "0"),
    }


def configure() -> Path:
    """Set the switches (as defaults) and create the cache folders. Idempotent; returns the cache."""
    cache = cache_dir()
    for key, value in _switches(cache).items():
        os.environ.setdefault(key, value)
    for key in ("HF_HOME", "YOLO_CONFIG_DIR", "EASYOCR_MODULE_PATH", "PREFECT_HOME", "MPLCONFIGDIR"):
        Path(os.environ[key]).mkdir(parents=True, exist_ok=True)
    return cache


def font_path(bold: bool = True) -> Path:
    """A TTF that ships with a pip package (matplotlib's DejaVu), so renders match on every machine."""
    import matplotlib

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name


def prepare_ultralytics() -> None:
    """Give ultralytics the font it would otherwise fetch, and turn off its own MLflow/DVC/hub hooks."""
    configure()
    fonts = Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics"
    fonts.mkdir(parents=True, exist_ok=True)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (fonts / name).exists():
            shutil.copyfile(font_path(bold=False), fonts / name)
    omp = os.environ.get("OMP_NUM_THREADS")
    from ultralytics import settings

    if omp is None:  # its import sets OMP_NUM_THREADS=1, which every process started after it would inherit
        os.environ.pop("OMP_NUM_THREADS", None)

    root = Path(os.environ["YOLO_CONFIG_DIR"])
    wanted = {"sync": False, "mlflow": False, "dvc": False, "wandb": False, "tensorboard": False,
              "clearml": False, "comet": False, "neptune": False, "raytune": False, "hub": False,
              "vscode_msg": False, "openvino_msg": False, "datasets_dir": str(root / "datasets"),
              "weights_dir": str(root / "weights"), "runs_dir": str(root / "runs")}
    wanted = {k: v for k, v in wanted.items() if k in settings.defaults}  # keys vary across versions
    if any(settings.get(k) != v for k, v in wanted.items()):
        settings.update(wanted)
