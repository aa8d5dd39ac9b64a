"""The second opinion (gpo/rewards/second_opinion.py) for real on rendered images, its place in the
evaluation (gpo/evaluate.py), and the promotion guard against a model that pleases the reward model only."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from gpo.evaluate import Judged, Scorers, markdown, score_table, summarize
from gpo.metrics import mean_interval, wilson
from gpo.params import WorldParams
from gpo.promotion import decide
from gpo.prompts import HELDOUT_SPLITS, Prompt
from gpo.rewards.arith import Score, counting_score, ocr_score
from gpo.rewards.second_opinion import SecondOpinion, blobs, count, judgeable, read
from gpo.world.dataset import build_prompts, spec
from gpo.world.render import COLORS, render, render_counting

WORLD = WorldParams()
SPEC = spec(WORLD.render)
PROMPTS = build_prompts(WORLD.prompts)


def held(task: str) -> list[Prompt]:
    return [p for p in PROMPTS if p.task == task and p.split in HELDOUT_SPLITS]


def test_counts_rendered_shapes_of_every_class_and_count():
    rng = random.Random(3)
    pool = held("counting")
    chosen = [pool[i % len(pool)] for i in range(144)]  # every held-out prompt, 8 times
    right = [count(render(p, rng.randrange(2**31), SPEC).image, p.cls, color=p.color) == p.count for p in chosen]
    assert np.mean(right) >= 0.97
    # a shape of another class is not counted: three red squares hold no circle
    sq = Prompt(text="three red squares", task="counting", split="heldout", cls="square", color="red", count=3)
    im = render(sq, 11, SPEC).image
    assert count(im, "square", color="red") == 3 and count(im, "circle", color="red") == 0
    assert count(Image.new("RGB", (32, 32), (230, 228, 240)), "circle", color="blue") == 0  # empty: nothing


def superellipses(p: float, centres, r: float, k: int = 4, bg=(230, 228, 240), color=COLORS["red"]) -> Image.Image:
    """Shapes |x/r|^p + |y/r|^p ≤ 1 drawn at k× and box-filtered like the renderer: p = 2 a circle, larger p
    boxier (p = 2.5 fills 0.85 of its box, as the circles of the first flagged GPO round did), ∞ a square."""
    n = 32 * k
    yy, xx = (np.mgrid[0:n, 0:n] + 0.5) / k
    mask = np.zeros((n, n), bool)
    for cy, cx in centres:
        mask |= (np.abs((xx - cx) / r) ** p + np.abs((yy - cy) / r) ** p) <= 1
    a = mask.reshape(32, k, 32, k).mean(axis=(1, 3))[..., None]
    return Image.fromarray(((1 - a) * np.array(bg, float) + a * np.array(color, float)).round().astype(np.uint8))


def test_boxier_softer_circles_stay_circles_and_blurred_squares_stay_squares():
    centres = [(8, 8), (8, 22), (22, 15)]
    boxy = superellipses(2.5, centres, 4.0)
    found = blobs(boxy, color=COLORS["red"])
    # their box fill is past the fill boundary the second opinion used to split circles from squares (0.81)
    assert len(found) == 3 and all(b.fill > 0.83 for b in found)
    assert count(boxy, "circle", color="red") == 3 and count(boxy, "square", color="red") == 0
    assert count(superellipses(8.0, centres, 4.0), "square", color="red") == 3  # nearly square: squares
    sq = Prompt(text="three red squares", task="counting", split="heldout", cls="square", color="red", count=3)
    soft = Image.fromarray(ndimage.gaussian_filter(np.asarray(render(sq, 11, SPEC).image, float), (0.7, 0.7, 0))
                           .round().astype(np.uint8))
    assert count(soft, "square", color="red") == 3 and count(soft, "circle", color="red") == 0


def test_reads_rendered_words_letter_by_letter_including_words_outside_the_vocabulary():
    rng = random.Random(4)
    words = [p.word for p in held("text")][:40] + ["QZX", "JWV", "OQO"]  # the last ones: no such prompt
    prompts = [Prompt(text=f'"{w}" on a sign', task="text", split="heldout", word=w) for w in words]
    images = [render(p, rng.randrange(2**31), SPEC).image for p in prompts]
    got = [w for w, _ in read(images, 3, SPEC)]
    letters = np.mean([a == b for g, w in zip(got, words) for a, b in zip(g, w)])
    assert letters >= 0.95, list(zip(got, words))
    assert got[-3:] == ["QZX", "JWV", "OQO"]


def test_scores_use_the_reward_arithmetic_and_skip_what_it_cannot_judge():
    so = SecondOpinion(SPEC)
    four = Prompt(text="four blue triangles", task="counting", split="heldout", cls="triangle", color="blue", count=4)
    fewer = Prompt(text="six blue triangles", task="counting", split="heldout", cls="triangle", color="blue", count=6)
    cat = Prompt(text='"CAT" on a sign', task="text", split="heldout", word="CAT")
    cups = Prompt(text="two cups", task="counting", split="heldout", cls="cup", count=2)
    long = Prompt(text='"HELLO" on a sign', task="text", split="heldout", word="HELLO")
    im4, imcat = render(four, 5, SPEC).image, render(cat, 6, SPEC).image
    got = so.score([im4, im4, imcat, im4, imcat, im4.resize((64, 64))], [four, fewer, cat, cups, long, four])
    assert got[0] == counting_score(4, 4) and got[1] == counting_score(4, 6)  # reward 1 − 2/6
    assert got[1].reward == pytest.approx(2 / 3) and not got[1].correct
    assert got[2] == ocr_score("CAT", "CAT")
    assert got[3:] == [None, None, None]  # a COCO class, a 5-letter word, an image not of the world's size
    assert not judgeable(cups) and not judgeable(long) and judgeable(cat)


class Fixed:
    """A stand-in reward model: the same score for every image."""

    def __init__(self, score: Score):
        self.s = score

    def score(self, images, prompts):
        return [self.s for _ in images]


class Boom:
    def score(self, images, prompts):
        raise RuntimeError("second opinion crashed")


def test_the_second_opinion_judges_held_out_images_only_and_a_crash_fails_only_its_column():
    train = next(p for p in PROMPTS if p.task == "counting" and p.split == "train")
    test = held("counting")[0]
    images = [render(p, 1, SPEC).image for p in (train, test)]
    scores = Scorers(Fixed(counting_score(1, 1)), Fixed(ocr_score("", "CAT"))).score(images, [train, test])
    assert not isinstance(scores[0], Judged)  # a training image never gets the second opinion
    assert isinstance(scores[1], Judged) and scores[1].second == counting_score(test.count, test.count)
    crashed = Scorers(Fixed(counting_score(1, 1)), Fixed(ocr_score("", "CAT")), second=Boom()).score(images, [train, test])
    assert crashed[1].reward == 1.0 and np.isnan(crashed[1].second.reward) and "crashed" in crashed[1].second.error
    table = score_table([train, test], [1, 1], crashed)
    summary = summarize(table)
    assert summary["counting/heldout"]["accuracy"]["value"] == 1.0
    assert "second/counting/heldout" not in summary  # nothing judged: no second-opinion metrics
    plain = Scorers(Fixed(counting_score(1, 1)), Fixed(ocr_score("", "CAT")), second=None).score(images, [train, test])
    assert "second_reward" not in score_table([train, test], [1, 1], plain)


def test_summary_of_the_second_opinion_by_hand():
    p3 = Prompt(text="three red circles", task="counting", split="heldout", cls="circle", color="red", count=3)
    p1 = Prompt(text="one red circle", task="counting", split="heldout", cls="circle", color="red", count=1)
    # reward model right on all four; the second opinion: right, found 2 of 3, right, not judged
    seconds = [counting_score(3, 3), counting_score(2, 3), counting_score(1, 1), None]
    scores = [Judged(1.0, True, "k=3", second=seconds[0]), Judged(1.0, True, "k=3", second=seconds[1]),
              Judged(1.0, True, "k=1", second=seconds[2]), Judged(1.0, True, "k=1", second=None)]
    s = summarize(score_table([p3, p3, p1, p1], [0, 1, 0, 1], scores))
    e = s["second/counting/heldout"]
    assert e["accuracy"] == wilson(2, 3).as_dict() and e["not_judged"] == 1 and e["failed"] == 0
    assert e["mean_reward"] == pytest.approx(mean_interval([1.0, 2 / 3, 1.0]).as_dict())
    assert e["mean_reward"]["value"] == pytest.approx(8 / 9)
    assert e["agreement"] == wilson(2, 3).as_dict()  # both right on two of the three judged images
    assert e["accuracy_by_count"] == {1: wilson(1, 1).as_dict(), 3: wilson(1, 2).as_dict()}
    assert s["counting/heldout"]["accuracy"]["value"] == 1.0  # the reward model's metrics are untouched
    from gpo.calibrate import flat_metrics

    flat = flat_metrics(s)  # what the round record and MLflow (eval/...) get
    assert flat["second_counting_heldout_accuracy"] == round(2 / 3, 4)
    assert flat["second_counting_heldout_mean_reward"] == round(8 / 9, 4)
    assert "second opinion: counting accuracy" in markdown(s, "t")


# --- the promotion guard against a model that pleases the reward model only -------------------------
class GhostCounter:
    """A hackable counting reward model: it counts the shapes (components of strong contrast) and, as
    objects too, faint smudges (components of 6–30% of the image's contrast that survive an opening, so
    the thin anti-aliased rims of shapes are not counted): faint ghosts please it as much as shapes."""

    def score(self, images, prompts):
        out = []
        for im, p in zip(images, prompts):
            a = np.asarray(im.convert("RGB"), dtype=np.float32)
            bg = np.median(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]), axis=0)
            d = np.linalg.norm(a - bg, axis=2)
            d /= max(float(d.max()), 1.0)
            _, shapes = ndimage.label(d > 0.5)
            _, ghosts = ndimage.label(ndimage.binary_opening((d > 0.06) & (d < 0.3)))
            out.append(counting_score(shapes + ghosts, int(p.count)))
        return out


class ReadsTheWord:
    def score(self, images, prompts):
        return [ocr_score(p.word, p.word) for p in prompts]


def drawn(p: Prompt, seed: int, missing: int, ghosts: int) -> Image.Image:
    """The rendered image of `p` with `missing` shapes fewer, plus `ghosts` faint 4×4 smudges (15% of the
    shape colour's contrast) where no shape is."""
    from dataclasses import replace

    r = render_counting(replace(p, count=p.count - missing), seed, SPEC)
    a = np.asarray(r.image, dtype=np.float32).copy()
    bg = np.median(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]), axis=0)
    ink = np.asarray(COLORS[p.color], dtype=np.float32)
    free = [(y, x) for y in range(3, 26, 2) for x in range(3, 26, 2)
            if all(x + 4 + 2 <= b.x0 or b.x1 + 2 <= x or y + 4 + 2 <= b.y0 or b.y1 + 2 <= y for b in r.boxes)]
    placed: list[tuple[int, int]] = []
    for y, x in free:
        if len(placed) < ghosts and all(abs(y - py) >= 7 or abs(x - px) >= 7 for py, px in placed):
            placed.append((y, x))
            a[y:y + 4, x:x + 4] = bg + 0.15 * (ink - bg)
    assert len(placed) == ghosts, "no room for the ghosts"
    return Image.fromarray(a.round().clip(0, 255).astype(np.uint8))


