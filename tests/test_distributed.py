"""A GPO round's generation and training across 2 processes (`accelerate launch --num_processes 2 --cpu`,
torch.distributed over gloo) equal the 1-process round on the same groups and seeds.

The worker (this file run as a script) generates the groups of 5 prompts × G = 4 on the tiny SD3
pipeline with kept latents (prompts dealt to the ranks, whole groups per rank), scores them with a
pixel reward through gpo.scoring.score_groups (rank-local: each rank scores its own groups, the main
process writes the gathered table; each rank logs what it scored), and trains 2 epochs
of 3 groups per step, full fine-tuning and LoRA. Steps deal 3 groups to 2 ranks (2 + 1) and the last
step of an epoch has 2 groups, so uneven shares are exercised. Tolerance: the 2-process sum of
gradients differs from the 1-process sum only in float32 summation order, so each step's loss and
gradient norm (before clipping) agree to 1e-5 relative, and after 4 AdamW steps the weights agree within
5e-5 absolute while training moves them by 4e-3 (full) and 1e-2 (LoRA, merged); measured here: 2.5e-7
and 3.0e-8. (Adam is blind to a gradient's scale, hence the gradient-norm check: an averaged instead of
summed gradient would pass the weight check alone.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOL = 5e-5


def worker(out: Path) -> None:
    """One process of the round (of 1 or of 2): generate, score, train; the main process writes."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    from gpo.evaluate import Scorers
    from gpo.groups import generate_groups, model_inputs
    from gpo.io import atomic_write_json
    from gpo.model.adapters import DiffusersBackbone
    from gpo.model.device import process_state
    from gpo.params import GroupParams, TrainParams
    from gpo.prompts import Prompt
    from gpo.rewards.arith import Score
    from gpo.scoring import score_groups
    from gpo.train import groups_from_table, train_gpo
    from tests.tiny_pipelines import tiny_sd3

    torch.set_num_threads(1)
    state = process_state()
    prompts = [Prompt(f"{n} red circles", "counting", "train", "circle", "red", n) for n in (1, 2, 3)] + \
              [Prompt(f'"{w}" on a sign', "text", "train", word=w) for w in ("CAT", "DOG")]
    g = GroupParams(group_size=4, steps=2, batch_size=8, guidance_scale=2.0, keep_latents=True)
    pipe = DiffusersBackbone(tiny_sd3())
    t0 = time.time()
    table = generate_groups(pipe, prompts, g, 1, out / "groups", progress=False)
    gen_s = time.time() - t0
    class Red:
        """Reward = mean red channel; logs which images this rank scored."""

        def score(self, images, prompts):
            with open(out / f"scored-rank{state.process_index}.txt", "a") as f:
                f.writelines(f"{p.text}\n" for p in prompts)
            vals = [float(np.asarray(im, dtype=np.float32)[..., 0].mean() / 255) for im in images]
            return [Score(v, v > 0.5, f"{v:.4f}") for v in vals]

    table = score_groups(table, out / "groups", Scorers(Red(), Red()))
    groups = groups_from_table(table, x0=model_inputs(table, out / "groups", pipe.encode_images))
    result = {"world": state.num_processes, "generate_s": round(gen_s, 2), "n_groups": len(groups)}
    for name, lora in (("full", 0), ("lora", 2)):
        p = TrainParams(epochs=2, groups_per_step=3, micro_batch=3, lr=1e-3, beta=50.0, threads=1, mixed_precision="no",
                        lora_rank=lora, lora_alpha=4 if lora else 0)
        run = DiffusersBackbone(tiny_sd3())
        t0 = time.time()
        train_gpo(run, groups, p, out / name, progress=False)
        result[f"{name}_train_s"] = round(time.time() - t0, 2)
    if state.is_main_process:
        atomic_write_json(out / "result.json", result)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], tmp: Path) -> float:
    # CPU ranks (gloo) even where a GPU is present: the comparison is about the sharding, not the device
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    t0 = time.time()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}"
    return time.time() - t0


def test_two_processes_match_one_process(tmp_path):
    import torch
    from safetensors.torch import load_file

    one, two = tmp_path / "one", tmp_path / "two"
    s1 = _run([sys.executable, __file__, str(one)], tmp_path)
    # `--cpu` with 2 processes needs mpirun in accelerate (without it one process runs); `--multi_gpu`
    # starts torchrun's 2 processes, which join over gloo on a machine without CUDA
    s2 = _run([str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), __file__, str(two)], tmp_path)
    r1, r2 = (json.loads((d / "result.json").read_text()) for d in (one, two))
    assert r1["world"] == 1 and r2["world"] == 2 and r1["n_groups"] == r2["n_groups"] >= 4
    print(f"\n1 process: {s1:.1f} s, 2 processes: {s2:.1f} s; {r1} / {r2}")

    # generation: every image (and its kept latents) written once, byte-identical to the 1-process round
    pngs = sorted(p.relative_to(one) for p in (one / "groups" / "images").rglob("*.png"))
    assert len(pngs) == 20 and pngs == sorted(p.relative_to(two) for p in (two / "groups" / "images").rglob("*.png"))
    for rel in pngs:
        assert (one / rel).read_bytes() == (two / rel).read_bytes()
        a, b = (load_file(str((d / rel).with_suffix(".latents.safetensors")))["latents"] for d in (one, two))
        assert torch.equal(a, b)

    # scoring: rank-local (each image scored once, by the rank that generated its group), same table
    import pandas as pd

    t1, t2 = (pd.read_parquet(d / "groups" / "rewards.parquet") for d in (one, two))
    pd.testing.assert_frame_equal(t1, t2)
    scored = [(two / f"scored-rank{r}.txt").read_text().splitlines() for r in (0, 1)]
    assert sorted(scored[0] + scored[1]) == sorted((one / "scored-rank0.txt").read_text().splitlines())
    assert len(scored[0]) == 12 and len(scored[1]) == 8  # groups 0, 2, 4 and 1, 3 of G = 4

    base = None
    for name in ("full", "lora"):
        w1, w2 = (load_file(next((d / name / "pipeline" / "transformer").glob("*.safetensors"))) for d in (one, two))
        if base is None:
            from tests.tiny_pipelines import tiny_sd3
            base = tiny_sd3().transformer.state_dict()
        moved = max((w1[k] - base[k]).abs().max().item() for k in w1)
        diff = max((w1[k] - w2[k]).abs().max().item() for k in w1)
        print(f"{name}: weights moved by up to {moved:.2e}; 2-process vs 1-process max |diff| {diff:.2e}")
        assert moved > 50 * TOL, f"{name}: training barely moved the weights ({moved})"
        assert diff <= TOL, f"{name}: 2-process weights differ from 1-process by {diff} (> {TOL})"
        log1, log2 = (json.loads((d / name / "train_log.json").read_text()) for d in (one, two))
        assert len(log1) == len(log2) == 4  # 2 epochs × ceil(5 / 3) steps
        for a, b in zip(log1, log2):
            assert abs(a["loss"] - b["loss"]) <= 1e-5 * max(1.0, abs(a["loss"]))
            assert a["grad_norm"] > 0 and abs(a["grad_norm"] - b["grad_norm"]) <= 1e-5 * a["grad_norm"]
        # checkpoints and the pipeline written once, by the main process
        assert sorted(c.name for c in (two / name / "checkpoints").iterdir()) == ["step-2", "step-4"]
        if name == "lora":
            assert list((two / name / "lora").glob("*.safetensors"))


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
