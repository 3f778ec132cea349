"""Sample quality as the field measures it: FID (Heusel et al. 2017), KID (Binkowski et al. 2018)
and improved precision/recall (Kynkaanniemi et al. 2019) between a model's images and a dataset
split, in a feature space:

- `inception`: the 2048-d pool features of Inception-v3 as torch-fidelity computes them (its
  port of the TF-slim graph that FID was defined on: uint8 RGB in, resized to 299x299 with TF1's
  bilinear kernel; grey images repeated to three channels). The weights are downloaded by
  torch-fidelity on first use into torch's hub cache ($TORCH_HOME/hub/checkpoints/), or read
  from --inception-weights FILE.
- `pixels`: the pixels themselves in [0, 1], flattened: no network, no download; a reasonable
  space for small grey images (MNIST, shapes) and for tests. Figures in different feature spaces
  are not comparable with each other, nor with papers' Inception FIDs.

The statistics are our own code (float64), checked in the tests against scipy's sqrtm and
torch-fidelity's estimators; features of a reference split are cached as safetensors under the
data folder (vaecli-features/).
"""

from __future__ import annotations

import math

import contextlib
import hashlib
import io
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from ..errors import UsageError, VaeError
from ..models import autoregressive

FEATURES = ("inception", "pixels")
OF = ("samples", "reconstructions")
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000  # torch-fidelity's defaults (and Binkowski et al.'s)
PR_NEIGHBOURS = 3  # k of the k-NN radii (Kynkaanniemi et al. 2019, and torch-fidelity's default)
SUBSET_SEED = 0  # which images of a split are the reference: a fixed random subset of n


# ---------------------------------------------------------------------------------------------
# Features


class Pixels:
    """Pixels in [0, 1], flattened: (B, C*H*W)."""

    name = "pixels"
    identity = "pixels"

    def __call__(self, images: Tensor) -> Tensor:
        return images.flatten(1).double() / 255.0


class Inception:
    """Inception-v3 pool features (B, 2048) through torch-fidelity (FeatureExtractorInceptionV3)."""

    name = "inception"

    def __init__(self, device: torch.device, weights: str | None = None, notice: Callable[[str], None] | None = None):
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3
        except ImportError:
            raise VaeError("--features inception needs torch-fidelity: pip install torch-fidelity "
                           "(or use --features pixels)") from None
        if weights is not None and not Path(weights).is_file():
            raise UsageError(f"--inception-weights {weights}: no such file")
        cached = Path(torch.hub.get_dir()) / "checkpoints" / URL_INCEPTION_V3.rsplit("/", 1)[-1]
        if weights is None and not cached.is_file() and notice is not None:
            notice(f"downloading the Inception-v3 weights (~92 MB, once) into {cached.parent}/")
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # torch.hub's "Downloading: ..." line
                self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=weights)
        except Exception as e:  # offline and uncached: urllib's URLError, or a partial file
            cache = Path(torch.hub.get_dir()) / "checkpoints"
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise VaeError(f"the Inception-v3 weights for FID could not be loaded ({reason}): download "
                           f"{URL_INCEPTION_V3} into {cache}/ (or pass --inception-weights FILE), "
                           "or use --features pixels") from None
        self.net.to(device)
        self.device = device
        self.identity = "inception:" + (_file_hash(weights) if weights else URL_INCEPTION_V3.rsplit("/", 1)[-1])

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        if images.shape[1] != 3:
            raise UsageError(f"Inception features need grey or RGB images (got {images.shape[1]} channels)")
        (features,) = self.net(images.to(self.device).contiguous())
        return features.double().cpu()


def _file_hash(path: str) -> str:
    from .samplers import fingerprint

    return fingerprint(Path(path))[:16]


def extractor(name: str, device: torch.device, weights: str | None = None,
              notice: Callable[[str], None] | None = None):
    """The feature extractor `name`; `notice` hears of a download before it starts."""
    if name not in FEATURES:
        raise UsageError(f"--features must be one of {', '.join(FEATURES)} (got {name!r})")
    if name == "pixels":
        if weights is not None:
            raise UsageError("--inception-weights is for --features inception")
        return Pixels()
    return Inception(device, weights, notice)


