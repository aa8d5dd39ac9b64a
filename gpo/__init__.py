"""gpo: Group Preference Optimization for text-to-image diffusion models, as an MLOps loop."""

from gpo import env as _env

_env.configure()

__version__ = "0.1.0"
