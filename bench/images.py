"""Training speed of the image models (model=conv, model=resnet, the ladder with conv bodies) on
28 px grey (MNIST) and 32 px colour (photos crops), in one run:

  * vaecli's trainer (`fit`, its training time, evaluation excluded);
  * a hand-written loop of the *same* network: vaecli's encoder, head and decoder modules (the
    ladder: its own loss, `model.terms`, which is its network), the ELBO written out (reparameterize,
    closed-form KL, Bernoulli cross-entropy), fused Adam, the data in memory;
  * pythae's BaseTrainer (if pythae is installed) on the same encoder and decoder modules wrapped
    as pythae's BaseEncoder/BaseDecoder (conv and resnet; pythae has no ladder);

in fp32, and where the CPU has bf16 matrix units also with bf16 autocast (weights and Adam in fp32)
and channels_last. Every figure is a steady state: the wall time of 3 epochs minus that of 1 (for
vaecli: train_seconds), each measurement in its own process (so that one run's memory does not
shape the next), and the rounds alternate. Then the malloc lever: vaecli's own setting of glibc's malloc
(no mmap, trim past 1 GiB: vaecli/runtime/memory.py) against glibc's defaults (VAECLI_MALLOC=glibc),
with the peak resident memory of each.

    python bench/images.py [--rounds 2] [--only conv-grey28,...] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# name: (the overrides of the model, images per epoch)
MODELS = {
    "conv": (["model=conv"], {"grey28": 6144, "colour32": 4096}),
    "resnet": (["model=resnet"], {"grey28": 512, "colour32": 384}),
    "ladder": (["model=ladder", "model.network=conv", "model.hidden=[32,64]", "model.groups=3",
                "model.latent_dim=16"], {"grey28": 3072, "colour32": 2048}),
}
DATA = ("grey28", "colour32")
BATCH = 128


def data_overrides(data: str, images: int, root: str) -> list[str]:
    if data == "grey28":
        return ["dataset=mnist", f"dataset.root={root}", f"dataset.limit={images}"]
    # the photos at 32 px with the Bernoulli cross-entropy: the same loss pythae's "bce" computes
    return ["dataset=photos", "dataset.image_size=32", f"dataset.crops={images}", "dataset.test_crops=128",
            "likelihood=bernoulli"]


def config(model: str, data: str, root: str, variant: str, epochs: int = 1) -> list[str]:
    overrides, sizes = MODELS[model]
    precision, _, layout = variant.partition("+")
    return [*data_overrides(data, sizes[data], root), *overrides, f"trainer.batch_size={BATCH}",
            f"trainer.epochs={epochs}", "trainer.sample_every=0", "trainer.checkpoint_every=0",
            "trainer.log_every=1000", f"trainer.precision={precision}",
            f"trainer.channels_last={'true' if layout == 'cl' else 'false'}"]


def build(model: str, data: str, root: str, variant: str):
    """vaecli's model and its training images (float, in memory) for the hand loop and pythae."""
    import torch

    from vaecli import data as datasets
    from vaecli.config import load_config
    from vaecli.models import factory

    cfg = load_config(config(model, data, root, variant)).cfg
    train = datasets.build(cfg.dataset, "train", cfg.seed)
    torch.manual_seed(0)
    net = factory.from_config(cfg, train.image_shape, None)
    return net, train.images.float().div_(255)


def vaecli_seconds(model: str, data: str, root: str, variant: str, epochs: int) -> float:
    from vaecli.config import load_config
    from vaecli.training.trainer import fit

    with tempfile.TemporaryDirectory() as tmp:
        summary = fit(load_config(config(model, data, root, variant, epochs)), Path(tmp) / "run")
    return summary.train_seconds


