"""Models. Importing this package imports no torch: the members' cards (`*_config.py`) are read by
the config and shell completion; the model classes and `build`/`from_config` (factory.py) load
on first use."""

from __future__ import annotations

import importlib

_LAZY = {"build": "factory", "from_config": "factory", "spec_from_config": "factory",
         "AE": "vae", "HVAE": "vae", "VAE": "vae", "LatentModel": "vae", "PointMass": "vae",
         "CategoricalVAE": "categorical", "Ladder": "ladder", "VQVAE": "vqvae",
         "ModelSpec": "spec", "VAESpec": "vae_config", "from_flat": "spec", "from_json": "spec"}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
