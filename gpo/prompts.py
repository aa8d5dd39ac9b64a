"""Prompt curation: one grammar for counting and text prompts, deterministic splits, a table on disk.

The embedded world and real models share this grammar; only the vocabulary differs
(shapes and colours here, COCO class names for a COCO detector, any word list for OCR).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Literal

from gpo.errors import GpoError
from gpo.io import atomic_write_text

Task = Literal["counting", "text"]
Split = Literal["train", "heldout", "heldout_words", "practice"]
SPLITS: tuple[str, ...] = ("train", "heldout", "heldout_words", "practice")
# What every evaluation measures. `practice` prompts (words the base was never pretrained on, GPO's own
# text prompts) are trained on by GPO and never evaluated; `train` prompts are what pretraining saw.
HELDOUT_SPLITS: tuple[str, ...] = ("heldout", "heldout_words")

COUNT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

# The 80 classes of COCO 2017 in the order of their YOLO ids (ultralytics cfg/datasets/coco.yaml).
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush")

# Nouns whose English forms the regular rule gets wrong: class -> (one, many). A pair of skis is one
# COCO box, so "two pairs of skis" asks for two boxes.
NOUN_FORMS: dict[str, tuple[str, str]] = {
    "person": ("person", "people"), "mouse": ("mouse", "mice"), "knife": ("knife", "knives"),
    "sheep": ("sheep", "sheep"), "skis": ("pair of skis", "pairs of skis"),
    "scissors": ("pair of scissors", "pairs of scissors"), "broccoli": ("broccoli", "broccoli florets"),
    "tv": ("TV", "TVs"),
}

# Quoted words for the text prompts of real models: common, letters only, 3-8 letters (OCR-scorable).
REAL_WORDS: tuple[str, ...] = tuple(
    "OPEN CLOSED EXIT STOP CAFE BAKERY HOTEL PIZZA BOOKS MUSIC GARDEN COFFEE TICKETS POLICE TAXI SCHOOL "
    "LIBRARY MARKET SALE FRESH HELLO WELCOME DANGER QUIET PARKING STATION BEACH RIVER FOREST CASTLE "
    "ROBOT DRAGON PLANET ROCKET WINTER SUMMER SPRING AUTUMN SUNSET THUNDER CANDY LEMON HONEY BREAD CHEESE "
    "GARAGE STUDIO GALLERY THEATER CINEMA BANK PHARMACY DENTIST BARBER FLOWERS PUZZLE JUNGLE DESERT "
    "ISLAND HARBOR BRIDGE TUNNEL CIRCUS MAGIC LUCKY HAPPY BRAVE SMILE DREAM PEACE LOVE HOPE TRUST FOCUS "
    "ENERGY POWER SPEED GOLD SILVER COPPER IRON STONE WATER FIRE EARTH WIND CLOUD STORM SNOW RAIN".split())
REAL_TEMPLATES: tuple[str, ...] = ('a sign that says "{word}"', 'a storefront with "{word}" written above the door',
                                   'a T-shirt with the word "{word}" printed on it',
                                   'a chalkboard with "{word}" written on it')


@dataclass(frozen=True)
class Prompt:
    """One prompt with the structured fields that the reward needs (no parsing of `text` later)."""

    text: str
    task: Task
    split: Split
    cls: str | None = None  # counting: the detector class to count
    color: str | None = None  # counting: colour word, None when the vocabulary has no colours
    count: int | None = None  # counting: requested number of objects
    word: str | None = None  # text: the word the image must show
    template: str | None = None  # text: the sentence the word was put into

    @property
    def key(self) -> str:
        """A stable id for grouping (same prompt text → same group)."""
        return self.text


def plural(noun: str) -> str:
    """English plural for the small vocabularies used here ("glass" → "glasses", "bus" → "buses",
    "person" → "people")."""
    if noun in NOUN_FORMS:
        return NOUN_FORMS[noun][1]
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _norm(noun: str) -> str:
    return " ".join(noun.lower().replace("-", " ").split())


def noun_forms(cls: str) -> set[str]:
    """Every spelling of a class a prompt may use: 'cup', 'cups'; 'person', 'people'; 'pair of skis'."""
    forms = {cls, plural(cls), *NOUN_FORMS.get(cls, ())}
    return {_norm(f) for f in forms}


def class_for_noun(noun: str, classes: Iterable[str]) -> str | None:
    """The class a noun names, singular or plural, any case ('Cups' → 'cup', 'people' → 'person',
    'traffic lights' → 'traffic light'); None when no class matches."""
    key = _norm(noun)
    for cls in classes:
        if key in noun_forms(cls):
            return cls
    return None


def counting_noun(text: str, color: str | None = None) -> str:
    """The object noun of a counting prompt's text: 'three red cups' → 'cups' (the grammar's inverse)."""
    words = text.split()
    if words and (words[0].lower() in COUNT_WORDS or words[0].isdigit()):
        words = words[1:]
    if color and words and words[0].lower() == color.lower():
        words = words[1:]
    return " ".join(words)


def counting_text(count: int, cls: str, color: str | None) -> str:
    """'three red circles', 'one cup', 'two traffic lights'."""
    number = COUNT_WORDS[count] if count < len(COUNT_WORDS) else str(count)
    noun = NOUN_FORMS.get(cls, (cls,))[0] if count == 1 else plural(cls)
    return " ".join(p for p in (number, color, noun) if p)


def counting_prompts(classes: list[str], colors: list[str], counts: list[int],
                     heldout_per_count: int, seed: int) -> list[Prompt]:
    """All (count, colour, class) combinations; for each count, `heldout_per_count` (colour, class)
    pairs are held out, so held-out prompts are unseen combinations of seen words, balanced by count."""
    rng = random.Random(seed)
    pairs = [(color, cls) for color in (colors or [None]) for cls in classes]
    if heldout_per_count >= len(pairs):
        raise GpoError("heldout_per_count leaves no training prompt", field="counting.heldout_per_count",
                       value=heldout_per_count, fix=f"use a value below {len(pairs)}")
    out: list[Prompt] = []
    for count in counts:
        held = set(rng.sample(range(len(pairs)), heldout_per_count))
        for i, (color, cls) in enumerate(pairs):
            out.append(Prompt(text=counting_text(count, cls, color), task="counting",
                              split="heldout" if i in held else "train", cls=cls, color=color, count=count))
    return out


def text_prompts(words: list[str], templates: list[str], heldout_words: int, heldout_share: float,
                 seed: int, practice_words: Iterable[str] = ()) -> list[Prompt]:
    """Words × templates. `heldout_words` words never appear in training (split heldout_words);
    of the training words, a share of (template, word) combinations is held out (split heldout), always
    leaving each training word at least one training prompt. `practice_words` × templates are split
    `practice`: GPO's text prompts, never pretrained on and never evaluated. They are drawn after the
    other splits and consume no randomness, so adding them leaves every other prompt's split as it was."""
    rng = random.Random(seed + 1)
    words = list(dict.fromkeys(w.upper() for w in words))  # dedupe, keep order
    if heldout_words >= len(words):
        raise GpoError("heldout_words leaves no training word", field="text.heldout_words",
                       value=heldout_words, fix=f"use a value below {len(words)}")
    unseen = set(rng.sample(words, heldout_words))
    out: list[Prompt] = []
    for word in words:
        held = [rng.random() < heldout_share for _ in templates]
        if all(held):  # a training word keeps at least one training prompt
            held[rng.randrange(len(held))] = False
        for template, h in zip(templates, held):
            split: Split = "heldout_words" if word in unseen else ("heldout" if h else "train")
            out.append(Prompt(text=template.format(word=word), task="text", split=split, word=word,
                              template=template))
    practice = [w for w in dict.fromkeys(w.upper() for w in practice_words) if w not in words]
    out += [Prompt(text=template.format(word=word), task="text", split="practice", word=word, template=template)
            for word in practice for template in templates]
    return out


