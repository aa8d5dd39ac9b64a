"""Real reward models beyond the embedded world: a COCO-class YOLO (built from yolov8n.yaml with COCO's
80 names, random weights, no download) mapped from prompts; the τ calibration command run for real
with the shipped detector on rendered, labelled images of the embedded world; the real-model prompt sets."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpo import prompts as P
from gpo.errors import GpoError
from gpo.params import DetectorParams, WorldParams
from gpo.rewards.detector import Detector, write_yolo_dataset
from gpo.rewards.threshold import best_threshold, calibrate_threshold, load_labelled, sweep

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def coco_weights(tmp_path_factory) -> Path:
    """yolov8n built from its yaml (80 classes) with COCO's names: the shape of a COCO checkpoint."""
    from gpo.env import prepare_ultralytics

    prepare_ultralytics()
    from ultralytics import YOLO

    model = YOLO("yolov8n.yaml")
    model.model.names = dict(enumerate(P.COCO_CLASSES))
    path = tmp_path_factory.mktemp("coco") / "yolov8n-coco-random.pt"
    model.save(str(path))
    return path


@pytest.fixture(scope="module")
def coco_detector(coco_weights) -> Detector:
    return Detector(coco_weights, imgsz=64)


def test_coco_names_match_ultralytics_coco_yaml():
    import yaml
    import ultralytics

    cfg = Path(ultralytics.__file__).parent / "cfg" / "datasets" / "coco.yaml"
    names = yaml.safe_load(cfg.read_text())["names"]
    assert tuple(names[i] for i in range(80)) == P.COCO_CLASSES


def test_nouns_map_to_classes_singular_plural_and_irregular():
    classes = P.COCO_CLASSES
    for noun, cls in [("cup", "cup"), ("cups", "cup"), ("Cups", "cup"), ("buses", "bus"), ("people", "person"),
                      ("traffic lights", "traffic light"), ("knives", "knife"), ("mice", "mouse"),
                      ("wine glasses", "wine glass"), ("pairs of skis", "skis"), ("sheep", "sheep"),
                      ("benches", "bench"), ("TVs", "tv"), ("teddy-bears", "teddy bear")]:
        assert P.class_for_noun(noun, classes) == cls, noun
    assert P.class_for_noun("unicorns", classes) is None
    assert P.counting_noun("three red cups", "red") == "cups" and P.counting_noun("12 kites") == "kites"
    assert P.counting_text(2, "person", None) == "two people" and P.counting_text(1, "skis", None) == "one pair of skis"
    assert P.counting_text(3, "tv", None) == "three TVs"


def test_coco_detector_maps_prompts_to_classes_and_counts(coco_detector):
    from PIL import Image

    det = coco_detector
    assert det.names[41] == "cup" and len(det.names) == 80
    assert det.class_id("cups") == det.class_id("cup") == 41 and det.class_id("people") == 0
    prompts = [P.Prompt(text="three cups", task="counting", split="train", cls="cup", count=3),
               P.Prompt(text="two people", task="counting", split="train", cls="people", count=2),
               # a hand-written row whose cls is not a class but whose text names one
               P.Prompt(text="four dogs", task="counting", split="train", cls="hound", count=4)]
    assert [det.prompt_class(p) for p in prompts] == [41, 0, 16]
    images = [Image.new("RGB", (32, 32), c) for c in ("white", "gray", "black")]
    scores = det.score(images, prompts)  # random weights: real predictions, whatever they find
    assert len(scores) == 3 and all(s.raw.startswith("k=") and 0.0 <= s.reward <= 1.0 for s in scores)
    found = [int(s.raw[2:]) for s in scores]
    assert found == det.count(images, ["cup", "person", "dog"])


def test_unknown_object_names_the_prompt_file_row_and_fix(coco_weights, tmp_path):
    rows = [P.Prompt(text="two cups", task="counting", split="train", cls="cup", count=2),
            P.Prompt(text='"OPEN" on a sign', task="text", split="train", word="OPEN"),
            P.Prompt(text="three unicorns", task="counting", split="train", cls="unicorn", count=3),
            P.Prompt(text="one dragon", task="counting", split="heldout", cls="dragon", count=1)]
    path = tmp_path / "prompts.jsonl"
    P.write_prompts(rows, path)
    with pytest.raises(GpoError) as err:
        Detector(coco_weights, prompts_file=path)
    msg = str(err.value)
    assert f"{path}:3" in msg and "2 counting prompt(s)" in msg and "'unicorn'" in msg and "'dragon'" in msg
    assert "fix:" in msg and "gpo real-prompts" in msg and "detector.weights" in msg
    P.write_prompts(rows[:2], path)
    assert Detector(coco_weights, prompts_file=path).check_prompt_file(path) == 1
    # the shipped shapes detector cannot count cups: the error suggests what it can count
    with pytest.raises(GpoError, match="cannot count 'cups'") as err:
        Detector(ROOT / "release" / "detector.pt").class_id("cups")
    assert "circle" in str(err.value)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """Rendered counting images of the embedded world with YOLO labels (ultralytics layout)."""
    folder = tmp_path_factory.mktemp("labelled")
    write_yolo_dataset(folder, WorldParams(), DetectorParams(train_images=40, val_images=8, imgsz=128, seed=3))
    return folder


