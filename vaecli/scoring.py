"""Per-image scores (`vae score`): -log p(x) by the IWAE bound, bits/dim, the ELBO, recon and KL
of every image of a set, and how well -log p(x) tells two sets apart (AUROC / AUPR: the common
likelihood-based out-of-distribution test, and the setting of Nalisnick et al. 2019, "Do deep
generative models know what they don't know?", where a foreign set can score *higher*).

A set comes from a spec: `test` / `train` (the checkpoint's own dataset), `dataset=NAME
[dataset.KEY=VALUE ...]` (another dataset's test split, at the model's image shape), or image
files and folders (converted to the model's shape as every command does).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import data as datasets, evaluate
from .atomic import atomic_write
from .data import ImageSet
from .errors import UsageError

COLUMNS = ("set", "image", "label", "nll", "bits_per_dim", "elbo", "recon", "kl")


@dataclass
class Scored:
    """One set's images and their scores (N,) in nats; `names` says which image each row is."""

    label: str  # how the set was named on the command line
    names: list[str]
    labels: list[int | None]
    nll: torch.Tensor  # -IWAE bound: an upper bound on -log p(x)
    elbo: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor
    dims: int

    @property
    def bits_per_dim(self) -> torch.Tensor:
        return self.nll / (self.dims * math.log(2))

    def summary(self) -> dict:
        n = len(self.names)
        se = (self.nll.std(unbiased=True) / math.sqrt(n)).item() if n > 1 else float("nan")
        return {"set": self.label, "n": n, "nll": self.nll.mean().item(), "nll_se": se,
                "bits_per_dim": self.bits_per_dim.mean().item(), "elbo": self.elbo.mean().item(),
                "recon": self.recon.mean().item(), "kl": self.kl.mean().item(),
                "nll_median": self.nll.median().item()}


# ---------------------------------------------------------------------------------------------
# The sets


def image_set(spec: str | list[str], loaded, data_root: str | None = None,
              n: int | None = None) -> tuple[ImageSet, list[str], str | None]:
    """The images a spec names, at the model's shape, a name for each, and a note when image
    files had to be converted. A list is image files and folders; a string is a split, a dataset
    spec, an existing path, or paths separated by spaces."""
    if isinstance(spec, list) or Path(spec).expanduser().exists():
        return _files([spec] if isinstance(spec, str) else spec, loaded, n)
    if spec in datasets.SPLITS:
        cfg = replace(loaded.dataset, root=data_root) if data_root else loaded.dataset
        found = datasets.build(cfg, spec, loaded.seed).head(n)
        return found, [f"{spec}:{i}" for i in range(len(found))], None
    if spec.startswith("dataset="):
        return _other_dataset(spec, loaded, data_root, n)
    return _files(spec.split(), loaded, n)


def _other_dataset(spec: str, loaded, data_root: str | None, n: int | None) -> tuple[ImageSet, list[str], None]:
    from .config import load_config

    overrides = spec.split()
    for text in overrides:
        if not text.startswith("dataset"):
            raise UsageError(f"'{spec}': a dataset spec takes dataset=NAME and dataset.KEY=VALUE overrides only")
    cfg = load_config(overrides).cfg.dataset
    if data_root:
        cfg = replace(cfg, root=data_root)
    found = datasets.build(cfg, "test", loaded.seed).head(n)
    want = tuple(loaded.model.spec.image_shape)
    if found.image_shape != want:
        fix = (f"; try dataset.image_size={want[1]}" if cfg.name in ("shapes", "folder") and found.image_shape[0] == want[0]
               else "")
        raise UsageError(f"'{spec}' gives {_shape(found.image_shape)} images and the model takes {_shape(want)}{fix}")
    found = _binarized_like(found, loaded)
    return found, [f"{cfg.name}:test:{i}" for i in range(len(found))], None