def to_uint8(images: Tensor) -> Tensor:
    """Pictures in [0, 1] -> uint8, as a PNG of them would store them."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


# ---------------------------------------------------------------------------------------------
# Statistics


def statistics(features: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, as pytorch-fid and torch-fidelity compute them), float64."""
    f = features.double().numpy()
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians. tr (S1 S2)^(1/2) is
    the sum of the square roots of the eigenvalues of S1^(1/2) S2 S1^(1/2) (symmetric, positive
    semi-definite, so eigvalsh is exact where sqrtm of the non-symmetric product is not)."""
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root1 @ sigma2 @ root1
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = np.atleast_1d(mu1 - mu2)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_root)


def frechet_distance_of(real: Tensor, fake: Tensor) -> float:
    """The Frechet distance between the Gaussians fitted to two feature sets (N, F) and (M, F). With
    fewer images than features (pixel features of 64 px colour images: 12,288) the covariances have
    rank < F and the same figure comes from the N x M matrix instead: with A, B the centred sets,
    S1 = A'A / (N - 1), S2 = B'B / (M - 1), the nonzero eigenvalues of S1 S2 are the squared singular
    values of A B' / sqrt((N - 1)(M - 1)), so tr (S1^(1/2) S2 S1^(1/2))^(1/2) is its nuclear norm."""
    if min(len(real), len(fake)) >= real.shape[1]:
        return frechet_distance(*statistics(real), *statistics(fake))
    a, b = real.double(), fake.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    a, b = a - mu_a, b - mu_b
    scale_a, scale_b = len(a) - 1, len(b) - 1
    trace_root = torch.linalg.svdvals(a @ b.T).sum() / math.sqrt(scale_a * scale_b)
    diff = mu_a - mu_b
    return float(diff @ diff + a.square().sum() / scale_a + b.square().sum() / scale_b - 2 * trace_root)


def kid(real: Tensor, fake: Tensor, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: the unbiased estimate of MMD^2 with the cubic polynomial kernel
    k(a, b) = (a.b / d + 1)^3, averaged over `subsets` random subsets of `subset_size` of each set
    (min(subset_size, both sizes)); returns its mean and standard deviation over the subsets."""
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise UsageError("KID needs at least 2 images in each set")
    rng = np.random.RandomState(seed)
    d = real.shape[1]
    values = np.zeros(subsets)
    r, f = real.double().numpy(), fake.double().numpy()
    for i in range(subsets):
        b = f[rng.choice(len(f), m, replace=False)]  # the generated subset first, as torch-fidelity draws them
        a = r[rng.choice(len(r), m, replace=False)]
        values[i] = _mmd2_unbiased((a @ a.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3)
    return float(values.mean()), float(values.std())


def _mmd2_unbiased(k_aa: np.ndarray, k_ab: np.ndarray, k_bb: np.ndarray) -> float:
    m = k_aa.shape[0]
    within = (k_aa.sum() - np.trace(k_aa) + k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
    return float(within - 2 * k_ab.mean())


def _kth_neighbour_radii(features: Tensor, k: int, block: int = 1024) -> Tensor:
    """Distance from each point to its k-th nearest other point of the same set, (N,)."""
    radii = []
    for start in range(0, len(features), block):
        d = torch.cdist(features[start:start + block], features)
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, k])  # column 0 is the point itself
    return torch.cat(radii)


def _inside(points: Tensor, centres: Tensor, radii: Tensor, block: int = 1024) -> Tensor:
    """For each point, whether it lies within some centre's radius, (N,) bool."""
    out = []
    for start in range(0, len(points), block):
        d = torch.cdist(points[start:start + block], centres)
        out.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(out)


def precision_recall(real: Tensor, fake: Tensor, k: int = PR_NEIGHBOURS) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): the share of generated images
    inside the real images' manifold (the union of k-NN balls around each real feature), and the
    share of real images inside the generated images' manifold."""
    if min(len(real), len(fake)) <= k:
        raise UsageError(f"precision/recall needs more than k={k} images in each set")
    real, fake = real.float(), fake.float()
    precision = _inside(fake, real, _kth_neighbour_radii(real, k)).double().mean()
    recall = _inside(real, fake, _kth_neighbour_radii(fake, k)).double().mean()
    return float(precision), float(recall)


def compare(real: Tensor, fake: Tensor, seed: int = 0) -> dict:
    """FID, KID and precision/recall between two feature sets (N, F)."""
    fid = frechet_distance(*statistics(real), *statistics(fake))
    kid_mean, kid_std = kid(real, fake, seed=seed)
    precision, recall = precision_recall(real, fake)
    return {"fid": fid, "kid": kid_mean, "kid_std": kid_std, "precision": precision, "recall": recall,
            "kid_subsets": KID_SUBSETS, "kid_subset_size": min(KID_SUBSET_SIZE, len(real), len(fake)),
            "pr_neighbours": PR_NEIGHBOURS}


# ---------------------------------------------------------------------------------------------
# Image sets and the reference cache


def reference_indices(size: int, n: int, split: str) -> Tensor:
    """The n images of a split of `size` that make the reference: a fixed random subset."""
    if n > size:
        raise UsageError(f"--n {n} is more than the {size} images of the {split} split: use --n {size} or fewer")
    return torch.randperm(size, generator=torch.Generator().manual_seed(SUBSET_SEED))[:n].sort().values


def stored_images(data, seed: int) -> Tensor:
    """A split's images as the model's data holds them, uint8 (N, C, H, W): binarized images as
    binary (a dynamically binarized training split drawn once, from the run's seed)."""
    if data.binarize == "dynamic":
        from ..data import binarize_once

        return binarize_once(data.images, seed)
    return data.images