def real_model_prompts(classes: Iterable[str] = COCO_CLASSES, counts: Iterable[int] = (1, 2, 3, 4, 5, 6),
                       words: Iterable[str] = REAL_WORDS, templates: Iterable[str] = REAL_TEMPLATES, *,
                       colors: Iterable[str] = (), heldout_per_count: int = 10, heldout_words: int = 16,
                       heldout_share: float = 0.25, seed: int = 0) -> list[Prompt]:
    """The prompt table for a real text-to-image model with a COCO detector and an OCR reader: COCO
    classes × counts ('three cups', 'two people') and quoted words in sentences ('a sign that says
    "OPEN"'), with the embedded world's grammar and splits (= `gpo.world.dataset.build_prompts` of the
    same vocabulary, which is what world.yaml with these values produces)."""
    counting = counting_prompts(list(classes), list(colors), list(counts), heldout_per_count, seed)
    text = text_prompts(list(words), list(templates), heldout_words, heldout_share, seed)
    return dedupe(counting + text)


def dedupe(prompts: Iterable[Prompt]) -> list[Prompt]:
    """Drop repeated prompt texts (first one wins) so a group is never split across two rows."""
    seen: dict[str, Prompt] = {}
    for p in prompts:
        seen.setdefault(p.text, p)
    return list(seen.values())


