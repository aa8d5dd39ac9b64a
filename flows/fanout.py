"""Fan-out of one round's generate + score over a Prefect work pool (flow `gpo-fanout`).

The round's prompts (chosen exactly as `gpo.round.step_generate` chooses them) are split into
contiguous shards; each shard is one run of the deployment `gpo-shard/<name>` on a work pool, i.e. a
separate flow run in a separate process (a process worker here; a Kubernetes job or Docker container
with the matching pool type: docs/scale_out.md). A shard calls the round's own functions,
`gpo.groups.generate_groups` and `gpo.scoring.score_groups`, on its prompts; the parent waits for all
shards and merges their tables into the round's `groups/groups.parquet` and `groups/rewards.parquet`
(images under `groups/images/`), which `gpo.round.step_train` then reads as if one process had made them.

Why the merged tables equal a one-process round: an image depends only on its prompt and seed, the
seed is `groups.seed + 1e6·round + 1000·prompt index + member` (gpo/groups.py), and a shard that starts
at global prompt index `offset` gets `groups.seed + 1000·offset` as its base seed, so every image keeps
its one-process seed; group statistics are per group and groups never straddle shards.

Shards share the round folder (a shared volume on a cluster): each writes under
`groups/shards/shard-K/` (resumable on its own: gpo/resume.py stamps) and `shard.json` last.

    python -m flows.fanout deploy --pool gpo-fanout       # work pool (process) + deployment gpo-shard/fanout
    prefect worker start --pool gpo-fanout --limit 1      # as many as you like, on any machine
    python -m flows.fanout run --round 1 --shards 4       # the fan-out flow (here, or as a deployment itself)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from prefect import flow, get_run_logger

from gpo.env import workspace
from gpo.errors import GpoError
from gpo.io import atomic_write_json

POOL = "gpo-fanout"
SHARD_FLOW = "gpo-shard"
DEPLOYMENT_NAME = "fanout"


# --- planning and merging (pure, unit-tested) ---------------------------------------------------------
def split_even(n: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges over n items, sizes differing by at most one, none empty."""
    if shards < 1:
        raise GpoError("need at least one shard", field="shards", value=shards, fix="pass 1 or more")
    k = min(shards, n)
    bounds, start = [], 0
    for i in range(k):
        stop = start + n // k + (1 if i < n % k else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def shard_group_params(groups: dict, offset: int) -> dict:
    """The group params of a shard starting at global prompt `offset`: its images keep their seeds."""
    if groups["group_size"] >= 1000:  # image_seed gives each prompt 1000 seeds
        raise GpoError("fan-out needs group_size < 1000", field="groups.group_size", value=groups["group_size"],
                       fix="use a smaller G")
    return {**groups, "seed": int(groups["seed"]) + 1000 * offset}


def _rebuild(table):
    """The table as the one-process step builds it (a DataFrame of row dicts), so column dtypes do not
    depend on how the rows were split (a shard of text prompts has no counts)."""
    import pandas as pd

    return pd.DataFrame(table.to_dict("records"))


def merge_shards(shards: list[tuple[int, Path]], groups_dir: Path) -> tuple[Any, Any]:
    """Concatenate the shard tables (group ids shifted by each shard's offset) into groups_dir/groups.parquet
    and rewards.parquet, images linked (or copied) to the same relative paths under groups_dir."""
    import pandas as pd

    from gpo.evaluate import save_table

    groups_dir = Path(groups_dir)
    manifests, rewards = [], []
    for offset, folder in sorted(shards, key=lambda s: s[0]):
        for name, into in (("groups.parquet", manifests), ("rewards.parquet", rewards)):
            path = folder / name
            if not path.exists():
                raise GpoError("a shard left no table", file=str(path), fix="re-run the fan-out (finished shards "
                               "are kept) and check that shard's flow run logs")
            t = pd.read_parquet(path)
            t["group"] = t["group"] + offset
            into.append(t)
        for rel in manifests[-1]["path"]:
            src, dst = folder / rel, groups_dir / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.tmp")
            tmp.unlink(missing_ok=True)
            try:
                os.link(src, tmp)  # same volume: no copy
            except OSError:
                shutil.copyfile(src, tmp)
            tmp.replace(dst)
    manifest = _rebuild(pd.concat(manifests, ignore_index=True))
    reward_table = _rebuild(pd.concat(rewards, ignore_index=True))
    save_table(manifest, groups_dir / "groups.parquet")
    save_table(reward_table, groups_dir / "rewards.parquet")
    return manifest, reward_table


