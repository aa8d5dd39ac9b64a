"""A real round on a tiny pipeline: generate → score → train → evaluate, files on disk, champion chain.

The reward here is a real, deterministic image statistic (brightness), so a random tiny model has
reward spread; the YOLO/EasyOCR scorers are exercised in test_reward_models.py and the calibration test.
"""

import json

import numpy as np
import pandas as pd

from gpo.evaluate import Scorers
from gpo.model.build import build_pipeline
from gpo.params import EvalParams, GpoFile, GroupParams, ModelParams, PromptParams, TrainParams
from gpo.rewards.arith import Score
from gpo.round import read_record, rounds_markdown, run_rounds
from gpo.world.dataset import build_prompts

TINY = ModelParams(arch="sd3", text_width=32, text_layers=1, dit_width=32, dit_layers=1, attention_head_dim=8)


class Brightness:
    """Reward = mean brightness; 'correct' when above 0.5."""

    def score(self, images, prompts):
        vals = [float(np.asarray(im, dtype=np.float32).mean() / 255) for im in images]
        return [Score(v, v > 0.5, f"{v:.3f}") for v in vals]


def tiny_round(tmp_path, iterations: int):
    """A random tiny base, the prompt table, params for a 4-group round and brightness scorers."""
    base = tmp_path / "base"
    build_pipeline(TINY, seed=0).save_pretrained(base, safe_serialization=True)
    prompts = build_prompts(PromptParams())
    cfg = GpoFile(groups=GroupParams(group_size=4, prompts_per_round=4, iterations=iterations, steps=2, batch_size=16),
                  train=TrainParams(epochs=1, groups_per_step=2, draws=1, lr=1e-3, beta=10.0, threads=1))
    e = EvalParams(counting_seeds=1, text_seeds=1, heldout_word_seeds=1, steps=2, batch_size=64, gt_images=10)
    s = Scorers(Brightness(), Brightness())
    return base, prompts, cfg, e, s


def test_two_rounds_chain_from_the_champion(tmp_path):
    base, prompts, cfg, e, s = tiny_round(tmp_path, iterations=1)
    rows = run_rounds(base, 2, tmp_path / "rounds", prompts, cfg, e, s, progress=False)
    assert [r["round"] for r in rows] == [0, 1, 2]
    r1 = tmp_path / "rounds" / "round-1"
    groups = pd.read_parquet(r1 / "groups" / "rewards.parquet")
    assert len(groups) == 16 and groups["seed"].is_unique
    assert {"prompt", "seed", "raw", "reward", "group_mean", "group_std", "advantage", "dropped"} <= set(groups)
    assert all((r1 / "groups" / p).exists() for p in groups["path"])
    assert (r1 / "train" / "pipeline" / "model_index.json").exists()
    record = read_record(r1)
    assert set(record["seconds"]) == {"generate", "score", "train", "evaluate"}
    assert set(record["decision"]) == {"promote", "gain", "threshold", "reason", "flagged", "second_gain", "unmatched"}
    # round 2 starts from the best model so far
    champion_after_1 = rows[1]["model"] if rows[1]["champion"] else str(base)
    assert rows[2]["started_from"] == champion_after_1
    md = rounds_markdown(rows)
    assert "| 2 |" in md and "counting acc, 1 asked" in md  # the per-count table: a "draw fewer" shift shows
    assert md.count("\n| 2 |") == 2
    # a re-run with everything done reads the records back instead of recomputing
    again = run_rounds(base, 2, tmp_path / "rounds", prompts, cfg, e, s, progress=False)
    assert [r["headline"] for r in again] == [r["headline"] for r in rows]


def test_a_rerun_with_the_same_results_writes_the_same_dvc_outputs(tmp_path):
    """dvc.lock hashes every output: seconds, MLflow run ids and versions live beside them (timings/,
    run.json), so running the same round again leaves every output byte-identical and dvc.lock unchanged."""
    base, prompts, cfg, e, s = tiny_round(tmp_path, iterations=2)

    def outputs(folder):
        return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()
                and "timings" not in f.parts and f.name != "run.json" and f != folder / "rounds.json"}

    run_rounds(base, 1, tmp_path / "a", prompts, cfg, e, s, progress=False)
    first = outputs(tmp_path / "a")
    assert {"round-1/iter-2/groups/generate.json", "round-1/iter-1/train/train_log.json", "round-1/eval/round.json",
            "round-1/eval/summary.json", "round-1/champion.json", "round-0/champion.json"} <= set(first)
    assert all(b"seconds" not in first[k] for k in first if k.endswith(".json"))
    assert "seconds" in read_record(tmp_path / "a" / "round-1")  # still there for the table and MLflow
    timings = tmp_path / "a" / "round-1" / "iter-1" / "timings"
    assert json.loads((timings / "train.json").read_text())["seconds"] > 0
    import shutil

    shutil.rmtree(tmp_path / "a")
    run_rounds(base, 1, tmp_path / "a", prompts, cfg, e, s, progress=False)
    second = outputs(tmp_path / "a")
    assert second.keys() == first.keys()
    assert [k for k in first if first[k] != second[k]] == []