def hand_seconds(model: str, data: str, root: str, variant: str, epochs: int) -> float:
    import torch
    import torch.nn.functional as F

    from vaecli.runtime import memory

    memory.tune()  # as vaecli does (VAECLI_MALLOC=glibc: not): the ratio is then the trainer's own cost
    net, images = build(model, data, root, variant)
    precision, _, layout = variant.partition("+")
    if layout == "cl":
        net.to(memory_format=torch.channels_last)
    ladder = not hasattr(net, "head")

    def loss_of(x):
        if ladder:
            t = net.terms(x)
            return (t["kl"] - t["log_px"]).mean()
        mu, logvar = net.head(net.encoder(x)).float().chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        logits = net.decoder(z).float()
        bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return (bce + kl) / x.shape[0]

    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    n = len(images)
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(n)
        for i in range(0, n, BATCH):
            x = images[order[i:i + BATCH]]
            if layout == "cl":
                x = x.contiguous(memory_format=torch.channels_last)
            with amp:
                loss = loss_of(x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start


def pythae_seconds(model: str, data: str, root: str, variant: str, epochs: int) -> float:
    import logging

    import torch
    from pythae.data.datasets import BaseDataset
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.trainers import BaseTrainer, BaseTrainerConfig

    for name in list(logging.root.manager.loggerDict):  # its modules set their own INFO levels
        if name.startswith("pythae"):
            logging.getLogger(name).setLevel(logging.ERROR)
    net, images = build(model, data, root, variant)

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.body, self.head = net.encoder, net.head

        def forward(self, x):
            mu, logvar = self.head(self.body(x)).chunk(2, dim=1)
            return ModelOutput(embedding=mu, log_covariance=logvar)

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.body = net.decoder

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.body(z)))

    shape = tuple(images.shape[1:])
    vae = VAE(VAEConfig(input_dim=shape, latent_dim=net.spec.latent_dim, reconstruction_loss="bce"),
              encoder=Encoder(), decoder=Decoder())
    with tempfile.TemporaryDirectory() as tmp:
        dataset = BaseDataset(images, torch.zeros(len(images)))
        trainer = BaseTrainer(vae, train_dataset=dataset, eval_dataset=None,
                              training_config=BaseTrainerConfig(output_dir=tmp, num_epochs=epochs,
                                                                per_device_train_batch_size=BATCH,
                                                                learning_rate=1e-3, no_cuda=True))
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            start = time.perf_counter()  # its progress bars are part of its cost, not of our output
            trainer.train()
            return time.perf_counter() - start


TRAINERS = {"vaecli": vaecli_seconds, "hand": hand_seconds, "pythae": pythae_seconds}


def one(trainer: str, model: str, data: str, root: str, variant: str) -> float:
    """Images per second between the end of epoch 1 and the end of epoch 3 (each its own run)."""
    run = TRAINERS[trainer]
    t1, t3 = run(model, data, root, variant, 1), run(model, data, root, variant, 3)
    return 2 * MODELS[model][1][data] / (t3 - t1)


def measure(trainer: str, model: str, data: str, root: str, variant: str,
            env: dict | None = None) -> tuple[float, float]:
    """`one` in a fresh process (env: the malloc settings to run it under): img/s, peak RSS (MiB)."""
    command = [sys.executable, __file__, "--one", trainer, model, data, variant, "--root", root]
    out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if out.returncode:
        raise SystemExit(f"{trainer} {model} {data} {variant} failed:\n{out.stderr[-3000:]}")
    rate, rss = out.stdout.strip().splitlines()[-1].split()
    return float(rate), float(rss)