# --- the shard: one deployment run ------------------------------------------------------------------
@flow(name=SHARD_FLOW, log_prints=True)
def shard(model: str, prompts: list[dict], groups: dict, round_index: int, offset: int, folder: str,
          workspace_dir: str, params_dir: Optional[str] = None, threads: Optional[int] = None) -> dict:
    """Generate and score the groups of `prompts` (global prompt indices offset, offset+1, ...)."""
    import torch

    from gpo.groups import generate_groups
    from gpo.model.adapters import load_any
    from gpo.params import GroupParams
    from gpo.prompts import Prompt
    from gpo.scoring import score_groups
    from gpo.stages import Workspace

    if threads:
        torch.set_num_threads(threads)
    out = Path(folder)
    t0 = time.time()
    pipe = load_any(model)
    table = generate_groups(pipe, [Prompt(**p) for p in prompts], GroupParams(**shard_group_params(groups, offset)),
                            round_index, out, progress=False)
    t1 = time.time()
    ws = Workspace.default(Path(workspace_dir), Path(params_dir) if params_dir else None)
    rewards = score_groups(table, out, ws.scorers())
    t2 = time.time()
    info = {"offset": offset, "prompts": len(prompts), "images": len(table),
            "mean_reward": float(rewards["reward"].mean()),
            "worker": os.environ.get("PREFECT__WORKER_NAME"), "host": socket.gethostname(), "pid": os.getpid(),
            "seconds": {"generate": round(t1 - t0, 2), "score": round(t2 - t1, 2)}}
    atomic_write_json(out / "shard.json", info)
    print(f"shard at prompt {offset}: {len(table)} images on worker {info['worker']} (pid {info['pid']})")
    return info


# --- the fan-out flow -------------------------------------------------------------------------------
def _wait(run_ids: list, poll_s: float, timeout_s: float) -> list:
    from prefect.client.orchestration import get_client

    deadline = time.time() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            runs = [client.read_flow_run(i) for i in run_ids]
            if all(r.state is not None and r.state.is_final() for r in runs):
                return runs
            if time.time() > deadline:
                pending = [r.name for r in runs if not (r.state and r.state.is_final())]
                raise GpoError(f"shards not finished after {timeout_s:.0f} s: {pending}", field="timeout_s",
                               value=timeout_s, fix="start workers on the pool (`prefect worker start --pool ...`) "
                               "or raise the timeout; finished shards are kept on a re-run")
            time.sleep(poll_s)


@flow(name="gpo-fanout", log_prints=True)
def fanout_round(round_index: int, model: str, round_dir: str, shards: int = 2,
                 workspace_dir: Optional[str] = None, params_dir: Optional[str] = None,
                 prompts_file: Optional[str] = None, deployment: str = f"{SHARD_FLOW}/{DEPLOYMENT_NAME}",
                 threads: Optional[int] = None, poll_s: float = 1.0, timeout_s: float = 6 * 3600,
                 iteration: int = 1) -> dict:
    """Generate + score round `round_index` (its iteration `iteration` when groups.iterations > 1) from `model`
    as `shards` deployment runs; merge into round_dir (the iteration's folder inside it)."""
    from prefect.deployments import run_deployment

    from gpo.groups import pick_prompts
    from gpo.paths import portable
    from gpo.prompts import read_prompts
    from gpo.round import RoundDir, batch_index
    from gpo.stages import Workspace

    log = get_run_logger()
    root = Path(workspace_dir) if workspace_dir else workspace()
    ws = Workspace.default(root, Path(params_dir) if params_dir else None)
    g = ws.load("gpo.yaml").groups
    prompts = read_prompts(Path(prompts_file) if prompts_file else ws.prompts)
    batch = batch_index(round_index, iteration, g.iterations)  # the prompts and seeds step_generate would draw
    chosen = pick_prompts(prompts, g.prompts_per_round, batch, g.seed, g.text_share, g.text_pool)
    rd = RoundDir(Path(round_dir).resolve(), g.iterations).parts[iteration - 1]
    t0 = time.time()
    plans = [(start, chosen[start:stop]) for start, stop in split_even(len(chosen), shards)]
    runs = []
    for k, (offset, part) in enumerate(plans):
        folder = rd.groups / "shards" / f"shard-{k}"
        params = {"model": str(Path(model).resolve()), "prompts": [asdict(p) for p in part],
                  "groups": g.model_dump(), "round_index": batch, "offset": offset, "folder": str(folder),
                  "workspace_dir": str(root), "params_dir": str(ws.params), "threads": threads}
        runs.append(run_deployment(deployment, parameters=params, timeout=0,
                                   flow_run_name=f"round-{round_index}-shard-{k}"))
    log.info(f"submitted {len(runs)} shards of round {round_index} to {deployment}")
    finished = _wait([r.id for r in runs], poll_s, timeout_s)
    failed = [r for r in finished if not r.state.is_completed()]
    if failed:
        raise GpoError(f"{len(failed)} of {len(finished)} shards did not complete: "
                       + "; ".join(f"{r.name}: {r.state.type.value} {r.state.message or ''}".strip() for r in failed),
                       fix="read the shard flow runs' logs (Prefect UI); re-run the fan-out: finished shards are kept")
    folders = [rd.groups / "shards" / f"shard-{k}" for k in range(len(plans))]
    infos = [json.loads((f / "shard.json").read_text()) for f in folders]
    manifest, rewards = merge_shards([(offset, f) for (offset, _), f in zip(plans, folders)], rd.groups)
    wall = round(time.time() - t0, 2)
    # seconds of the slowest shard per step (what the round waited for); the whole fan-out's wall time too
    # (timings/, not a DVC output; workers, hosts and pids vary from run to run too), then the step markers
    atomic_write_json(rd.seconds_file("generate"), {"seconds": max(i["seconds"]["generate"] for i in infos),
                                                    "fanout": {"shards": infos, "wall_seconds": wall}})
    atomic_write_json(rd.seconds_file("score"), {"seconds": max(i["seconds"]["score"] for i in infos)})
    atomic_write_json(rd.step_file("generate"), {
        "start_model": portable(model), "images": len(manifest),
        "fanout": {"deployment": deployment, "shards": [{k: i[k] for k in ("offset", "prompts", "images")} for i in infos]}})
    atomic_write_json(rd.step_file("score"), {"images": len(manifest)})
    workers = sorted({str(i["worker"]) for i in infos})
    print(f"round {round_index}: {len(manifest)} images in {len(infos)} shards on workers {workers}, {wall} s")
    return {"images": len(manifest), "groups": int(manifest["group"].nunique()), "shards": infos,
            "workers": workers, "mean_reward": float(rewards["reward"].mean()), "wall_seconds": wall}


