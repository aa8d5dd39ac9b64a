"""What a folder of partial results was made from, so that a re-run resumes only work that is still valid.

A killed step leaves finished files behind (images, checkpoints); re-running it keeps them, but only
if they were made from the same inputs. Each resumable folder holds a stamp (`.inputs.json`) with a
fingerprint of those inputs: weights, params, the prompt/seed plan. Same fingerprint: resume. Other
fingerprint (or none, with files present): the folder is emptied first, because its files belong to
another computation (e.g. DVC re-runs a stage after a param change, and the stage's outputs persist).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from gpo.io import atomic_write_json

STAMP = ".inputs.json"


def digest(obj: Any) -> str:
    """sha256 of a JSON-able object (sorted keys): a short, stable fingerprint."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@torch.no_grad()
def weights_digest(module: torch.nn.Module) -> str:
    """Fingerprint of a module's weights: name, shape, dtype and two float64 reductions per tensor.
    Any training step changes it; one pass over the weights, no copy of the whole model."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.is_floating_point() and t.numel():
            d = t.double()
            h.update(f"{d.sum().item():.17g}:{d.abs().sum().item():.17g}:{d.square().sum().item():.17g}".encode())
        elif t.numel():
            h.update(f"{int(t.long().sum())}".encode())
    return h.hexdigest()[:16]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def resume_or_reset(folder: Path, fingerprint: dict) -> bool:
    """True when `folder` already holds partial results of this very computation (keep them);
    otherwise empty it, stamp it with `fingerprint` and return False."""
    folder = Path(folder)
    stamp = folder / STAMP
    if stamp.exists():
        try:
            if json.loads(stamp.read_text()) == json.loads(json.dumps(fingerprint, default=str)):
                for tmp in folder.rglob(".*.tmp*"):  # temp files of writes a kill -9 cut short (gpo/io.py)
                    if tmp.is_file():
                        tmp.unlink()
                return True
        except json.JSONDecodeError:
            pass  # a damaged stamp proves nothing about the files: start over
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    atomic_write_json(stamp, fingerprint)
    return False
