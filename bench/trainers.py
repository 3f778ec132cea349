"""Training speed of the 784-400-20 MLP VAE on MNIST (batch 128, Adam 1e-3) in four trainers, in
one run: vaecli, a careful hand-written tensor loop (the data in memory, fused Adam, no host read
per step: what a trainer's fixed cost is measured against), pythae's BaseTrainer (if pythae is
installed) and the textbook loop (bench/textbook.py). Steady state: the wall time of 3 epochs
minus that of 1 epoch, so start-up, data loading and compiling drop out; for vaecli its training
time (train_seconds, evaluation excluded). Rounds alternate the trainers; medians are printed.

    python bench/trainers.py [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import mnist_root  # noqa: E402

N = 60000


def mnist_uint8(root: str) -> torch.Tensor:
    from torchvision import datasets

    return datasets.MNIST(root, train=True, download=True).data.unsqueeze(1)  # (60000, 1, 28, 28) uint8


class HandVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Flatten(), nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 40))
        self.dec = nn.Sequential(nn.Linear(20, 400), nn.ReLU(), nn.Linear(400, 784))

    def loss(self, x):
        mu, logvar = self.enc(x).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        bce = F.binary_cross_entropy_with_logits(self.dec(z), x.flatten(1), reduction="sum")
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return (bce + kl) / x.shape[0]


def hand_loop_seconds(images: torch.Tensor, epochs: int) -> float:
    torch.manual_seed(0)
    model = HandVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(N)
        for i in range(0, N, 128):
            x = images[order[i:i + 128]].float().div_(255)
            loss = model.loss(x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start


def vaecli_seconds(root: str, epochs: int) -> float:
    from vaecli.config import load_config
    from vaecli.training.trainer import fit

    with tempfile.TemporaryDirectory() as tmp:
        summary = fit(load_config(["dataset=mnist", f"trainer.epochs={epochs}", "trainer.sample_every=0",
                                   "trainer.checkpoint_every=0", f"dataset.root={root}"]), Path(tmp) / "run")
    return summary.train_seconds


def pythae_seconds(images: torch.Tensor, epochs: int) -> float:
    import logging

    from pythae.data.datasets import BaseDataset
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.trainers import BaseTrainer, BaseTrainerConfig


    for name in list(logging.root.manager.loggerDict):  # its modules set their own INFO levels
        if name.startswith("pythae"):
            logging.getLogger(name).setLevel(logging.ERROR)

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 400), nn.ReLU())
            self.mu, self.logvar = nn.Linear(400, 20), nn.Linear(400, 20)

        def forward(self, x):
            h = self.net(x)
            return ModelOutput(embedding=self.mu(h), log_covariance=self.logvar(h))

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(20, 400), nn.ReLU(), nn.Linear(400, 784), nn.Sigmoid())

        def forward(self, z):
            return ModelOutput(reconstruction=self.net(z).view(-1, 1, 28, 28))

    torch.manual_seed(0)
    config = VAEConfig(input_dim=(1, 28, 28), latent_dim=20, reconstruction_loss="bce")
    model = VAE(config, encoder=Encoder(), decoder=Decoder())
    with tempfile.TemporaryDirectory() as tmp:
        data = BaseDataset(images.float() / 255, torch.zeros(len(images)))
        trainer = BaseTrainer(model, train_dataset=data, eval_dataset=None,
                              training_config=BaseTrainerConfig(output_dir=tmp, num_epochs=epochs,
                                                                per_device_train_batch_size=128,
                                                                learning_rate=1e-3, no_cuda=True))
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            start = time.perf_counter()  # its progress bars are part of its cost, not of our output
            trainer.train()
            return time.perf_counter() - start


def textbook_seconds(root: str, epochs: int) -> float:
    from textbook import images_per_second

    steps = epochs * (N // 128)
    return steps * 128 / images_per_second(root, steps=steps, warmup=5)


def steady(run, *args) -> float:
    """Images per second between the end of epoch 1 and the end of epoch 3."""
    one, three = run(*args, 1), run(*args, 3)
    return 2 * N / (three - one)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    root = mnist_root()
    images = mnist_uint8(root)
    trainers = {"vaecli": (vaecli_seconds, root), "hand loop": (hand_loop_seconds, images),
                "pythae": (pythae_seconds, images), "textbook": (textbook_seconds, root)}
    try:
        import pythae  # noqa: F401
    except ImportError:
        print("pythae is not installed (pip install pythae): no pythae row", file=sys.stderr)
        del trainers["pythae"]
    found: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(args.rounds):
        for name, (run, data) in trainers.items():
            found[name].append(steady(run, data))
    medians = {name: statistics.median(v) for name, v in found.items() if v}
    ours = medians["vaecli"]
    result = {"threads": torch.get_num_threads(), "img_per_s": medians, "rounds": found,
              "vaecli_over": {name: ours / v for name, v in medians.items() if name != "vaecli"}}
    if args.json:
        print(json.dumps(result))
        return
    print(f"steady-state training, MNIST 784-400-20, batch 128, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} alternating rounds")
    for name, v in medians.items():
        ratio = "" if name == "vaecli" else f"   vaecli = {ours / v:.2f}x"
        print(f"  {name:<10} {v:10,.0f} img/s{ratio}   (rounds: {', '.join(f'{r:,.0f}' for r in found[name])})")


if __name__ == "__main__":
    main()