def evaluation(scorers: Scorers, missing: int, ghosts: int) -> dict:
    counting = [p for p in held("counting") if p.count >= 3]
    text = held("text")[:12]
    plan = [(p, s) for p in counting for s in range(3)] + [(p, s) for p in text for s in range(2)]
    images = [drawn(p, 100 + s, missing, ghosts) if p.task == "counting" else render(p, 100 + s, SPEC).image
              for p, s in plan]
    prompts, seeds = [p for p, _ in plan], [s for _, s in plan]
    return summarize(score_table(prompts, seeds, scorers.score(images, prompts)))


def test_a_model_that_pleases_the_reward_model_only_is_flagged_and_never_promoted():
    scorers = Scorers(GhostCounter(), ReadsTheWord())
    champion = evaluation(scorers, missing=2, ghosts=0)  # two shapes short, honestly
    hacker = evaluation(scorers, missing=2, ghosts=2)  # the same, plus two faint ghosts
    honest = evaluation(scorers, missing=0, ghosts=0)  # really draws every shape
    rm, so = "counting/heldout", "second/counting/heldout"
    assert champion[rm]["accuracy"]["value"] == 0.0 and hacker[rm]["accuracy"]["value"] == 1.0  # the hack works
    assert hacker[so]["accuracy"]["value"] == champion[so]["accuracy"]["value"] == 0.0  # the second opinion sees none
    d = decide(hacker, champion, z=1.0)
    assert d.gain == pytest.approx(0.5) and d.gain > d.threshold  # the reward model alone would promote
    assert d.flagged and not d.promote and d.unmatched == ("counting/heldout accuracy",)
    assert d.second_gain == pytest.approx(0.0) and "FLAGGED" in d.reason
    real = decide(honest, champion, z=1.0)  # a real improvement passes the guard
    assert honest[so]["accuracy"]["value"] >= 0.97
    assert real.promote and not real.flagged