def write_prompts(prompts: list[Prompt], path: Path) -> None:
    """One JSON object a line; atomic, so a reader never sees half a file."""
    atomic_write_text(path, "".join(json.dumps(asdict(p)) + "\n" for p in prompts))


# what a row must carry, and how to write it (the fix of a row that lacks one)
REQUIRED_FIELDS = {"text": '"text": "<the prompt sentence>"',
                   "task": '"task": "counting" (with "cls" and "count") or "text" (with "word")',
                   "split": '"split": "train", "heldout", "heldout_words" or "practice"'}


def read_prompts(path: Path, *, task: str | None = None, split: str | None = None) -> list[Prompt]:
    """Read a prompt table written by `write_prompts`, validating each row."""
    path = Path(path)
    if not path.exists():
        raise GpoError("prompt file not found", file=str(path), fix="run `gpo prompts` (or `dvc repro prompts`)")
    fields = set(Prompt.__dataclass_fields__)
    out: list[Prompt] = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("row is not an object")
            unknown = set(row) - fields
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)}")
            missing = [k for k in REQUIRED_FIELDS if k not in row]
            if missing:
                raise GpoError(f"prompt row {n} has no {' / '.join(missing)} field", file=f"{path}:{n}",
                               field=missing[0], value=line[:200],
                               fix=f"add {', '.join(REQUIRED_FIELDS[k] for k in missing)} to row {n}, or "
                                   "regenerate the file with `gpo prompts`")
            prompt = Prompt(**row)
            _check_row(prompt)
        except (ValueError, TypeError) as err:
            raise GpoError(f"malformed prompt row: {err}", file=f"{path}:{n}", value=line[:200],
                           fix="regenerate the file with `gpo prompts` or fix the row") from None
        out.append(prompt)
    if not out:
        raise GpoError("the prompt file holds no prompts", file=str(path),
                       fix="regenerate it with `gpo prompts` (params/world.yaml lists the vocabulary)")
    if task:
        out = [p for p in out if p.task == task]
    if split:
        out = [p for p in out if p.split == split]
    return out


MAX_COUNT = 300  # ultralytics' default max_det: more objects than this are never reported
OCR_WORD = re.compile(r"[A-Za-z0-9]+")  # what EasyOCR's English recognizer reads (and the reward compares)


def _check_row(p: Prompt) -> None:
    if not isinstance(p.text, str) or not p.text:
        raise ValueError("text must be a non-empty string")
    if p.task not in ("counting", "text"):
        raise ValueError(f"task must be 'counting' or 'text', got {p.task!r}")
    if p.split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {p.split!r}")
    if p.task == "counting":
        if p.split == "practice":
            raise ValueError("split 'practice' is for text prompts (GPO's own words); a counting prompt is 'train', "
                             "'heldout' or 'heldout_words'")
        if not isinstance(p.count, int) or isinstance(p.count, bool) or p.count < 1:
            raise ValueError(f"counting prompt needs an integer count >= 1, got {p.count!r}")
        if p.count > MAX_COUNT:
            raise ValueError(f"count {p.count} is more than the detector reports per image (max_det {MAX_COUNT}): "
                             "it could never be scored")
        if not isinstance(p.cls, str) or not p.cls:
            raise ValueError("counting prompt needs a class name in 'cls'")
    else:
        if not isinstance(p.word, str) or not p.word.strip():
            raise ValueError("text prompt needs a non-empty 'word'")
        if not OCR_WORD.fullmatch(p.word):
            raise ValueError(f"word {p.word!r} has characters the OCR reward cannot score: EasyOCR's English "
                             "model reads Latin letters and digits (A-Z, a-z, 0-9)")
