"""eval-iwae throughput: vaecli against pythae's `get_nll` on the same model and images, and the
cost of evaluating the ladder presets, in fp32 and with the networks in bf16 (the precision
eval-iwae chooses on CPUs with bf16 matrix units, when its check on the first images passes: on
these random-weight models it is forced, as speed does not depend on the weights), each as a
fraction of the machine's GEMM ceiling in that precision (FLOPs per importance sample counted by
torch's FlopCounterMode), measured in one run.

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
from vaecli.evaluation.evaluate import PrecisionCheck, image_bounds
from vaecli.models import build, from_flat, spec_from_config


def images(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(n, 1, 28, 28, generator=g) > 0.8).to(torch.uint8) * 255  # speed does not depend on content


def vaecli_rate(model, data: torch.Tensor, k: int, precision: str = "fp32") -> float:
    """Importance samples per second of vaecli's eval-iwae path (image_bounds) in `precision`,
    without eval-iwae's precision check (it costs a fp32 and a bf16 pass over the first 32 images:
    the whole of a 20-image bench)."""
    torch.manual_seed(0)
    start = time.perf_counter()
    image_bounds(model, ImageSet(data, levels=2), [k], batch_size=64, precision=PrecisionCheck(precision, "bench"))
    return len(data) * k / (time.perf_counter() - start)


def flops_per_sample(model, k: int = 100) -> float:
    """FLOPs of one importance sample (the encoder's pass per image spread over the k)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 1, 28, 28)
    model.requires_grad_(False)  # the counter's module hooks expect no leaf that wants a gradient
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.log_weights(x, k)
    model.requires_grad_(True)
    return counter.get_total_flops() / k


def gemm_gflops(dtype: torch.dtype, m: int = 5000, k: int = 512, n: int = 784, reps: int = 10) -> float:
    """A GEMM of eval-iwae's shape (k samples x hidden @ hidden x pixels) in `dtype`."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * m * k * n * reps / (time.perf_counter() - start) / 1e9


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
    default = build(from_flat("mlp", (1, 28, 28), latent_dim=20, hidden=[400])).eval()
    theirs = pythae_model(default)
    print(f"eval-iwae throughput, k={k}, {args.images} images, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} alternating rounds")
    if theirs is not None:  # pythae's chunk size: the fastest of three, chosen once
        batch = max((pythae_rate(theirs, data[:4], k, b), b) for b in (100, 500, 1000))[1]
    ours_rates, bf16_rates, their_rates = [], [], []
    for _ in range(args.rounds):
        ours_rates.append(vaecli_rate(default, data, k))
        bf16_rates.append(vaecli_rate(default, data, k, "bf16"))
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
        bf16_ratios = [a / b for a, b in zip(bf16_rates, their_rates)]
        print(f"  vaecli, networks in bf16 / pythae  {statistics.median(bf16_ratios):12.2f}x   "
              f"({statistics.median(bf16_rates):,.0f} samples/s; what eval-iwae runs where its check passes)")
    from vaecli.runtime.device import bf16_units

    units = bf16_units(torch.device("cpu"))
    ceilings = {"fp32": gemm_gflops(torch.float32), "bf16": gemm_gflops(torch.bfloat16)}
    print(f"  GEMM ceiling (5000x512 @ 512x784)  fp32 {ceilings['fp32']:,.0f} GFLOP/s, bf16 {ceilings['bf16']:,.0f} "
          f"GFLOP/s ({ceilings['bf16'] / ceilings['fp32']:.1f}x; bf16 matrix units: {units or 'none'})")
    # bmnist_best trains bmnist_ladder's network (5 groups x 16, MLP 512-256) longer at a lower rate:
    # one evaluation cost for both
    models = {"default VAE": default, **{f"experiment={p}": preset_model(p).eval() for p in ("bmnist_fast", "bmnist_best")}}
    for name, model in models.items():
        flops = flops_per_sample(model)
        rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for _ in range(3):  # alternating: this machine's speed drifts by tens of percent within a minute
            for precision in rates:
                rates[precision].append(vaecli_rate(model, data, k, precision))
        for precision, found in rates.items():
            rate = statistics.median(found)
            share = rate * flops / 1e9 / ceilings[precision]
            print(f"  {name:26s} {precision}  {rate:12,.0f} samples/s = {rate * flops / 1e9:6.1f} GFLOP/s "
                  f"({share:.0%} of the {precision} ceiling; {flops / 1e6:.2f} MFLOP/sample); 10,000 test images "
                  f"at k={k}: {10_000 * k / rate / 60:.1f} min")
        print(f"  {'':26s} bf16 / fp32 {statistics.median(rates['bf16']) / statistics.median(rates['fp32']):.2f}x "
              "(eval-iwae uses bf16 only where its check on the trained weights passes)")


if __name__ == "__main__":
    main()