def test_threshold_sweep_on_rendered_images_with_the_shipped_detector(labelled, tmp_path, shipped_detector):
    out = tmp_path / "tau.json"
    report = calibrate_threshold(ROOT / "release" / "detector.pt", labelled, out, imgsz=128)
    assert json.loads(out.read_text()) == report
    assert report["images"] == 48 and report["pairs"] >= 48
    confs = [r["conf"] for r in report["sweep"]]
    assert confs == sorted(confs) and len(confs) == 19
    best = report["best"]
    assert best["accuracy"] == max(r["accuracy"] for r in report["sweep"]) >= 0.9
    # a threshold near 1 throws real detections away: the sweep sees it
    assert report["sweep"][-1]["accuracy"] < best["accuracy"]
    # the sweep's filter equals running the detector at that τ (NMS is greedy by confidence)
    items, _ = load_labelled(labelled, shipped_detector.names)
    from PIL import Image

    images = [Image.open(i.path).convert("RGB") for i in items]
    for tau in (0.25, 0.6):
        det = Detector(ROOT / "release" / "detector.pt", imgsz=128, conf=tau)
        right = [k == n for i, (cls, _) in zip(items, det.detections(images))
                 for cid, n in i.counts.items() for k in [int((cls == cid).sum())]]
        row = next(r for r in report["sweep"] if r["conf"] == tau)
        assert row["accuracy"] == sum(right) / len(right)
    assert set(report["per_class_at_best"]) <= {"circle", "square", "triangle"}


def test_counts_csv_gives_the_same_sweep(labelled, tmp_path, shipped_detector):
    items, _ = load_labelled(labelled, shipped_detector.names)
    folder = tmp_path / "csv"
    folder.mkdir()
    lines = ["image,class,count"]
    for i in items:
        name = f"{i.path.parent.name}-{i.path.name}"  # train/00000.png and val/00000.png
        (folder / name).write_bytes(i.path.read_bytes())
        lines += [f"{name},{shipped_detector.names[c]},{n}" for c, n in i.counts.items()]
    (folder / "counts.csv").write_text("\n".join(lines) + "\n")
    a = calibrate_threshold(ROOT / "release" / "detector.pt", labelled, tmp_path / "a.json", thresholds=[0.2, 0.5])
    b = calibrate_threshold(ROOT / "release" / "detector.pt", folder, tmp_path / "b.json", thresholds=[0.2, 0.5])
    assert [r["accuracy"] for r in a["sweep"]] == [r["accuracy"] for r in b["sweep"]]


def test_best_threshold_takes_the_middle_of_a_plateau():
    import numpy as np

    from gpo.rewards.threshold import Labelled

    items = [Labelled(Path("a.png"), {0: 2}), Labelled(Path("b.png"), {0: 1})]
    found = [(np.array([0, 0, 0]), np.array([0.9, 0.8, 0.15])), (np.array([0, 0]), np.array([0.7, 0.3]))]
    rows = sweep(found, items, [0.1, 0.2, 0.4, 0.6, 0.75, 0.85])
    assert [r["accuracy"] for r in rows] == [0.0, 0.5, 1.0, 1.0, 0.5, 0.0]
    assert best_threshold(rows)["conf"] == 0.4


def test_bad_labelled_folders_are_clear(tmp_path, shipped_detector):
    names = shipped_detector.names
    with pytest.raises(GpoError, match="labelled folder not found"):
        load_labelled(tmp_path / "none", names)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GpoError, match="no labelled objects"):
        load_labelled(tmp_path / "empty", names)
    from PIL import Image

    bad = tmp_path / "bad"
    bad.mkdir()
    Image.new("RGB", (8, 8)).save(bad / "x.png")
    (bad / "x.txt").write_text("0 0.5 0.5 0.2\n")
    with pytest.raises(GpoError) as err:
        load_labelled(bad, names)
    assert f"{bad / 'x.txt'}:1" in str(err.value) and "fix:" in str(err.value)
    (bad / "x.txt").write_text("7 0.5 0.5 0.2 0.2\n")
    with pytest.raises(GpoError, match="class '7' is not a class of the detector"):
        load_labelled(bad, names)
    (bad / "x.txt").unlink()
    (bad / "counts.csv").write_text("image,class,count\nx.png,circle,two\n")
    with pytest.raises(GpoError, match="count must be an integer") as err:
        load_labelled(bad, names)
    assert f"{bad / 'counts.csv'}:2" in str(err.value)
    (bad / "counts.csv").write_text("image,class,count\ny.png,circle,2\n")
    with pytest.raises(GpoError, match="image of a counts.csv row not found"):
        load_labelled(bad, names)


