"""The textbook VAE training loop, as pytorch/examples/vae writes it: torchvision MNIST with
ToTensor, a DataLoader, the 784-400-20 MLP, BCE summed over pixels, Adam, batch 128.
Used by bench.py as the baseline; nothing in vaecli imports it."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn


class TextbookVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def forward(self, x):
        h1 = F.relu(self.fc1(x.view(-1, 784)))
        mu, logvar = self.fc21(h1), self.fc22(h1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


def loss_function(recon_x, x, mu, logvar):
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def images_per_second(root: str, steps: int = 300, warmup: int = 20, batch_size: int = 128) -> float:
    """Train `steps` steps after `warmup`; the loss is read each step, as the example prints it."""
    from torchvision import datasets, transforms

    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(
        datasets.MNIST(root, train=True, download=True, transform=transforms.ToTensor()),
        batch_size=batch_size, shuffle=True)
    model = TextbookVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen, start, step = 0, None, 0
    while step < warmup + steps:
        for data, _ in loader:
            if step == warmup:
                start, seen = time.perf_counter(), 0
            optimizer.zero_grad()
            recon, mu, logvar = model(data)
            loss = loss_function(recon, data, mu, logvar)
            loss.backward()
            optimizer.step()
            loss.item()  # the example's train_loss += loss.item()
            seen += data.shape[0]
            step += 1
            if step == warmup + steps:
                break
    return seen / (time.perf_counter() - start)
