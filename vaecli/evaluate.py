"""Evaluation over a dataset: the single-sample ELBO (cheap, used while training) and the
importance-weighted bound of eval-iwae (Burda et al. 2015), in nats per image and bits/dim."""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from . import objectives
from .data import ImageSet

# Elements of decoder output per IWAE chunk: bounds memory whatever k is (2^24 fp32 = 64 MiB).
CHUNK_ELEMENTS = 2**24


def _batches(data: ImageSet, batch_size: int, device: torch.device):
    """(x, y) batches on `device`: images as floats, labels (or None)."""
    for start in range(0, len(data), batch_size):
        cut = slice(start, start + batch_size)
        y = data.labels[cut].to(device) if data.labels is not None else None
        yield data.to_float(data.images[cut].to(device)), y


@torch.no_grad()
def elbo_dataset(model, data: ImageSet, batch_size: int = 1000) -> dict[str, float]:
    """Mean ELBO, KL and recon (nats/image) over `data`, one posterior sample per image."""
    model.eval()
    device = model.device
    totals = torch.zeros(3, device=device, dtype=torch.float64)
    for x, y in _batches(data, batch_size, device):
        _, m = objectives.elbo(model, x, y=y)
        totals += torch.stack([m["elbo"], m["kl"], m["recon"]]).double() * x.shape[0]
    elbo, kl, recon = (totals / max(len(data), 1)).tolist()
    return {"elbo": elbo, "kl": kl, "recon": recon}


def bits_per_dim(nats_per_image: float, dims: int) -> float:
    """-log p(x) in nats per image -> bits per dimension (pixel and channel)."""
    return -nats_per_image / (dims * math.log(2))


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    n = values.numel()
    se = (values.std(unbiased=True) / math.sqrt(n)).item() if n > 1 else float("nan")
    return values.mean().item(), se


@torch.no_grad()
def iwae_dataset(model, data: ImageSet, k: int, batch_size: int = 64,
                 on_batch: Callable[[int], None] | None = None) -> dict:
    """ELBO and IWAE bound with k importance samples for every image of `data`.

    Returns nats/image means with standard errors over images, KL, recon, bits/dim (of the
    IWAE bound, the tighter of the two), timing and importance samples per second.
    """
    model.eval()
    device = model.device
    dims = math.prod(data.image_shape)
    chunk = max(1, min(k, CHUNK_ELEMENTS // (batch_size * dims)))
    parts: dict[str, list[torch.Tensor]] = {"iwae": [], "elbo": [], "kl": [], "recon": []}
    start = time.perf_counter()
    for x, y in _batches(data, batch_size, device):
        result = objectives.iwae_bound(model, x, k, chunk, y)
        for key in parts:
            parts[key].append(result[key].cpu())
        if on_batch is not None:
            on_batch(x.shape[0])
    seconds = time.perf_counter() - start
    values = {key: torch.cat(v) for key, v in parts.items()}
    iwae, iwae_se = _mean_se(values["iwae"])
    elbo, elbo_se = _mean_se(values["elbo"])
    n = len(data)
    return {
        "elbo": elbo,
        "elbo_se": elbo_se,
        "iwae": iwae,
        "iwae_se": iwae_se,
        "nll": -iwae,
        "kl": values["kl"].mean().item(),
        "recon": values["recon"].mean().item(),
        "bits_per_dim": bits_per_dim(iwae, dims),
        "elbo_bits_per_dim": bits_per_dim(elbo, dims),
        "k": k,
        "n": n,
        "dims": dims,
        "seconds": seconds,
        "samples_per_s": n * k / seconds if seconds > 0 else float("nan"),
    }
