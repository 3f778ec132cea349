"""The pictures the commands make, as tensors and arrays: prior samples (one row per class for a
conditional model), originals above their reconstructions, interpolation strips, latent
traversals, the decoded 2-D manifold, and 2-D projections of the posterior means. Usable from
Python; the CLI only chooses file names and prints. Images are (N, C, H, W) in [0, 1]."""

from __future__ import annotations

import torch
from torch import Tensor

from . import evaluate, latent
from ..data import ImageSet
from ..data.images import grid_rows
from ..errors import UsageError


def class_rows(num_classes: int, per_class: int, device: torch.device) -> Tensor:
    """Labels (num_classes * per_class,) for a grid with one row per class."""
    return torch.arange(num_classes, device=device).repeat_interleave(per_class)


def prior_samples(model, n: int, temperature: float = 1.0, generator: torch.Generator | None = None,
                  label: int | str | None = None, sampler=None) -> tuple[Tensor, int]:
    """Draws of the latents from `sampler` (samplers.py; None: the model's prior) decoded to
    pictures, and the grid's images per row.

    An unconditional model: n images in a near-square grid. A conditional one: n per class, one
    row each (label None or 'all'), or n of class `label`."""
    from .samplers import Prior

    sampler = sampler or Prior()
    if isinstance(sampler, Prior) and not model.can_sample:
        raise UsageError(model.prior_problem)
    y, nrow = None, grid_rows(n)
    if model.conditional and label in (None, "all"):
        y, nrow = class_rows(model.num_classes, n, model.device), n
        n = len(y)
    elif model.conditional:
        y = torch.full((n,), int(label), device=model.device)
    return sampler.images(model, n, temperature, generator, y), nrow


def above_below(originals: Tensor, reconstructions: Tensor, cols: int = 8) -> tuple[Tensor, int]:
    """Rows of up to `cols` originals, each directly above its reconstructions (a short last row
    padded with black), and the images per row."""
    cols = min(len(originals), cols)
    rows = []
    for start in range(0, len(originals), cols):
        block = slice(start, start + cols)
        pad = cols - len(originals[block])
        filler = originals.new_zeros((pad, *originals.shape[1:]))
        rows += [torch.cat([originals[block], filler]), torch.cat([reconstructions[block], filler])]
    return torch.cat(rows), cols


@torch.no_grad()
def interpolation(model, x: Tensor, y: Tensor | None, steps: int, slerp: bool = False) -> Tensor:
    """Decode `steps` points between the latent means of x[0] and x[1] (endpoints included), on
    the line or the great circle; a conditional model decodes the whole path as x[0]'s class."""
    mu = model.latent_mean(x, y)
    path = (latent.slerp if slerp else latent.lerp)(mu[0], mu[1], steps)
    return model.decode_images(path, None if y is None else y[0].expand(steps), common=True)


@torch.no_grad()
def traversal(model, reference: ImageSet, dims: int | None, span: float, steps: int,
              x: Tensor | None = None, y: Tensor | None = None, label: int | None = None) -> dict:
    """One row per latent dimension sweeping it over +-span around the latent mean of x (or
    z = 0), the most used dimensions first (by KL, or by the variance of the posterior mean over
    `reference`); `dims` of them, or all when None. Returns frames, dims, scores, ordered_by.
    A model with discrete codes (VQ-VAE) swaps codes instead: see code_traversal."""
    if model.discrete:
        return code_traversal(model, reference, dims, steps, x, y, label)
    scores, ordered_by = evaluate.dimension_scores(model, reference)
    order = sorted(range(len(scores)), key=lambda d: -scores[d])
    chosen = order if dims is None else order[:dims]
    if x is not None:
        center = model.latent_mean(x, y)[0]
        y = None if y is None else y[0]
    else:
        center = torch.zeros(model.latent_dim, device=model.device)
        y = torch.tensor(label or 0, device=model.device) if model.conditional else None
    z = latent.traversal(center, chosen, span, steps)
    frames = model.decode_images(z, None if y is None else y.expand(len(z)), common=True)
    return {"frames": frames, "dims": chosen, "scores": [scores[d] for d in chosen], "ordered_by": ordered_by}