def test_the_round_table_shows_the_second_opinion_and_the_flag():
    from gpo.round import rounds_markdown

    def metrics(acc, second):
        m = {}
        for k, v in (("counting_heldout_accuracy", acc), ("text_heldout_mean_reward", 0.6), ("text_heldout_accuracy", 0.2),
                     ("text_heldout_words_mean_reward", 0.4), ("second_counting_heldout_accuracy", second),
                     ("second_text_heldout_mean_reward", 0.6)):
            m.update({k: v, k + "_low": v - 0.05, k + "_high": v + 0.05})
        return m

    flagged = {"promote": False, "gain": 0.1, "threshold": 0.02, "reason": "r", "flagged": True, "second_gain": 0.0,
               "unmatched": ["counting/heldout accuracy"]}
    rows = [{"round": 0, "metrics": metrics(0.5, 0.5), "seconds": {}, "champion": True, "decision": None},
            {"round": 1, "metrics": metrics(0.7, 0.5), "seconds": {"train": 3.0}, "champion": False, "decision": flagged}]
    md = rounds_markdown(rows).splitlines()
    assert "second opinion: counting acc" in md[0] and md[0].endswith("| champion | flag |")
    assert md[2].startswith("| 0 | 0.500 [0.450, 0.550] |") and md[2].endswith("| yes |  |")
    assert "| 0.700 [0.650, 0.750] |" in md[3] and "| 0.500 [0.450, 0.550] | 0.600 [0.550, 0.650] |" in md[3]
    assert md[3].endswith("|  | reward-model gain not matched by the second opinion: counting/heldout accuracy |")
    assert "GPO compute, all rounds: 3 s = 0.1 min (generate 0, score 0, train 3); held-out evaluation 0 s" in md
    old = [{"round": 0, "metrics": {k: v for k, v in metrics(0.5, 0.5).items() if not k.startswith("second")},
            "seconds": {}, "champion": True}]  # a record from before the second opinion: blank cells
    assert "| 0.400 [0.350, 0.450] |  |  |" in rounds_markdown(old)


def test_the_templates_follow_the_workspace_render_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("GPO_WORKSPACE", str(tmp_path))
    assert SecondOpinion().spec == SPEC  # no params/world.yaml: the defaults
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "world.yaml").write_text("render:\n  text_height: 0.5\n  size: 48\n")
    got = SecondOpinion().spec
    assert (got.text_height, got.size) == (0.5, 48) and got.gap == SPEC.gap
