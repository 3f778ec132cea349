"""vaecli: train, sample and evaluate Variational Autoencoders.

The Python API mirrors the CLI:

    import vaecli
    vae = vaecli.load("runs/my-run")      # a run folder or a model.safetensors file
    images = vae.sample(16)               # (16, C, H, W) in [0, 1]

Importing this package does not import torch; `load` does.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def load(path, device="cpu"):
    """Rebuild the VAE saved at `path` (run folder or model.safetensors) on `device`."""
    from .runtime.checkpoint import load_model

    return load_model(path, device=device).model