def test_a_corrupt_image_is_named_then_regenerated_identically(tmp_path):
    import pytest

    from gpo.errors import GpoError
    from gpo.groups import generate_groups, load_images

    pipe = build_pipeline(TINY, seed=0)
    prompts = [p for p in build_prompts(PromptParams()) if p.split == "train"][:2]
    g = GroupParams(group_size=3, steps=2, batch_size=8)
    table = generate_groups(pipe, prompts, g, 1, tmp_path, progress=False)
    victim = tmp_path / table.path[4]
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])  # truncated, as a bad copy or a full disk leaves it
    with pytest.raises(GpoError, match="cannot read a generated image") as err:
        load_images(table, tmp_path)
    assert str(victim) in str(err.value)
    mtimes = {p: (tmp_path / p).stat().st_mtime_ns for p in table.path}
    generate_groups(pipe, prompts, g, 1, tmp_path, progress=False)
    changed = [p for p in table.path if (tmp_path / p).stat().st_mtime_ns != mtimes[p]]
    assert changed == [table.path[4]]  # only the corrupt image was generated again ...
    assert victim.read_bytes() == good  # ... and it is the same image (recorded seed)


def test_a_semi_online_round_chains_its_iterations_and_resumes(tmp_path):
    """groups.iterations = 2 with K = 2 draws: iteration 2 is generated by iteration 1's model, on the prompts
    and seeds of the chain's next batch; the round's model is iteration 2's; a killed iteration 2 resumes
    (its finished generate/score kept, iteration 1 untouched) to the same weights as an uninterrupted run."""
    from safetensors.torch import load_file

    from gpo.groups import pick_prompts
    from gpo.round import RoundDir, batch_index, improve

    base = tmp_path / "base"
    build_pipeline(TINY, seed=0).save_pretrained(base, safe_serialization=True)
    prompts = build_prompts(PromptParams())
    cfg = GpoFile(groups=GroupParams(group_size=4, prompts_per_round=2, steps=2, batch_size=16, iterations=2),
                  train=TrainParams(epochs=1, groups_per_step=1, lr=1e-3, beta=10.0, threads=1, draws=2))
    s = Scorers(Brightness(), Brightness())
    imp = improve(1, base, tmp_path / "a" / "round-1", prompts, cfg, s, progress=False)
    rd = RoundDir(tmp_path / "a" / "round-1", 2)
    assert imp.model == rd.iteration(2).model and (imp.model / "model_index.json").exists()
    starts = [json.loads(p.step_file("generate").read_text())["start_model"] for p in rd.parts]
    assert starts[0] == str(base) and starts[1].endswith("round-1/iter-1/train/pipeline")
    second = pd.read_parquet(rd.iteration(2).rewards)
    want = pick_prompts(prompts, 2, batch_index(1, 2, 2), cfg.groups.seed, cfg.groups.text_share, cfg.groups.text_pool)
    assert list(dict.fromkeys(second.prompt)) == [p.text for p in want] and batch_index(2, 1, 2) == 3
    assert len(imp.rewards) == 16 and set(imp.seconds) == {"generate", "score", "train"}
    # kill iteration 2 after its scoring: training resumes from there, iteration 1 is kept
    cut = tmp_path / "b" / "round-1"
    improve(1, base, cut, prompts, cfg, s, progress=False)
    import shutil

    shutil.rmtree(cut / "iter-2" / "train")
    kept = (cut / "iter-1" / "train" / "train.json").stat().st_mtime_ns
    again = improve(1, base, cut, prompts, cfg, s, progress=False)
    assert (cut / "iter-1" / "train" / "train.json").stat().st_mtime_ns == kept
    w = lambda m: load_file(next((m / "denoiser").glob("*.safetensors")))  # noqa: E731
    a, b = w(imp.model), w(again.model)
    assert all(np.allclose(a[k].numpy(), b[k].numpy(), atol=1e-6) for k in a)


