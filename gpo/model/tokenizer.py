"""A character-level CLIP tokenizer built in code: nothing to download, and every letter is a token.

Letter-level tokens let the tiny model spell words it never saw (held-out words) instead of
memorising one embedding per word. CLIP's normaliser lowercases, so 'CAT' and 'cat' are one prompt.
"""

from __future__ import annotations

from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def char_vocab() -> dict[str, int]:
    """Every byte-level character alone and as a word end (`c</w>`), then BOS and EOS."""
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}


def build_char_tokenizer(max_length: int = 40) -> CLIPTokenizer:
    # transformers 5: vocab_file= silently maps everything to <unk>; vocab=/merges= is the working form.
    tok = CLIPTokenizer(vocab=char_vocab(), merges=[], bos_token=BOS, eos_token=EOS, pad_token=EOS,
                        unk_token=EOS, model_max_length=max_length)
    return tok