def test_detector_threshold_command(labelled, tmp_path):
    out = tmp_path / "t.json"
    proc = subprocess.run([sys.executable, "-m", "gpo", "detector-threshold", "--weights",
                           str(ROOT / "release" / "detector.pt"), "--labels", str(labelled / "images" / "val"),
                           "--out", str(out), "--thresholds", "0.3,0.5"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "exact-count accuracy" in proc.stdout and "detector.conf" in proc.stdout
    assert [r["conf"] for r in json.loads(out.read_text())["sweep"]] == [0.3, 0.5]


def test_detector_threshold_command_bad_weights_exit_2(labelled, tmp_path, monkeypatch, capsys):
    from gpo.cli import main

    monkeypatch.setattr(sys, "argv", ["gpo", "detector-threshold", "--weights", str(tmp_path / "no.pt"),
                                      "--labels", str(labelled)])
    with pytest.raises(SystemExit) as code:
        main()
    err = capsys.readouterr().err
    assert code.value.code == 2 and "detector weights not found" in err and "Traceback" not in err


def test_real_model_prompts_use_the_world_grammar():
    from gpo.params import CountingVocab, PromptParams, TextVocab
    from gpo.world.dataset import build_prompts

    table = P.real_model_prompts()
    same = build_prompts(PromptParams(counting=CountingVocab(classes=list(P.COCO_CLASSES), colors=[],
                                                             counts=[1, 2, 3, 4, 5, 6], heldout_per_count=10),
                                      text=TextVocab(words=list(P.REAL_WORDS), templates=list(P.REAL_TEMPLATES))))
    assert table == same
    counting = [q for q in table if q.task == "counting"]
    assert len(counting) == 80 * 6 and {q.cls for q in counting} == set(P.COCO_CLASSES)
    texts = {q.text for q in counting}
    assert {"three cups", "two people", "one pair of skis", "four traffic lights", "one person"} <= texts
    assert sum(q.split == "heldout" for q in counting) == 6 * 10
    text = [q for q in table if q.task == "text"]
    assert len(text) == 90 * 4 and all(f'"{q.word}"' in q.text for q in text)
    assert len({q.word for q in text if q.split == "heldout_words"}) == 16


def test_real_prompts_command_checks_classes_and_writes_world_yaml(tmp_path, coco_weights, monkeypatch, capsys):
    from gpo.cli import main

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["gpo", "real-prompts", *args])
        try:
            main()
        except SystemExit as e:
            return e.code, capsys.readouterr()
        return 0, capsys.readouterr()

    code, out = run("--out", str(tmp_path / "p.jsonl"), "--classes", "cup,dog,person", "--counts", "1,2,3",
                    "--heldout-per-count", "1", "--detector", str(coco_weights), "--world", str(tmp_path / "w" / "world.yaml"))
    assert code == 0, out.err
    rows = P.read_prompts(tmp_path / "p.jsonl")
    assert {q.text for q in rows if q.task == "counting"} >= {"one cup", "two dogs", "three people"}
    code, out = run("--out", str(tmp_path / "x.jsonl"))  # the defaults: 80 COCO classes x 6 counts, 90 words x 4
    assert code == 0 and len(P.read_prompts(tmp_path / "x.jsonl")) == 480 + 360
    # the world.yaml it wrote makes `gpo prompts` produce the same table
    monkeypatch.setattr(sys, "argv", ["gpo", "prompts", "--params", str(tmp_path / "w"), "--out", str(tmp_path / "q.jsonl")])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code in (0, None)
    assert P.read_prompts(tmp_path / "q.jsonl") == rows
    code, out = run("--out", str(tmp_path / "bad.jsonl"), "--classes", "cup,unicorn", "--heldout-per-count", "1",
                    "--detector", str(coco_weights))
    assert code == 2 and "cannot count 'unicorn'" in out.err and "fix:" in out.err
    code, out = run("--out", str(tmp_path / "bad.jsonl"), "--counts", "0,2")
    assert code == 2 and "counts" in out.err and "Traceback" not in out.err
