"""What a model trained on `dataset=shapes` keeps of each shape, judged by a small CNN trained on
the run's own training split to read a shape's kind (square, ellipse, heart) and size from pixels
(the dataset's ground-truth factors): how many reconstructions of the test split keep their kind
and size, and what kinds the model's samples show (prior and, if fitted, the ex-post sampler),
counting only confident readings (probability >= 0.9) as a whole shape.

    python bench/shapes_fidelity.py RUN [RUN ...] [--n 600] [--seed 0] [--temperature 1.0] [--robustness]

The classifier is checked on the test originals first (it must read them near-perfectly, or its
verdicts on reconstructions mean little); its accuracy there is printed beside the rest. It takes
~30 s to train on 2 CPU cores (15 epochs: at 6 it was unsure of a quarter of the test
originals, which made its verdicts on samples too harsh). Used for the demo's figures in docs/getting-started.md and docs/results/sample-quality.md.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F
from torch import nn

from vaecli.evaluation import samplers
from vaecli.runtime.checkpoint import load_model
from vaecli.data import shapes
from vaecli.errors import UsageError

KINDS = shapes.SHAPES
CONFIDENT = 0.9


class Reader(nn.Module):
    """Kind (3 classes) and size (scales classes) of one shape image."""

    def __init__(self, scales: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.kind, self.size = nn.Linear(64, len(KINDS)), nn.Linear(64, scales)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.kind(h), self.size(h)


def train_reader(images: torch.Tensor, factors: torch.Tensor, scales: int, epochs: int = 15) -> Reader:
    reader = Reader(scales)
    optimizer = torch.optim.Adam(reader.parameters(), lr=2e-3)
    for _ in range(epochs):
        order = torch.randperm(len(images))
        for i in range(0, len(images), 64):
            index = order[i:i + 64]
            kind, size = reader(images[index])
            loss = F.cross_entropy(kind, factors[index, 0]) + F.cross_entropy(size, factors[index, 1])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return reader.eval()


@torch.no_grad()
def read(reader: Reader, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Predicted kind, its probability, predicted size."""
    kind, size = reader(images)
    probs = kind.softmax(-1)
    return probs.argmax(-1), probs.max(-1).values, size.argmax(-1)


def kept(reader: Reader, images: torch.Tensor, factors: torch.Tensor) -> dict:
    """Per kind, the share read as that kind (and, per size of that kind, in brackets); the share
    whose size is read right."""
    kind, _, size = read(reader, images)
    same = kind == factors[:, 0]
    result = {}
    for k, name in enumerate(KINDS):
        mine = factors[:, 0] == k
        by_size = [round(same[mine & (factors[:, 1] == s)].float().mean().item(), 2) for s in range(int(factors[:, 1].max()) + 1)]
        result[f"{name}_kept"] = [round(same[mine].float().mean().item(), 3), by_size]
    result["size_kept"] = round((size == factors[:, 1]).float().mean().item(), 3)
    return result


def shown(reader: Reader, images: torch.Tensor, asked: torch.Tensor | None = None) -> dict:
    """The share of samples confidently read as each kind, and unclear. For a conditional model's
    samples (`asked`: the kind each was drawn for), also the share read as the kind asked for."""
    kind, confidence, _ = read(reader, images)
    whole = confidence >= CONFIDENT
    result = {**{name: round(((kind == k) & whole).float().mean().item(), 3) for k, name in enumerate(KINDS)},
              "unclear": round((~whole).float().mean().item(), 3)}
    if asked is not None:
        right = (kind == asked) & whole
        result["as_asked"] = {name: round(right[asked == k].float().mean().item(), 3) for k, name in enumerate(KINDS)}
    return result


