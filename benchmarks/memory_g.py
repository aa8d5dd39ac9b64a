"""Peak memory of one GPO training step as G grows: it must stay flat when G > micro_batch.

One step = the reference forward, the policy's Δ for all G members, then forward+backward micro-batch
by micro-batch (gpo/train.py `group_step`), gradient clipping and the AdamW update, on the tiny SD3
pipeline of tests/tiny_pipelines.py (full fine-tuning). Each (latent size, G, micro-batch) runs in a
fresh process, so nothing of one measurement stays in the next:
- CUDA: torch.cuda.max_memory_allocated() during the step, minus the allocation before it;
- CPU: the process's RSS high-water mark (getrusage ru_maxrss) after the step minus before it, with
  glibc told to serve every allocation ≥ 64 KiB by mmap (MALLOC_MMAP_THRESHOLD_), so freed tensors leave
  the RSS at once and the high-water mark follows live tensor memory. (tracemalloc does not see torch.)
A control row per G runs the same step without micro-batching (micro_batch = G): it shows that the
measurement does see memory that grows with G. Writes benchmarks/results/memory_g.{json,md}.

    python benchmarks/memory_g.py [--sizes 16 64] [--groups 4 8 16] [--micro-batch 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results"


def child(latent: int, G: int, micro_batch: int) -> dict:
    """One measured step in this (fresh) process."""
    sys.path.insert(0, str(ROOT))
    import torch

    from gpo.model.adapters import DiffusersBackbone
    from gpo.params import TrainParams
    from gpo.train import Group, Reference, group_step, make_accelerator
    from tests.tiny_pipelines import tiny_sd3

    torch.set_num_threads(1)
    p = TrainParams(micro_batch=micro_batch, beta=50.0, threads=1)
    acc = make_accelerator(p)
    pipe = DiffusersBackbone(tiny_sd3(latent_size=latent))
    policy = pipe.denoiser.to(acc.device)
    ref = Reference(policy, lora=False)
    policy.train()
    opt = acc.prepare(torch.optim.AdamW(policy.parameters(), lr=1e-4))
    g = torch.Generator().manual_seed(0)
    group = Group("three red circles", torch.randn(G, 4, latent, latent, generator=g), torch.rand(G, generator=g))
    embeds = pipe.encode_prompt([group.prompt])
    cuda = acc.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    before_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    stats = group_step(pipe, policy, ref, group, p, torch.Generator().manual_seed(1), 1.0, embeds=embeds, acc=acc)
    acc.clip_grad_norm_(list(policy.parameters()), 1.0)
    opt.step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    after_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    row = {"latent": latent, "G": G, "micro_batch": micro_batch, "device": str(acc.device),
           "step_seconds": round(seconds, 3), "loss": stats["loss"],
           "params": sum(q.numel() for q in policy.parameters()),
           "rss_peak_mib": round(after_rss / 2**20, 1), "step_peak_mib": round((after_rss - before_rss) / 2**20, 2),
           "measure": "ru_maxrss high-water increase during the step"}
    if cuda:
        row.update(step_peak_mib=round((torch.cuda.max_memory_allocated() - before) / 2**20, 2),
                   measure="torch.cuda.max_memory_allocated increase during the step")
    return row


def run(latent: int, G: int, micro_batch: int) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, __file__, "--child", str(latent), str(G), str(micro_batch)], env=env,
                         cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict], micro_batch: int) -> str:
    lines = [f"# Peak memory of one GPO training step vs G (tiny SD3, full fine-tuning, micro_batch {micro_batch})",
             "", f"Measure: {rows[0]['measure']}; device {rows[0]['device']}; each row a fresh process.",
             "The control column runs the same step as one batch (micro_batch = G).", "",
             "| latent | G | step peak MiB (micro_batch {mb}) | step peak MiB (control: one batch) | step s | process RSS peak MiB |"
             .format(mb=micro_batch), "|---|---|---|---|---|---|"]
    for r in rows:
        if r["micro_batch"] != micro_batch:
            continue
        c = next((x for x in rows if x["latent"] == r["latent"] and x["G"] == r["G"] and x["micro_batch"] == r["G"]),
                 None)
        lines.append(f"| {r['latent']}×{r['latent']} | {r['G']} | {r['step_peak_mib']:.2f} | "
                     f"{c['step_peak_mib'] if c else '':} | {r['step_seconds']:.2f} | {r['rss_peak_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    ap.add_argument("--sizes", nargs="+", type=int, default=[16, 64], help="latent sides (16 = the test model)")
    ap.add_argument("--groups", nargs="+", type=int, default=[4, 8, 16], help="G values")
    ap.add_argument("--micro-batch", type=int, default=4)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(*a.child)))
        return
    rows = []
    for latent in a.sizes:
        for G in a.groups:
            for mb in (a.micro_batch, G) if G != a.micro_batch else (a.micro_batch,):
                rows.append(run(latent, G, mb))
                print(json.dumps(rows[-1]), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.platform(), "python": platform.python_version(), "micro_batch": a.micro_batch}
    (OUT / "memory_g.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (OUT / "memory_g.md").write_text(markdown(rows, a.micro_batch))
    print((OUT / "memory_g.md").read_text())


if __name__ == "__main__":
    main()