def test_reference_round_measures_every_iteration_against_the_round_start(tmp_path):
    """train.reference: round: iterations 2 and 3 start from the previous iteration's model but are measured
    against the round's start (the base), as their resume stamps record; so iteration 2's first logged Δ is
    not 0 (with the default it is 0: the start is the reference). Iteration 1 is the same either way.
    step_train without the round's start is refused with the fix."""
    import pytest

    from gpo.errors import GpoError
    from gpo.model.build import load_pipeline
    from gpo.resume import STAMP, weights_digest
    from gpo.round import RoundDir, improve, step_train

    base, prompts, cfg, _, s = tiny_round(tmp_path, iterations=3)
    firsts, stamps = {}, {}
    for kind in ("iteration", "round"):
        # float32, so that a policy equal to its reference gives Δ = 0 exactly (see test_train)
        c = cfg.model_copy(update={"train": cfg.train.model_copy(update={"reference": kind, "mixed_precision": "no"})})
        improve(1, base, tmp_path / kind / "round-1", prompts, c, s, progress=False)
        rd = RoundDir(tmp_path / kind / "round-1", 3)
        firsts[kind] = [json.loads((part.train / "train_log.json").read_text())[0] for part in rd.parts]
        stamps[kind] = [json.loads((part.train / "checkpoints" / STAMP).read_text())["reference"] for part in rd.parts]
    for key in ("delta_above", "delta_below"):
        assert firsts["iteration"][0][key] == firsts["round"][0][key] == 0.0
        assert firsts["iteration"][1][key] == 0.0 and firsts["round"][1][key] != 0.0
    base_digest = weights_digest(load_pipeline(base).denoiser)
    assert stamps["iteration"] == ["start"] * 3
    assert stamps["round"] == ["start", base_digest, base_digest]
    c = cfg.model_copy(update={"train": cfg.train.model_copy(update={"reference": "round"})})
    with pytest.raises(GpoError, match="round_start"):
        step_train(base, RoundDir(tmp_path / "round" / "round-1", 3).iteration(1), c, progress=False)


def test_the_stage_graph_of_semi_online_rounds(tmp_path):
    """params/graph.yaml follows run.yaml and groups.iterations (rewritten on every save); one-iteration rounds
    keep their stage keys and folders; a stale graph stops a stage with the fix."""
    import pytest
    import yaml

    from gpo import params as P
    from gpo.errors import GpoError
    from gpo.graph import stage_graph
    from gpo.stages import Workspace, run_stage

    P.write_defaults(tmp_path / "params")
    one = stage_graph(P.RunFile().with_rounds(2), 1)
    assert one["iterations"]["2"] == {"round": 2, "iteration": 1, "dir": "", "after": "data/rounds/round-1/champion.json"}
    assert one["evaluations"] == {"1": {"prev": 0, "last": ""}, "2": {"prev": 1, "last": ""}}
    three = stage_graph(P.RunFile().with_rounds(2), 3)
    assert list(three["iterations"]) == ["1.1", "1.2", "1.3", "2.1", "2.2", "2.3"]
    assert three["iterations"]["2.1"]["after"] == "data/rounds/round-1/champion.json"
    assert three["iterations"]["2.3"] == {"round": 2, "iteration": 3, "dir": "iter-3/",
                                          "after": "data/rounds/round-2/iter-2/train/train.json"}
    assert three["evaluations"]["2"] == {"prev": 1, "last": "iter-3/"}
    cfg = P.load(tmp_path / "params" / "gpo.yaml", GpoFile)
    P.save(tmp_path / "params" / "gpo.yaml", cfg.model_copy(update={"groups": cfg.groups.model_copy(update={"iterations": 3})}))
    assert yaml.safe_load((tmp_path / "params" / "graph.yaml").read_text()) == three
    # a hand edit (as `dvc exp run -S params/gpo.yaml:groups.iterations=2` makes) leaves the graph stale
    text = (tmp_path / "params" / "gpo.yaml").read_text().replace("iterations: 3", "iterations: 2")
    (tmp_path / "params" / "gpo.yaml").write_text(text)
    with pytest.raises(GpoError, match="stage graph") as err:
        run_stage("generate", 1, Workspace.default(tmp_path), progress=False, track=False, iteration=1)
    assert "gpo params --sync" in str(err.value) and "graph.yaml" in str(err.value)