def draws(sampler, model, n: int, seed: int, temperature: float = 1.0):
    """n samples (an equal share of each kind for a conditional model) and the kinds asked for."""
    generator = torch.Generator().manual_seed(seed)
    if not model.conditional:
        return sampler.images(model, n, temperature, generator, None), None
    asked = torch.arange(len(KINDS)).repeat_interleave(n // len(KINDS))
    return sampler.images(model, len(asked), temperature, generator, asked), asked


@torch.no_grad()
def robustness(reader: Reader, model, train, sampler, n: int, seed: int) -> dict:
    """Why samples lose a kind (unconditional models): the share of each kind's training codes
    (posterior means) still read as that kind after Gaussian noise of each radius per latent unit,
    and, for a fitted sampler, the kind of each draw's nearest training code against what the draw
    decodes to, with the draws' median distance to that code."""
    x = train.images.float() / 255
    codes = torch.cat([model.latent_mean(x[i:i + 512]) for i in range(0, len(x), 512)])
    kinds = train.factors[:, 0]
    generator = torch.Generator().manual_seed(seed)
    result = {"noise": {}}
    for radius in (0.1, 0.2, 0.4):
        noisy = codes + radius * torch.randn(codes.shape, generator=generator)
        kind, sure, _ = read(reader, model.decode_images(noisy, None, None))
        result["noise"][radius] = {name: round(((kind == k) & (sure >= CONFIDENT))[kinds == k].float().mean().item(), 3)
                                   for k, name in enumerate(KINDS)}
    if sampler is not None:
        z = sampler.draw(n, 1.0, torch.Generator().manual_seed(seed)).float()
        distance, nearest = torch.cdist(z, codes).min(1)
        kind, sure, _ = read(reader, model.decode_images(z, None, None))
        result["nearest_code"] = {"median_distance": round(distance.median().item(), 3)}
        for k, name in enumerate(KINDS):
            mine = kinds[nearest] == k
            result["nearest_code"][name] = {"share": round(mine.float().mean().item(), 3),
                                            "read_as": {other: round(((kind == j) & (sure >= CONFIDENT))[mine].float().mean().item(), 3)
                                                        for j, other in enumerate(KINDS)}}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--n", type=int, default=600, help="samples drawn from each sampler")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=1.0, help="of the samplers' draws (prior and fitted)")
    parser.add_argument("--robustness", action="store_true",
                        help="also: each kind's codes under latent noise, and the fitted mixture's draws by nearest code")
    args = parser.parse_args()
    first = load_model(args.runs[0])
    if first.dataset.name != "shapes":
        sys.exit(f"{args.runs[0]} was trained on {first.dataset.name}, not shapes")
    train, test = (shapes.load(first.dataset, split, first.seed) for split in ("train", "test"))
    torch.manual_seed(args.seed)
    scales = first.dataset.scales or 4
    reader = train_reader(train.images.float() / 255, train.factors, scales)
    originals = test.images.float() / 255
    print(json.dumps({"reader_on_test_originals": kept(reader, originals, test.factors),
                      "test_originals_shown": shown(reader, originals)}))
    for run in args.runs:
        loaded = load_model(run)
        model = loaded.model
        labels = test.labels if model.conditional else None
        with torch.no_grad():
            recon = torch.cat([model.reconstruct(originals[i:i + 256], None if labels is None else labels[i:i + 256])
                               for i in range(0, len(originals), 256)])
        result = {"run": run, "reconstructions": kept(reader, recon, test.factors)}
        result["prior_samples"] = shown(reader, *draws(samplers.Prior(), model, args.n, args.seed, args.temperature))
        for name in ("gmm", "two_stage"):
            try:
                sampler = samplers.load(name, loaded)
            except UsageError:  # none fitted to this run
                continue
            result[f"{name}_samples"] = shown(reader, *draws(sampler, model, args.n, args.seed, args.temperature))
        if args.robustness and not model.conditional:
            try:
                gmm = samplers.load("gmm", loaded)
            except UsageError:
                gmm = None
            result["robustness"] = robustness(reader, model, train, gmm, args.n, args.seed)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
