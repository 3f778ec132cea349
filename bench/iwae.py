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
import statistics
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
    """Importance samples per second of vaecli's eval-iwae path."""
    torch.manual_seed(0)
    return iwae_dataset(model, ImageSet(data), k, batch_size=64)["samples_per_s"]


def pythae_model(model):
    """pythae's VAE with the encoder and decoder of `model` (the same weights), or None."""
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
    return VAE(config, encoder=Encoder(), decoder=Decoder()).eval()


def pythae_rate(theirs, data: torch.Tensor, k: int, batch_size: int) -> float:
    x = data.float() / 255
    start = time.perf_counter()
    with torch.no_grad():
        theirs.get_nll(x, n_samples=k, batch_size=batch_size)
    return len(x) * k / (time.perf_counter() - start)


def preset_model(name: str):
    cfg = load_config([f"experiment={name}"]).cfg
    torch.manual_seed(0)
    return build(spec_from_config(cfg.model, cfg.likelihood, cfg.prior, (1, 28, 28), dataset_cfg=cfg.dataset))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5, help="alternating vaecli / pythae rounds (medians)")
    args = parser.parse_args()
    data, k = images(args.images), args.k
    torch.manual_seed(0)
    default = build(VAESpec("mlp", (1, 28, 28), latent_dim=20, hidden=[400])).eval()
    theirs = pythae_model(default)
    print(f"eval-iwae throughput, k={k}, {args.images} images, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} alternating rounds")
    if theirs is not None:  # pythae's chunk size: the fastest of three, chosen once
        batch = max((pythae_rate(theirs, data[:4], k, b), b) for b in (100, 500, 1000))[1]
    ours_rates, their_rates = [], []
    for _ in range(args.rounds):
        ours_rates.append(vaecli_rate(default, data, k))
        if theirs is not None:
            their_rates.append(pythae_rate(theirs, data, k, batch))
    ours = statistics.median(ours_rates)
    print(f"  default VAE (784-400-20), vaecli   {ours:12,.0f} samples/s   (rounds: "
          f"{', '.join(f'{r:,.0f}' for r in ours_rates)})")
    if theirs is None:
        print("  pythae get_nll                     (pythae not installed: pip install --no-deps pythae)")
    else:
        ratios = [a / b for a, b in zip(ours_rates, their_rates)]
        print(f"  default VAE, pythae get_nll        {statistics.median(their_rates):12,.0f} samples/s   "
              f"(batch_size={batch}; rounds: {', '.join(f'{r:,.0f}' for r in their_rates)})")
        print(f"  vaecli / pythae                    {statistics.median(ratios):12.2f}x   (per round: "
              f"{', '.join(f'{r:.2f}' for r in ratios)})")
    for preset in ("bmnist_fast", "bmnist_ladder"):
        model = preset_model(preset).eval()
        rate = vaecli_rate(model, data, k)
        print(f"  experiment={preset:14s}        {rate:12,.0f} samples/s = {ours / rate:.1f}x the default's cost; "
              f"10,000 test images at k={k}: {10_000 * k / rate / 60:.0f} min")


if __name__ == "__main__":
    main()