def _features_of(images: Tensor, features, batch_size: int, on_batch: Callable[[int], None] | None) -> Tensor:
    out = []
    for start in range(0, len(images), batch_size):
        out.append(features(images[start:start + batch_size]))
        if on_batch is not None:
            on_batch(len(out[-1]))
    return torch.cat(out)


def reference_features(dataset_cfg, split: str, images: Tensor, features, batch_size: int,
                       on_batch: Callable[[int], None] | None = None) -> tuple[Tensor, Path | None]:
    """The features of a reference image set, from the cache under the data folder when it holds
    them (keyed by the dataset's config, the split, the images and the feature extractor)."""
    from ..runtime.checkpoint import read_tensors, save_tensors
    from ..config import data_root

    fields = {k: v for k, v in asdict(dataset_cfg).items() if k != "root"}
    key = hashlib.sha256(json.dumps([fields, split, features.identity, len(images),
                                     hashlib.sha256(images.numpy().tobytes()).hexdigest()], sort_keys=True).encode())
    path = data_root(dataset_cfg) / "vaecli-features" / f"{dataset_cfg.name}-{split}-{features.name}-n{len(images)}-{key.hexdigest()[:16]}.safetensors"
    if path.is_file():
        try:
            tensors, _ = read_tensors(path)
            cached = tensors["features"]
            if cached.shape[0] == len(images):
                if on_batch is not None:
                    on_batch(len(images))
                return cached.double(), path
        except (UsageError, KeyError):
            pass  # a damaged cache file is recomputed and replaced
    computed = _features_of(images, features, batch_size, on_batch).float().double()  # as the cache keeps them
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_tensors(path, {"features": computed.float()},
                     {"vaecli.features": features.identity, "vaecli.split": split, "vaecli.n": str(len(images))})
    except (OSError, VaeError):
        return computed, None  # a read-only data folder: computed again next time
    return computed, path


@torch.no_grad()
def model_images(model, sampler, data, index: Tensor, of: str, temperature, generator: torch.Generator,
                 batch_size: int) -> Callable[[int, int], Tensor]:
    """A function (start, stop) -> uint8 images: samples from `sampler` (a conditional model's with
    the labels of the reference images, so the classes are in the same proportions), or the
    reconstructions of the reference images themselves."""
    labels = data.labels[index] if model.conditional and data.labels is not None else None

    def batch(start: int, stop: int) -> Tensor:
        y = None if labels is None else labels[start:stop].to(model.device)
        if of == "samples":
            images = sampler.images(model, stop - start, temperature, generator, y)
        else:
            x = data.to_float(data.images[index[start:stop]].to(model.device), generator)
            images = model.reconstruct(x, y)
        return to_uint8(images)

    return batch


def evaluate(model, sampler, data, dataset_cfg, split: str, n: int, of: str, features, temperature=1.0,
             seed: int = 0, batch_size: int = 100, data_seed: int = 0,
             on_batch: Callable[[int], None] | None = None, draw: bool | None = None) -> dict:
    """FID, KID, precision and recall of n model images (samples or reconstructions) against n
    images of the split (a fixed random subset of it). `draw`: the model's images are draws
    x ~ p(x|z) rather than the likelihood's mean; None: draws where the data are binary (2 levels),
    so binary images are compared with binary images."""
    if draw is None:
        draw = data.levels == 2
    if not model.can_sample and of == "samples":
        raise UsageError(model.prior_problem)
    started = time.perf_counter()
    index = reference_indices(len(data), n, split)
    real_images = stored_images(data, data_seed)[index]
    real, cache = reference_features(dataset_cfg, split, real_images, features, batch_size, on_batch)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    make = model_images(model, sampler, data, index, of, temperature, generator, batch_size)
    fake = []
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []), \
            (autoregressive.drawing() if draw else contextlib.nullcontext()):
        torch.manual_seed(seed)  # the draws x ~ p(x|z) come from the global RNG, forked and seeded: they repeat
        for start in range(0, n, batch_size):
            fake.append(features(make(start, min(n, start + batch_size))))
            if on_batch is not None:
                on_batch(len(fake[-1]))
    fake = torch.cat(fake)
    if not torch.isfinite(fake).all():
        raise VaeError("the model's images gave non-finite features (a diverged model?)")
    result = compare(real, fake, seed)
    result.update({"n": n, "split": split, "of": of, "images": "draws" if draw or model.draws_pixel_by_pixel else "means", "sampler": sampler.name if of == "samples" else None,
                   "temperature": temperature if of == "samples" else None, "features": features.name,
                   "feature_dims": int(real.shape[1]), "seed": seed, "reference_cache": str(cache) if cache else None,
                   "seconds": time.perf_counter() - started})
    return result
