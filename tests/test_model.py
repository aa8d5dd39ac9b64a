"""The embedded model for real, at tiny scale: tokenizer, pretraining (+ resume), save/load, generation."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gpo.errors import GpoError
from gpo.model.build import build_pipeline, load_pipeline
from gpo.model.pipeline import TinyT2IPipeline
from gpo.model.tokenizer import build_char_tokenizer
from gpo.params import ModelParams, PretrainFile, PretrainParams, WorldParams
from gpo.pretrain import pretrain

TINY = {
    "sd3": ModelParams(arch="sd3", text_width=32, text_layers=1, dit_width=32, dit_layers=1, attention_head_dim=8),
    "unet": ModelParams(arch="unet", text_width=32, text_layers=1, unet_channels=[16, 32], attention_head_dim=8),
}


def test_char_tokenizer_spells():
    tok = build_char_tokenizer(40)
    ids = tok('a sign that says "CAT"').input_ids
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[0] == "<|startoftext|>" and pieces[-1] == "<|endoftext|>"
    assert "c" in pieces and "a" in pieces and "t" in pieces and tok.unk_token_id not in ids[1:-1]
    assert tok("DOG").input_ids != tok("GOD").input_ids  # order is kept: it can spell


def test_too_long_prompt_is_a_clear_error():
    pipe = build_pipeline(TINY["sd3"])
    with pytest.raises(GpoError, match="longer than"):
        pipe.tokenize(["x" * 100])


@pytest.mark.parametrize("arch", ["sd3", "unet"])
def test_generation_is_per_seed_and_roundtrips(tmp_path, arch):
    pipe = build_pipeline(TINY[arch])
    pipe.set_progress_bar_config(disable=True)
    a = pipe(["three red circles", 'the word "CAT"'], seeds=[1, 2], num_inference_steps=3, output_type="np").images
    b = pipe(['the word "CAT"'], seeds=[2], num_inference_steps=3, output_type="np").images
    assert a.shape == (2, 32, 32, 3) and a.dtype == np.uint8
    assert np.abs(a[1].astype(int) - b[0].astype(int)).max() <= 1  # an image depends on its own seed only
    pipe.save_pretrained(tmp_path / "p", safe_serialization=True)
    assert not list((tmp_path / "p").rglob("*.bin")) and list((tmp_path / "p").rglob("*.safetensors"))
    again = load_pipeline(tmp_path / "p")
    assert isinstance(again, TinyT2IPipeline) and again.parameterization == pipe.parameterization
    c = again(["three red circles", 'the word "CAT"'], seeds=[1, 2], num_inference_steps=3, output_type="np").images
    assert np.array_equal(a, c)


def test_load_refuses_non_pipeline(tmp_path):
    with pytest.raises(GpoError, match="model_index.json"):
        load_pipeline(tmp_path)


def _cfg(steps: int) -> PretrainFile:
    return PretrainFile(model=TINY["sd3"], pretrain=PretrainParams(steps=steps, batch_size=4, save_every=2,
                                                                   warmup_steps=1, threads=1, lr=1e-3))


def test_pretraining_learns_and_resumes_exactly(tmp_path):
    world = WorldParams()
    full = pretrain(world, _cfg(6), tmp_path / "full", progress=False)
    log = __import__("json").loads((tmp_path / "full" / "snapshots" / "step-6" / "log.json").read_text())
    assert len(log) == 6 and log[-1]["loss"] < log[0]["loss"]  # it learns something even in 6 steps
    # interrupted after 4 steps, then the same command again with steps: 6
    pretrain(world, _cfg(4), tmp_path / "cut", progress=False)
    resumed = pretrain(world, _cfg(6), tmp_path / "cut", progress=False)
    a = load_file(tmp_path / "full" / "snapshots" / "step-6" / "state.safetensors")
    b = load_file(tmp_path / "cut" / "snapshots" / "step-6" / "state.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (full / "model_index.json").exists() and (resumed / "model_index.json").exists()


def test_resolution_mismatch_is_a_clear_error(tmp_path):
    cfg = _cfg(1)
    cfg.model.resolution = 64
    with pytest.raises(GpoError, match="model.resolution"):
        pretrain(WorldParams(), cfg, tmp_path, progress=False)
