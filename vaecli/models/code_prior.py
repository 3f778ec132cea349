"""p(z) over a VQ-VAE's code grid: a small causal transformer (GPT-style, decoder only) over the
h*w codes in raster order, each predicted from the ones before it.

Why a transformer and not a gated PixelCNN: the grids here are short (7x7 for MNIST, 8x8 for
32x32 images), so full causal attention is cheap; every code sees all earlier codes (a PixelCNN
needs two stacks to avoid its blind spot), and one causal mask is simple to verify (the leak test
in tests/test_vqvae.py). The class of a conditional prior is the start token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class PriorSpec:
    """Everything needed to rebuild the prior; stored as JSON in prior.safetensors' metadata."""

    codebook_size: int
    grid: tuple[int, int]  # (h, w)
    width: int = 128
    layers: int = 4
    heads: int = 4
    dropout: float = 0.0
    num_classes: int | None = None

    def __post_init__(self):
        self.grid = tuple(int(s) for s in self.grid)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x)) (as in GPT-2)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width),
                                 nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                  dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class CodePrior(nn.Module):
    """Autoregressive p(z) = prod_i p(z_i | z_<i) over code grids (B, h, w) of K codes."""

    compiled_methods = ()  # trainer.compile leaves it eager: sampling sees every prefix length

    def __init__(self, spec: PriorSpec):
        super().__init__()
        if spec.width % spec.heads:
            raise ValueError(f"the prior's width ({spec.width}) must be a multiple of its heads ({spec.heads})")
        self.spec = spec
        length = spec.grid[0] * spec.grid[1]
        self.start = nn.Embedding(spec.num_classes or 1, spec.width)  # the class is the start token
        self.tokens = nn.Embedding(spec.codebook_size, spec.width)
        self.positions = nn.Parameter(torch.zeros(length, spec.width))
        self.blocks = nn.Sequential(*[Block(spec.width, spec.heads, spec.dropout) for _ in range(spec.layers)])
        self.ln = nn.LayerNorm(spec.width)
        self.head = nn.Linear(spec.width, spec.codebook_size)
        nn.init.normal_(self.positions, std=0.02)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def logits(self, codes: Tensor, y: Tensor | None = None) -> Tensor:
        """Logits (B, L, K) of each code given the ones before it, for codes (B, L) in raster order."""
        b = codes.shape[0]
        start = self.start(y.long() if self.spec.num_classes else torch.zeros(b, dtype=torch.long, device=codes.device))
        x = torch.cat([start.unsqueeze(1), self.tokens(codes[:, :-1])], 1) + self.positions[:codes.shape[1]]
        return self.head(self.ln(self.blocks(x))).float()

    def log_prob(self, grid: Tensor, y: Tensor | None = None) -> Tensor:
        """log p(z) (B,) of code grids (B, h, w) (or (B, L))."""
        codes = grid.flatten(1).long()
        return -F.cross_entropy(self.logits(codes, y).transpose(1, 2), codes, reduction="none").sum(1)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None,
               y: Tensor | None = None) -> Tensor:
        """n code grids (n, h, w), one position at a time; temperature divides the logits."""
        h, w = self.spec.grid
        codes = torch.zeros(n, h * w, dtype=torch.long, device=self.device)
        for i in range(h * w):
            probs = torch.softmax(self.logits(codes[:, :i + 1], y)[:, i] / temperature, -1)
            codes[:, i] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        return codes.view(n, h, w)
