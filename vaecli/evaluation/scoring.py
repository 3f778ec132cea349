"""Per-image scores (`vae score`): -IWAE (a bound on -log p(x) where the model's likelihood makes
it one: bounds.py), bits/dim, the ELBO, recon and KL of every image of a set, and how well that
score tells two sets apart (AUROC / AUPR: the common
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

from .. import bounds, data as datasets
from . import evaluate
from ..atomic import atomic_write
from ..data import ImageSet
from ..errors import UsageError

COLUMNS = ("set", "image", "label", "neg_iwae", "nll", "bits_per_dim", "elbo", "recon", "kl")


@dataclass
class Scored:
    """One set's images and their scores (N,) in nats; `names` says which image each row is."""

    label: str  # how the set was named on the command line
    names: list[str]
    labels: list[int | None]
    neg_iwae: torch.Tensor  # -IWAE: the score; an upper bound on -log P(x) when `bound`
    elbo: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor
    dims: int
    bound: bool  # the model's measure: the figures bound -log P(x) of the images as stored

    @property
    def bits_per_dim(self) -> torch.Tensor | None:
        return self.neg_iwae / (self.dims * math.log(2)) if self.bound else None

    def summary(self) -> dict:
        """The set's means; `nll` and `bits_per_dim` only where they are bounds (else None)."""
        n = len(self.names)
        se = (self.neg_iwae.std(unbiased=True) / math.sqrt(n)).item() if n > 1 else float("nan")
        mean, median = self.neg_iwae.mean().item(), self.neg_iwae.median().item()
        return {"set": self.label, "n": n, "neg_iwae": mean, "neg_iwae_se": se, "neg_iwae_median": median,
                "nll": mean if self.bound else None, "nll_se": se if self.bound else None,
                "nll_median": median if self.bound else None,
                "bits_per_dim": self.bits_per_dim.mean().item() if self.bound else None,
                "elbo": self.elbo.mean().item(), "recon": self.recon.mean().item(), "kl": self.kl.mean().item()}


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
    from ..config import load_config

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
    found = _stored_like(found, loaded)
    return found, [f"{cfg.name}:test:{i}" for i in range(len(found))], None


def _files(paths: list[str], loaded, n: int | None) -> tuple[ImageSet, list[str], str | None]:
    """Image files and folders of images (all PNG/JPEG files under a folder, sorted)."""
    from ..data.folder import list_images
    from ..data.images import read_image

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
    return _stored_like(ImageSet(torch.stack(images)), loaded), [str(p) for p in files], note


def _stored_like(found: ImageSet, loaded) -> ImageSet:
    """Foreign images stored and fed as the model's own were: binarized for a model trained on
    binarized images (a fixed draw from the seed, as its own test split is), dequantized where
    its data was, so that their figures mean what the test split's do."""
    images = datasets.binarize_once(found.images, loaded.seed) if loaded.dataset.binarize else found.images
    return ImageSet(images, found.labels, found.num_classes, name=found.name,
                    levels=bounds.levels(loaded.dataset.binarize), dequantize=bool(loaded.dataset.dequantize))


def _shape(shape) -> str:
    return "x".join(str(v) for v in shape)


# ---------------------------------------------------------------------------------------------
# Scoring


@torch.no_grad()
def score(model, found: ImageSet, names: list[str], label: str, k: int, batch_size: int = 64,
          on_batch=None, precision: "evaluate.PrecisionCheck | None" = None) -> Scored:
    """Every image's bounds with k importance samples. A conditional model scores
    log p(x) = log (1/C) sum_c p(x | c), the classes marginalized (uniform p(c)): a foreign image
    has no class of ours, and the same rule for every set keeps the comparison fair."""
    evaluate.require_bound(model, "this model")
    if model.conditional:
        per_class = [evaluate.image_bounds(model, found, [k], batch_size, on_batch, label=c, precision=precision)
                     for c in range(model.num_classes)]
        log_c = math.log(model.num_classes)
        iwae = torch.logsumexp(torch.stack([b["iwae"] for b in per_class]), 0) - log_c
        elbo = torch.logsumexp(torch.stack([b["elbo"] for b in per_class]), 0) - log_c
        best = torch.stack([b["iwae"] for b in per_class]).argmax(0)  # recon and KL under the likeliest class
        recon = torch.stack([b["recon"] for b in per_class]).gather(0, best[None])[0]
        kl = torch.stack([b["kl"] for b in per_class]).gather(0, best[None])[0]
    else:
        bounds = evaluate.image_bounds(model, found, [k], batch_size, on_batch, precision=precision)
        iwae, elbo, recon, kl = bounds["iwae"], bounds["elbo"], bounds["recon"], bounds["kl"]
    labels = found.labels.tolist() if found.labels is not None else [None] * len(found)
    return Scored(label, names, labels, -iwae, elbo, recon, kl, math.prod(found.image_shape), model.measure.bound)


def separation(inliers: Scored, outliers: Scored) -> dict:
    """How well the score (-IWAE) tells the sets apart, the foreign set being the positive class:
    AUROC (0.5 = chance; below 0.5 the foreign images score *better*) and AUPR (scikit-learn's
    average precision; chance = the foreign share of all images)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores = torch.cat([inliers.neg_iwae, outliers.neg_iwae]).numpy()
    truth = [0] * len(inliers.names) + [1] * len(outliers.names)
    return {"auroc": float(roc_auc_score(truth, scores)), "aupr": float(average_precision_score(truth, scores)),
            "aupr_chance": len(outliers.names) / len(truth),
            "foreign_more_likely": outliers.neg_iwae.mean().item() < inliers.neg_iwae.mean().item()}


def write_csv(path: Path, sets: list[Scored]) -> Path:
    """One row per image: set, image, label, neg_iwae, nll, bits_per_dim, elbo, recon, kl (nats);
    nll and bits_per_dim are empty where the model's figures are not bounds on -log p(x)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    for s in sets:
        bpd = s.bits_per_dim.tolist() if s.bound else None
        for i, name in enumerate(s.names):
            score = f"{s.neg_iwae[i].item():.4f}"
            writer.writerow([s.label, name, "" if s.labels[i] is None else s.labels[i], score,
                             score if s.bound else "", f"{bpd[i]:.5f}" if s.bound else "",
                             f"{s.elbo[i].item():.4f}", f"{s.recon[i].item():.4f}", f"{s.kl[i].item():.4f}"])
    path = Path(path)
    atomic_write(path, lambda tmp: tmp.write_text(text.getvalue()))
    return path