def cpu_flags() -> str:
    import torch

    from vaecli.runtime.device import bf16_units

    model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}; {torch.get_num_threads()} threads; bf16 units: {bf16_units(torch.device('cpu')) or 'none'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated MODEL-DATA pairs, e.g. conv-grey28")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--root", default=None)
    parser.add_argument("--one", nargs=4, metavar=("TRAINER", "MODEL", "DATA", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        import resource

        rate = one(*args.one[:3], args.root, args.one[3])
        print(rate, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # img/s, peak RSS in MiB
        return
    import torch

    from bench import mnist_root
    from vaecli.runtime.device import bf16_units
    from vaecli.runtime.memory import GLIBC_DEFAULTS

    root = args.root or mnist_root()
    variants = ["fp32", "fp32+cl"] + (["bf16", "bf16+cl"] if bf16_units(torch.device("cpu")) else [])
    try:
        import pythae  # noqa: F401
        trainers = ["vaecli", "hand", "pythae"]
    except ImportError:
        print("pythae is not installed (pip install pythae): no pythae column", file=sys.stderr)
        trainers = ["vaecli", "hand"]
    pairs = [f"{m}-{d}" for m in MODELS for d in DATA]
    if args.only:
        pairs = [p for p in pairs if p in args.only.split(",")]
    rows = []
    for pair in pairs:
        model, data = pair.split("-")
        # channels_last only for vaecli (the hand loop's layout lever is the same); pythae as users run it
        cells = [("vaecli", v) for v in variants] + [("hand", v) for v in variants if "+" not in v]
        cells += [("pythae", "fp32")] if "pythae" in trainers and model != "ladder" else []
        cells += [("vaecli", "glibc malloc")]
        found: dict[tuple[str, str], list[float]] = {c: [] for c in cells}
        rss: dict[tuple[str, str], float] = {}
        for _ in range(args.rounds):
            for trainer, variant in cells:
                env = GLIBC_DEFAULTS if variant == "glibc malloc" else None
                rate, peak = measure(trainer, model, data, root, "fp32" if variant == "glibc malloc" else variant, env)
                found[(trainer, variant)].append(rate)
                rss[(trainer, variant)] = max(peak, rss.get((trainer, variant), 0.0))
        medians = {c: statistics.median(v) for c, v in found.items()}
        row = {"model": model, "data": data, "images_per_epoch": MODELS[model][1][data],
               "img_per_s": {f"{t} {v}": m for (t, v), m in medians.items()},
               "rounds": {f"{t} {v}": r for (t, v), r in found.items()},
               "peak_rss_mib": {f"{t} {v}": m for (t, v), m in rss.items()}}
        ours = medians[("vaecli", "fp32")]
        row["vaecli_fp32_over_hand_fp32"] = ours / medians[("hand", "fp32")]
        if ("pythae", "fp32") in medians:
            row["vaecli_fp32_over_pythae"] = ours / medians[("pythae", "fp32")]
        best = max(v for (t, _), v in medians.items() if t == "vaecli")
        row["vaecli_best_over_fp32"] = best / ours
        if ("pythae", "fp32") in medians:
            row["vaecli_best_over_pythae"] = best / medians[("pythae", "fp32")]
        row["malloc_lever"] = ours / medians[("vaecli", "glibc malloc")]
        rows.append(row)
        if not args.json:
            print_row(row, args.rounds)
    if args.json:
        print(json.dumps({"cpu": cpu_flags(), "rows": rows}))
    else:
        print(f"CPU: {cpu_flags()}")


def print_row(row: dict, rounds: int) -> None:
    print(f"{row['model']} on {row['data']} ({row['images_per_epoch']} images/epoch, batch {BATCH}; "
          f"steady-state img/s, median of {rounds} alternating rounds, each in its own process)")
    ours = row["img_per_s"]["vaecli fp32"]
    for name, value in row["img_per_s"].items():
        rounds_text = ", ".join(f"{r:,.0f}" for r in row["rounds"][name])
        print(f"  {name:<22} {value:9,.0f} img/s   {value / ours:5.2f}x vaecli fp32   ({rounds_text})")
    extra = [f"vaecli fp32 / hand fp32 {row['vaecli_fp32_over_hand_fp32']:.2f}x"]
    if "vaecli_fp32_over_pythae" in row:
        extra.append(f"/ pythae {row['vaecli_fp32_over_pythae']:.2f}x (best vaecli {row['vaecli_best_over_pythae']:.2f}x)")
    rss = row["peak_rss_mib"]
    extra.append(f"best / fp32 {row['vaecli_best_over_fp32']:.2f}x; vaecli's malloc settings {row['malloc_lever']:.2f}x "
                 f"glibc's defaults (peak RSS {rss['vaecli fp32']:,.0f} vs {rss['vaecli glibc malloc']:,.0f} MiB)")
    print("  " + "; ".join(extra))


if __name__ == "__main__":
    main()
