"""The DVC stage graph of the rounds: which generate → score → train iterations exist and what each
one starts from, written to params/graph.yaml for dvc.yaml to template its stages from (`foreach`).

It is derived, never edited: from params/run.yaml `rounds` (how many rounds) and params/gpo.yaml
`groups.iterations` (N per round). A round of one iteration keeps the key and folders it always had
(`generate@2`, `round-2/groups`); a semi-online round's iterations are `generate@2.1` … `generate@2.N`
in `round-2/iter-J/`. Iteration 1 starts from the previous round's champion.json, iteration J from
iteration J−1's trained model; `evaluate@I` evaluates the last one. gpo rewrites the file whenever it
writes run.yaml (the flow, `gpo promote`), and `gpo params --sync` after a hand edit; a stage whose
graph disagrees with the params stops with that fix.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from gpo import params as P
from gpo.errors import GpoError
from gpo.io import atomic_write_text

HEADER = ("# graph.yaml: derived by gpo from params/run.yaml rounds and params/gpo.yaml groups.iterations; "
          "dvc.yaml templates the round stages from it.\n# Do not edit: `gpo params --sync` rewrites it.\n")


def iteration_key(index: int, iteration: int, iterations: int) -> str:
    return str(index) if iterations == 1 else f"{index}.{iteration}"


def iteration_dir(iteration: int, iterations: int) -> str:
    """The iteration's folder inside its round folder, with a trailing slash ('' for one-iteration rounds)."""
    return "" if iterations == 1 else f"iter-{iteration}/"


def stage_graph(run: P.RunFile, iterations: int) -> dict:
    """{'iterations': key -> {round, iteration, dir, after}, 'evaluations': round -> {prev, last}}."""
    its, evals = {}, {}
    for key, entry in run.rounds.items():
        i = int(key)
        for j in range(1, iterations + 1):
            after = (f"data/rounds/round-{entry.prev}/champion.json" if j == 1 else
                     f"data/rounds/round-{i}/{iteration_dir(j - 1, iterations)}train/train.json")
            its[iteration_key(i, j, iterations)] = {"round": i, "iteration": j, "dir": iteration_dir(j, iterations),
                                                    "after": after}
        evals[key] = {"prev": entry.prev, "last": iteration_dir(iterations, iterations)}
    return {"iterations": its, "evaluations": evals}


def iterations_of(params: Path) -> int:
    """groups.iterations of the folder's gpo.yaml (the default where there is none: a workspace of 0 rounds)."""
    f = params / "gpo.yaml"
    return (P.load(f, P.GpoFile) if f.exists() else P.GpoFile()).groups.iterations


def write_graph(params: Path) -> Path:
    """params/graph.yaml from the params folder's run.yaml and gpo.yaml (atomic)."""
    params = Path(params)
    graph = stage_graph(P.load(params / "run.yaml", P.RunFile), iterations_of(params))
    path = params / "graph.yaml"
    atomic_write_text(path, HEADER + yaml.safe_dump(graph, sort_keys=False, default_flow_style=None))
    return path


def check_graph(params: Path) -> None:
    """A clear error when params/graph.yaml is missing or disagrees with run.yaml / gpo.yaml."""
    params = Path(params)
    path = params / "graph.yaml"
    want = stage_graph(P.load(params / "run.yaml", P.RunFile), iterations_of(params))
    have = yaml.safe_load(path.read_text()) if path.exists() else None
    if have != want:
        raise GpoError("the stage graph does not match the params (groups.iterations or the rounds changed since "
                       "it was written)", file=str(path), field="groups.iterations (params/gpo.yaml)",
                       fix="run `gpo params --sync` (it rewrites params/graph.yaml), then `dvc repro` again")
