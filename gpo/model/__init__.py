"""The embedded text-to-image model: a char-level text encoder and a tiny pixel-space denoiser."""
