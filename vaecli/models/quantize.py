"""Vector quantization (van den Oord et al. 2017, "Neural Discrete Representation Learning").

Each encoder vector is replaced by its nearest code; the gradient passes straight through the
rounding. The codebook follows the vectors assigned to it by an exponential moving average
(the paper's appendix; Razavi et al. 2019), or is learned by the codebook loss when
ema_decay = 0. Codes unused for `dead_after` training steps are revived by re-seeding them
from encoder vectors of the current batch, which keeps the codebook from dying.

Written here rather than taken from vector-quantize-pytorch: every piece of state is a buffer
(so it is in the safetensors checkpoint), every random draw comes from torch's global RNG (which
the trainer checkpoints), so a resumed run is bit-identical, and the whole thing is ~120 lines.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KMEANS_ITERATIONS = 10


def nearest(vectors: Tensor, codebook: Tensor) -> Tensor:
    """Index (N,) of the nearest code (K, D) to each vector (N, D), by squared distance."""
    distance = vectors.pow(2).sum(1, keepdim=True) - 2 * vectors @ codebook.T + codebook.pow(2).sum(1)
    return distance.argmin(1)


def perplexity(counts: Tensor) -> Tensor:
    """exp(entropy) of code usage: the effective number of codes used (1..K)."""
    probs = counts / counts.sum().clamp(min=1)
    return torch.exp(-(probs * torch.log(probs.clamp(min=1e-10))).sum())


class VectorQuantizer(nn.Module):
    """Nearest-code quantization of a grid of vectors (B, D, h, w) with a K x D codebook."""

    def __init__(self, codebook_size: int, code_dim: int, ema_decay: float = 0.99, dead_after: int = 100,
                 kmeans_init: bool = False, eps: float = 1e-5):
        super().__init__()
        self.size, self.dim = codebook_size, code_dim
        self.decay, self.dead_after, self.eps = ema_decay, dead_after, eps
        init = torch.empty(codebook_size, code_dim).uniform_(-1 / codebook_size, 1 / codebook_size)
        if ema_decay > 0:
            # A weight kept as a buffer (moved by the EMA update, not by gradients): the trainer's
            # weight averaging (trainer.ema) averages it with the parameters.
            self.weight_buffers = ("codebook",)
            self.register_buffer("codebook", init)
            self.register_buffer("cluster_size", torch.ones(codebook_size))  # EMA of vectors per code
            self.register_buffer("code_sum", init.clone())  # EMA of their sum
        else:
            self.codebook = nn.Parameter(init)
        self.register_buffer("idle_steps", torch.zeros(codebook_size, dtype=torch.long))
        self.register_buffer("revived", torch.zeros((), dtype=torch.long))
        self.register_buffer("initialised", torch.tensor(0 if kmeans_init else 1, dtype=torch.uint8))

    def lookup(self, index: Tensor) -> Tensor:
        return F.embedding(index, self.codebook)

    def quantize(self, grid: Tensor) -> tuple[Tensor, Tensor]:
        """The nearest codes (B, D, h, w) and their indices (B, h, w); no update, no gradient path."""
        b, d, h, w = grid.shape
        flat = grid.permute(0, 2, 3, 1).reshape(-1, d).float()
        index = nearest(flat, self.codebook)
        codes = self.lookup(index).view(b, h, w, d).permute(0, 3, 1, 2)
        return codes, index.view(b, h, w)

    def forward(self, grid: Tensor) -> dict[str, Tensor]:
        """Quantize encoder outputs (B, D, h, w). Returns `codes` with the straight-through
        gradient z_e + sg(z_q - z_e), `index` (B, h, w), per image (B,) the squared distance
        `commit` = ||z_e - sg(z_q)||^2 and `codebook_loss` = ||sg(z_e) - z_q||^2 (zero with EMA),
        and the batch's code `perplexity` and `dead_codes` (codes no vector chose). In training
        mode the codebook is updated (EMA) and long-unused codes are revived."""
        b, d, h, w = grid.shape
        grid = grid.float()  # distances and code updates in fp32 under autocast
        flat = grid.permute(0, 2, 3, 1).reshape(-1, d)
        if self.training and not bool(self.initialised):
            self._kmeans(flat.detach())
        index = nearest(flat.detach(), self.codebook.detach())
        counts = torch.bincount(index, minlength=self.size).float()
        if self.training:
            self._update(flat.detach(), index, counts)
        z_q = self.lookup(index).view(b, h, w, d).permute(0, 3, 1, 2)
        commit = (grid - z_q.detach()).pow(2).flatten(1).sum(1)
        codebook_loss = (grid.detach() - z_q).pow(2).flatten(1).sum(1) if self.decay == 0 else torch.zeros_like(commit)
        return {"codes": grid + (z_q - grid).detach(), "index": index.view(b, h, w), "commit": commit,
                "codebook_loss": codebook_loss, "perplexity": perplexity(counts),
                "dead_codes": (counts == 0).sum().float(), "revived": self.revived.float()}

    @torch.no_grad()
    def _update(self, flat: Tensor, index: Tensor, counts: Tensor) -> None:
        self.idle_steps += 1
        self.idle_steps[counts > 0] = 0
        if self.decay > 0:
            sums = torch.zeros_like(self.code_sum).index_add_(0, index, flat)
            self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
            self.code_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            n = self.cluster_size.sum()  # Laplace smoothing keeps empty clusters from dividing by 0
            size = (self.cluster_size + self.eps) / (n + self.size * self.eps) * n
            self.codebook.copy_(self.code_sum / size.unsqueeze(1))
        if self.dead_after > 0:
            self._revive(flat)

    @torch.no_grad()
    def _revive(self, flat: Tensor) -> None:
        """Codes unused for dead_after steps restart at randomly chosen vectors of this batch."""
        dead = (self.idle_steps >= self.dead_after).nonzero().squeeze(1)
        if len(dead) == 0:
            return
        pick = flat[torch.randint(0, len(flat), (len(dead),), device=flat.device)]
        self.codebook.data[dead] = pick
        if self.decay > 0:
            self.code_sum[dead] = pick
            self.cluster_size[dead] = 1.0
        self.idle_steps[dead] = 0
        self.revived += len(dead)

    @torch.no_grad()
    def _kmeans(self, flat: Tensor) -> None:
        """Lloyd's k-means on the first training batch's vectors as the initial codebook."""
        start = torch.randint(0, len(flat), (self.size,), device=flat.device)
        centres = flat[start].clone()
        for _ in range(KMEANS_ITERATIONS):
            index = nearest(flat, centres)
            counts = torch.bincount(index, minlength=self.size).float()
            sums = torch.zeros_like(centres).index_add_(0, index, flat)
            used = counts > 0
            centres[used] = sums[used] / counts[used].unsqueeze(1)
        self.codebook.data.copy_(centres)
        if self.decay > 0:
            self.code_sum.copy_(centres)
            self.cluster_size.fill_(1.0)
        self.initialised.fill_(1)