@torch.no_grad()
def manifold(model, size: int = 20, label: int | None = None) -> Tensor:
    """The decoded manifold of a 2-D latent space (Kingma & Welling 2013, Fig. 4): a size x size
    grid of prior quantiles, decoded, row-major."""
    q = torch.distributions.Normal(0, 1).icdf(torch.linspace(0.05, 0.95, size))
    grid = torch.cartesian_prod(q, q).flip(1).to(model.device)
    y = torch.full((len(grid),), label or 0, device=model.device) if model.conditional else None
    return model.decode_images(grid, y, common=True)


def project_2d(points: Tensor, method: str = "auto", seed: int = 0):
    """(N, D) points -> (N, 2) numpy, the method used, and the two axis names. auto: the points
    themselves when D = 2, else PCA (fast, linear); tsne: Barnes-Hut t-SNE (scikit-learn)."""
    points = points.cpu()
    d = points.shape[1]
    if d == 2 and method == "auto":
        return points.numpy(), "direct", ("z0", "z1")
    if method == "tsne":
        if len(points) < 5:
            raise UsageError("t-SNE needs at least 5 points; raise --n")
        from sklearn.manifold import TSNE

        tsne = TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30.0, (len(points) - 1) / 3))
        return tsne.fit_transform(points.numpy()), "tsne", ("t-SNE 1", "t-SNE 2")
    centred = points - points.mean(0)
    _, singular, v = torch.linalg.svd(centred, full_matrices=False)
    share = (singular.square() / singular.square().sum()).tolist()
    projected = centred @ v.T[:, :2] if d >= 2 else torch.cat([centred, torch.zeros_like(centred)], 1)
    axes = tuple(f"PC{i + 1} ({share[i]:.0%} of variance)" if i < len(share) else f"PC{i + 1}" for i in range(2))
    return projected.numpy(), "pca", axes


@torch.no_grad()
def code_traversal(model, reference: ImageSet, positions: int | None, steps: int, x: Tensor | None = None,
                   y: Tensor | None = None, label: int | None = None) -> dict:
    """For a model with discrete codes (a VQ-VAE's grid, a categorical VAE's variables): one row per
    grid position, the image's code there (x, else the first reference image) replaced by each of
    the `steps` codes used most often at that position over `reference`; positions with the most
    varied codes (entropy of their usage) first. `dims` are the positions as row-major indices into
    the h x w grid."""
    grids = torch.cat([model.code_grid(xb) for xb, _ in evaluate.batches(reference, 500, model.device)]).flatten(1)
    counts = torch.stack([torch.bincount(grids[:, p], minlength=model.codebook_size) for p in range(grids.shape[1])])
    probs = counts.double() / counts.sum(1, keepdim=True)
    entropy = -(probs * probs.clamp(min=1e-12).log()).sum(1)
    order = entropy.argsort(descending=True).tolist()
    chosen = order if positions is None else order[:positions]
    if x is None:
        x = reference.to_float(reference.images[:1].to(model.device), first=0)
        y = None if reference.labels is None or not model.conditional else reference.labels[:1].to(model.device)
    if model.conditional and y is None:
        y = torch.tensor([label or 0], device=model.device)
    base = model.code_grid(x[:1]).flatten(1)[0]
    rows = []
    for p in chosen:
        swapped = base.expand(steps, -1).clone()
        top = counts[p].argsort(descending=True)[:steps]
        swapped[:, p] = top.repeat(-(-steps // len(top)))[:steps]  # fewer codes than steps: cycle them
        rows.append(swapped)
    index = torch.cat(rows).view(-1, *model.grid)
    frames = model.decode_codes(index, None if y is None else y[:1].expand(len(index)), common=True)
    return {"frames": frames, "dims": chosen, "scores": [entropy[p].item() for p in chosen],
            "ordered_by": "entropy of the codes at each grid position"}