def _files(paths: list[str], loaded, n: int | None) -> tuple[ImageSet, list[str], str | None]:
    """Image files and folders of images (all PNG/JPEG files under a folder, sorted)."""
    from .data.folder import list_images
    from .data.images import read_image

    c, h, w = loaded.model.spec.image_shape
    files: list[Path] = []
    for text in paths:
        path = Path(text).expanduser()
        if path.is_dir():
            try:
                files += list_images(path)
            except UsageError:
                raise UsageError(f"{path} holds no PNG/JPEG images to score") from None
        elif path.exists():
            files.append(path)
        else:
            raise UsageError(f"no image or folder at {path}")
    files = files[:n] if n else files
    converted, images = 0, []
    for path in files:
        x, note = read_image(path, c, (h, w))
        converted += note is not None
        images.append((x * 255).round().to(torch.uint8))
    note = f"{converted} of {len(files)} images converted to {_shape((c, h, w))}" if converted else None
    return _binarized_like(ImageSet(torch.stack(images)), loaded), [str(p) for p in files], note


def _binarized_like(found: ImageSet, loaded) -> ImageSet:
    """A model trained on binarized images scores binarized ones: a fixed draw from the seed, as
    its own test split is."""
    if not loaded.dataset.binarize:
        return found
    return ImageSet(datasets.binarize_once(found.images, loaded.seed), found.labels, found.num_classes, None,
                    name=found.name)


def _shape(shape) -> str:
    return "x".join(str(v) for v in shape)


# ---------------------------------------------------------------------------------------------
# Scoring


@torch.no_grad()
def score(model, found: ImageSet, names: list[str], label: str, k: int, batch_size: int = 64,
          on_batch=None) -> Scored:
    """Every image's bounds with k importance samples. A conditional model scores
    log p(x) = log (1/C) sum_c p(x | c), the classes marginalized (uniform p(c)): a foreign image
    has no class of ours, and the same rule for every set keeps the comparison fair."""
    evaluate.require_bound(model, "this model")
    if model.conditional:
        per_class = [evaluate.image_bounds(model, found, [k], batch_size, on_batch, label=c)
                     for c in range(model.num_classes)]
        log_c = math.log(model.num_classes)
        iwae = torch.logsumexp(torch.stack([b["iwae"] for b in per_class]), 0) - log_c
        elbo = torch.logsumexp(torch.stack([b["elbo"] for b in per_class]), 0) - log_c
        best = torch.stack([b["iwae"] for b in per_class]).argmax(0)  # recon and KL under the likeliest class
        recon = torch.stack([b["recon"] for b in per_class]).gather(0, best[None])[0]
        kl = torch.stack([b["kl"] for b in per_class]).gather(0, best[None])[0]
    else:
        bounds = evaluate.image_bounds(model, found, [k], batch_size, on_batch)
        iwae, elbo, recon, kl = bounds["iwae"], bounds["elbo"], bounds["recon"], bounds["kl"]
    labels = found.labels.tolist() if found.labels is not None else [None] * len(found)
    return Scored(label, names, labels, -iwae, elbo, recon, kl, math.prod(found.image_shape))


def separation(inliers: Scored, outliers: Scored) -> dict:
    """How well -log p(x) tells the sets apart, the foreign set being the positive class:
    AUROC (0.5 = chance; below 0.5 the foreign images look *more* likely) and AUPR
    (scikit-learn's average precision; chance = the foreign share of all images)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores = torch.cat([inliers.nll, outliers.nll]).numpy()
    truth = [0] * len(inliers.names) + [1] * len(outliers.names)
    return {"auroc": float(roc_auc_score(truth, scores)), "aupr": float(average_precision_score(truth, scores)),
            "aupr_chance": len(outliers.names) / len(truth),
            "foreign_more_likely": outliers.nll.mean().item() < inliers.nll.mean().item()}


def write_csv(path: Path, sets: list[Scored]) -> Path:
    """One row per image: set, image, label, nll, bits_per_dim, elbo, recon, kl (nats)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    for s in sets:
        bpd = s.bits_per_dim.tolist()
        for i, name in enumerate(s.names):
            writer.writerow([s.label, name, "" if s.labels[i] is None else s.labels[i], f"{s.nll[i].item():.4f}",
                             f"{bpd[i]:.5f}", f"{s.elbo[i].item():.4f}", f"{s.recon[i].item():.4f}",
                             f"{s.kl[i].item():.4f}"])
    path = Path(path)
    atomic_write(path, lambda tmp: tmp.write_text(text.getvalue()))
    return path