# --- setup: the pool and the deployment ---------------------------------------------------------------
def ensure_pool(pool: str = POOL, pool_type: str = "process") -> None:
    """Create the work pool if it does not exist (a user's Kubernetes/Docker pool is made the same way)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=pool, type=pool_type))
        except ObjectAlreadyExists:
            pass


def deploy_shard(pool: str = POOL, name: str = DEPLOYMENT_NAME, source: Optional[Path] = None,
                 job_variables: Optional[dict] = None) -> str:
    """Register `gpo-shard/<name>` on `pool`; workers load the flow from `source` (the project folder)."""
    ensure_pool(pool)
    src = Path(source or workspace()).resolve()
    flow_obj = shard.from_source(source=str(src), entrypoint="flows/fanout.py:shard")
    flow_obj.deploy(name=name, work_pool_name=pool, job_variables=job_variables or {},
                    print_next_steps=False, ignore_warnings=True, description="generate + score one shard of a round")
    return f"{SHARD_FLOW}/{name}"


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m flows.fanout", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("deploy", help="create the work pool and the shard deployment (needs PREFECT_API_URL)")
    d.add_argument("--pool", default=POOL)
    d.add_argument("--name", default=DEPLOYMENT_NAME)
    r = sub.add_parser("run", help="fan out one round's generate + score and merge (needs workers on the pool)")
    r.add_argument("--round", type=int, required=True, dest="round_index")
    r.add_argument("--model", default=None, help="start model (default: models.yaml base)")
    r.add_argument("--shards", type=int, default=2)
    r.add_argument("--round-dir", default=None, help="default data/rounds/round-I")
    r.add_argument("--iteration", type=int, default=1, help="which of the round's groups.iterations (1..N)")
    r.add_argument("--deployment", default=f"{SHARD_FLOW}/{DEPLOYMENT_NAME}")
    a = ap.parse_args(argv)
    if a.cmd == "deploy":
        print(f"deployment {deploy_shard(a.pool, a.name)} on pool {a.pool}")
        return
    from gpo.stages import Workspace

    ws = Workspace.default(workspace())
    model = a.model or str(ws.resolve(ws.load("models.yaml").base))
    out = fanout_round(a.round_index, model, a.round_dir or str(ws.rounds / f"round-{a.round_index}"),
                       shards=a.shards, deployment=a.deployment, iteration=a.iteration)
    print(json.dumps({k: v for k, v in out.items() if k != "shards"}))


if __name__ == "__main__":
    main()
