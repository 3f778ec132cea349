"""eval-iwae throughput: vaecli against pythae's `get_nll` on the same model and images, and the
cost of evaluating the ladder presets, measured in one run.

    python bench/iwae.py [--images 20] [--k 5000]

pythae is not a vaecli dependency: `pip install --no-deps pythae` (it needs only torch and
pydantic at import time) or `pip install --target DIR --no-deps pythae` and PYTHONPATH=DIR. Without
it the comparison line says so and the rest runs. Both evaluate the default 784-400-20 ReLU VAE
with the same weights (copied into pythae's encoder/decoder), k importance samples per image;
pythae draws them in chunks of its batch_size (the best of 100, 500 and 1000 is reported).
"""

from __future__ import annotations

import argparse
import time

import torch

from vaecli.config import load_config
from vaecli.data import ImageSet
from vaecli.evaluate import iwae_dataset
from vaecli.models import VAESpec, build, spec_from_config


def images(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(n, 1, 28, 28, generator=g) > 0.8).to(torch.uint8) * 255  # speed does not depend on content


def vaecli_rate(model, data: torch.Tensor, k: int) -> float:
    """Importance samples per second of vaecli's eval-iwae path (best of two runs)."""
    torch.manual_seed(0)
    best = 0.0
    for _ in range(2):
        result = iwae_dataset(model, ImageSet(data), k, batch_size=64)
        best = max(best, result["samples_per_s"])
    return best


def pythae_rate(model, data: torch.Tensor, k: int) -> tuple[float, int] | None:
    """pythae's get_nll on the same weights: (samples/s, its best batch_size), or None."""
    try:
        from pythae.models import VAE, VAEConfig
        from pythae.models.base.base_utils import ModelOutput
        from pythae.models.nn import BaseDecoder, BaseEncoder
    except ImportError:
        return None

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.body, self.head = model.encoder, model.head

        def forward(self, x):
            mu, log_var = self.head(self.body(x)).chunk(2, dim=-1)
            return ModelOutput(embedding=mu, log_covariance=log_var)

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.body = model.decoder

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.body(z)))

    config = VAEConfig(input_dim=(1, 28, 28), latent_dim=model.spec.latent_dim, reconstruction_loss="bce")
    theirs = VAE(config, encoder=Encoder(), decoder=Decoder()).eval()
    x = data.float() / 255
    best = (0.0, 0)
    for batch_size in (100, 500, 1000):
        start = time.perf_counter()
        with torch.no_grad():
            theirs.get_nll(x, n_samples=k, batch_size=batch_size)
        rate = len(x) * k / (time.perf_counter() - start)
        best = max(best, (rate, batch_size))
    return best


def preset_model(name: str):
    cfg = load_config([f"experiment={name}"]).cfg
    torch.manual_seed(0)
    return build(spec_from_config(cfg.model, cfg.likelihood, cfg.prior, (1, 28, 28)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--k", type=int, default=5000)
    args = parser.parse_args()
    data, k = images(args.images), args.k
    torch.manual_seed(0)
    default = build(VAESpec("mlp", (1, 28, 28), latent_dim=20, hidden=[400])).eval()
    ours = vaecli_rate(default, data, k)
    theirs = pythae_rate(default, data, k)
    print(f"eval-iwae throughput, k={k}, {args.images} images, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"  default VAE (784-400-20), vaecli   {ours:12,.0f} samples/s")
    if theirs is None:
        print("  pythae get_nll                     (pythae not installed: pip install --no-deps pythae)")
    else:
        print(f"  default VAE, pythae get_nll        {theirs[0]:12,.0f} samples/s (batch_size={theirs[1]})"
              f"   vaecli = {ours / theirs[0]:.2f}x pythae")
    for preset in ("bmnist_fast", "bmnist_ladder"):
        model = preset_model(preset).eval()
        rate = vaecli_rate(model, data, k)
        print(f"  experiment={preset:14s}        {rate:12,.0f} samples/s = {ours / rate:.1f}x the default's cost; "
              f"10,000 test images at k={k}: {10_000 * k / rate / 60:.0f} min")


if __name__ == "__main__":
    main()
