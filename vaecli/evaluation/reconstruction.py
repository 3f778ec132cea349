"""How close reconstructions are to their images (vae eval-recon): PSNR, SSIM, LPIPS, rFID and a
sharpness ratio, on a fixed random subset of a split.

Reconstructions are what `vae reconstruct` shows (the decoder's mean image at the posterior mean),
stored as 8-bit pixels as a PNG would hold them; the originals are the split's images as stored.
- psnr: 10 log10(1 / MSE) per image, averaged (dB; higher is closer).
- ssim: SSIM per image (Gaussian window 11, sigma 1.5; smaller images: the largest odd window), averaged.
- lpips: LPIPS(VGG) per image, averaged (lower is closer); null with the reason when VGG16's
  ImageNet weights cannot be had (offline), so the other figures still come.
- rfid: the Frechet distance between the features of the reconstructions and of their originals
  (the latent-diffusion papers' rFID with Inception features; --features pixels works offline).
- sharpness: the mean squared Laplacian of the reconstructions / that of the originals (1: as much
  high-frequency energy as the data; a blurry decoder's is well below).
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from .. import perceptual
from ..errors import VaeError
from . import sample_quality


@torch.no_grad()
def evaluate(model, data, split: str, n: int, features, batch_size: int = 100, data_seed: int = 0,
             lpips_weights: str | None = None, on_batch: Callable[[int], None] | None = None) -> dict:
    if not getattr(model, "can_reconstruct", True):
        raise VaeError("this model cannot reconstruct images")
    started = time.perf_counter()
    index = sample_quality.reference_indices(len(data), n, split)
    stored = sample_quality.stored_images(data, data_seed)[index]
    lpips_net, lpips_reason = None, "skipped (--lpips-weights none)"
    if lpips_weights != perceptual.NONE:
        try:
            lpips_net, lpips_reason = perceptual.LPIPS(lpips_weights).to(model.device), None
        except VaeError as e:
            lpips_reason = str(e)
    sums = {"psnr": 0.0, "ssim": 0.0, "lpips": 0.0, "energy_recon": 0.0, "energy_data": 0.0}
    real_features, fake_features = [], []
    y_all = data.labels[index] if model.conditional and data.labels is not None else None
    for start in range(0, n, batch_size):
        original = stored[start:start + batch_size]
        x = original.to(model.device).float() / 255.0
        y = None if y_all is None else y_all[start:start + batch_size].to(model.device)
        recon = sample_quality.to_uint8(model.reconstruct(x, y))
        r = recon.to(model.device).float() / 255.0
        sums["psnr"] += perceptual.psnr(x, r).sum().item()
        sums["ssim"] += perceptual.ssim(x, r).sum().item()
        if lpips_net is not None:
            sums["lpips"] += lpips_net(x, r).sum().item()
        sums["energy_recon"] += perceptual.laplacian_energy(r).sum().item()
        sums["energy_data"] += perceptual.laplacian_energy(x).sum().item()
        real_features.append(features(original))
        fake_features.append(features(recon))
        if on_batch is not None:
            on_batch(len(original))
    rfid = sample_quality.frechet_distance_of(torch.cat(real_features), torch.cat(fake_features)) if n >= 2 else None
    return {"n": n, "split": split, "psnr": sums["psnr"] / n, "ssim": sums["ssim"] / n,
            "lpips": sums["lpips"] / n if lpips_net is not None else None, "lpips_missing": lpips_reason,
            "lpips_weights": ("random (untrained: for tests)" if lpips_weights == perceptual.RANDOM else
                              lpips_weights or "VGG16 ImageNet (torch hub cache)") if lpips_net is not None else None,
            "rfid": rfid, "features": features.name,
            "sharpness": sums["energy_recon"] / max(sums["energy_data"], 1e-12),
            "seconds": time.perf_counter() - started}
