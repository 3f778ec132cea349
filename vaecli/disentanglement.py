"""Disentanglement metrics against ground-truth factors (the shapes dataset keeps them).

MIG, the mutual information gap (Chen et al. 2018, "Isolating Sources of Disentanglement"):
for each factor v_k, the gap between the two latent dimensions that share the most mutual
information with it, divided by its entropy H(v_k); MIG is the mean over factors, in [0, 1].
As in disentanglement_lib, the codes are the posterior means, each dimension discretized into
20 equal-width bins.
"""

from __future__ import annotations

import torch

NUM_BINS = 20


def discretize(codes: torch.Tensor, bins: int = NUM_BINS) -> torch.Tensor:
    """Each column of (N, D) codes into `bins` equal-width bins over its own range -> int64."""
    low, high = codes.min(0).values, codes.max(0).values
    width = (high - low).clamp(min=1e-12) / bins
    return ((codes - low) / width).floor().clamp(0, bins - 1).long()


def entropy(values: torch.Tensor) -> float:
    """H(v) in nats of a discrete variable (N,) from its empirical distribution."""
    p = torch.bincount(values - values.min()).double()
    p = p[p > 0] / values.numel()
    return float(-(p * p.log()).sum())


def mutual_info(a: torch.Tensor, b: torch.Tensor) -> float:
    """I(a; b) in nats of two discrete variables (N,) from their empirical joint."""
    a, b = a - a.min(), b - b.min()
    nb = int(b.max()) + 1
    joint = torch.bincount(a * nb + b, minlength=(int(a.max()) + 1) * nb).double().view(-1, nb)
    joint = joint / joint.sum()
    pa, pb = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
    nz = joint > 0
    return float((joint[nz] * (joint[nz] / (pa * pb).expand_as(joint)[nz]).log()).sum())


def mig(codes: torch.Tensor, factors: torch.Tensor, factor_names: list[str] | None = None) -> dict:
    """MIG of (N, D) continuous codes against (N, K) integer factors.

    Returns {"mig": mean gap, "factors": [{name, mig, entropy, top_dim, mi_top, second_dim,
    mi_second}]}; factors that never vary (entropy 0) are reported but left out of the mean.
    """
    if codes.shape[1] < 2:
        raise ValueError("MIG needs at least two latent dimensions")
    binned = discretize(codes.double())
    names = factor_names or [f"factor{k}" for k in range(factors.shape[1])]
    rows, gaps = [], []
    for k, name in enumerate(names):
        h = entropy(factors[:, k])
        mi = torch.tensor([mutual_info(binned[:, j], factors[:, k]) for j in range(binned.shape[1])])
        top = torch.topk(mi, 2)
        gap = float((top.values[0] - top.values[1]) / h) if h > 0 else None
        if gap is not None:
            gaps.append(gap)
        rows.append({"name": name, "mig": gap, "entropy": h, "top_dim": int(top.indices[0]),
                     "mi_top": float(top.values[0]), "second_dim": int(top.indices[1]),
                     "mi_second": float(top.values[1])})
    return {"mig": sum(gaps) / len(gaps) if gaps else 0.0, "factors": rows}


def model_mig(model, splits) -> dict:
    """MIG of `model`'s posterior means over the images of `splits` (ImageSets with factors),
    plus n and latent_dim."""
    from . import evaluate
    from .data import ImageSet

    data = ImageSet.concat(splits)
    codes = evaluate.latent_means(model, data).cpu()
    result = mig(codes, data.factors, data.factor_names)
    result.update({"n": len(data), "latent_dim": codes.shape[1]})
    return result
