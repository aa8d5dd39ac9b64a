"""File names derived from prompts or params: safe, short, and always inside their folder."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from gpo.errors import GpoError


def safe_name(text: str, max_len: int = 48) -> str:
    """'a sign that says "CAT"' → 'a-sign-that-says-cat-1f3a9c'; no separators, no dots, unique by hash."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:max_len] or "x"
    return f"{slug}-{hashlib.sha1(text.encode()).hexdigest()[:6]}"


def inside(root: Path, *parts: str) -> Path:
    """root/parts, refusing anything that resolves outside root (path traversal)."""
    root = Path(root).resolve()
    path = root.joinpath(*parts).resolve()
    if root != path and root not in path.parents:
        raise GpoError("path escapes its folder", file=str(path), fix=f"keep paths inside {root}")
    return path


def portable(path: str | Path) -> str:
    """A path as recorded in JSON records and tags: workspace-relative when inside the workspace, so
    records (DVC outputs) are byte-identical in every clone; absolute otherwise."""
    from gpo.env import workspace

    p = Path(path).resolve()
    try:
        return str(p.relative_to(workspace()))
    except ValueError:
        return str(p)


def local(recorded: str | Path) -> Path:
    """The path a `portable` record names, on this machine."""
    from gpo.env import workspace

    p = Path(recorded)
    return p if p.is_absolute() else workspace() / p
