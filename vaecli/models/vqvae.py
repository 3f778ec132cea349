"""VQ-VAE (van den Oord et al. 2017): a convolutional encoder to an h x w grid of D-dim vectors,
each replaced by the nearest of K codes, and a decoder from the code grid to p(x|z_q).

As a latent-variable model: the posterior is a point mass on the codes, so log p(x) >=
log p(x|z_q) + log p(z_q), the same for every k. While the autoencoder trains (stage one) the
prior is uniform over codes, log p(z_q) = -h*w*log K, a constant: the model's KL (exact, zero
gradient). Training minimises -log p(x|z_q) plus the commitment loss (and the codebook loss when
the codebook is not an EMA). Stage two (`vae train-prior`) fits an autoregressive prior over
the code grids (code_prior.py); attached, it gives samples and a tighter bound.

In latent space, a point is the continuous encoder output, flattened (latent_dim = D*h*w):
interpolation and PCA work on it, and decode() quantizes before decoding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import blocks, likelihoods
from .quantize import VectorQuantizer
from .vqvae_config import VQVAESpec
from .vae import LatentModel, PointMass


class VQVAE(LatentModel):
    """Images (B, C, H, W) <-> a grid of K codes (B, h, w)."""

    posterior = "point"
    discrete = True
    codebook_size = property(lambda self: self.spec.quantizer.codebook_size)  # codes per grid position

    def __init__(self, spec: VQVAESpec):
        super().__init__()
        self.spec = spec
        self.likelihood = likelihoods.build(spec)
        body, vq = spec.body, spec.quantizer
        self.encoder, self.grid = blocks.grid_encoder(body.arch, spec.image_shape, body.hidden, vq.code_dim,
                                                      body.activation, body.norm)
        self.quantizer = VectorQuantizer(vq.codebook_size, vq.code_dim, vq.ema_decay, vq.dead_after, vq.kmeans_init)
        out_channels = self.likelihood.params_per_pixel * spec.image_shape[0]
        self.decoder = blocks.grid_decoder(body.arch, spec.image_shape, body.hidden,
                                           vq.code_dim + (spec.num_classes or 0), out_channels, body.activation, body.norm)
        self.attach_prior(None, "this VQ-VAE has no prior over its code grid yet; train one with: vae train-prior")

    def attach_prior(self, prior, problem: str | None = None) -> None:
        """Use `prior` (a CodePrior, or None for the uniform prior) for samples and the bound;
        `problem` says why sampling is not possible without one. The prior has its own file, so it
        is kept out of this module's state_dict."""
        self.__dict__["code_prior"] = prior
        self.__dict__["prior_problem"] = problem
        if prior is not None:
            prior.to(next(self.parameters()).device).eval()

    def codebook_fingerprint(self) -> str:
        """A short hash of the codebook: which VQ-VAE (and which state of it) a prior was fit to."""
        import hashlib

        return hashlib.sha256(self.quantizer.codebook.detach().float().cpu().numpy().tobytes()).hexdigest()[:16]

    @property
    def can_sample(self) -> bool:
        return self.code_prior is not None

    def to(self, *args, **kwargs):
        if self.code_prior is not None:
            self.code_prior.to(*args, **kwargs)
        return super().to(*args, **kwargs)

    @property
    def latent_dim(self) -> int:
        return self.spec.quantizer.code_dim * self.grid[0] * self.grid[1]

    @property
    def exact_kl(self) -> bool:
        return True  # -log p(z_q): h*w*log K under the uniform prior, or the prior's exact log-probability

    @property
    def log_prior(self) -> float:
        """log p(z_q) of any code grid under the uniform prior: -h*w*log K."""
        return -self.grid[0] * self.grid[1] * math.log(self.spec.quantizer.codebook_size)

    def log_p_codes(self, index: Tensor, y: Tensor | None = None) -> Tensor:
        """log p(z_q) (B,) of code grids (B, h, w): the attached prior's, else the uniform one's."""
        if self.code_prior is None:
            return torch.full((index.shape[0],), self.log_prior, device=index.device)
        return self.code_prior.log_prob(index, y)

    # -- the model's distributions ---------------------------------------------------------

    def encode(self, x: Tensor, y: Tensor | None = None) -> PointMass:
        """The continuous encoder outputs (B, latent_dim) as a point mass (the encoder does not
        see the label; a conditional VQ-VAE conditions its decoder)."""
        return PointMass(self.encoder(x).float().flatten(1))

    def _decode_grid(self, codes: Tensor, y: Tensor | None):
        """p(x|z_q) for code vectors (B, D, h, w)."""
        if self.conditional:
            onehot = self._onehot(y, codes.dtype)[:, :, None, None].expand(-1, -1, *codes.shape[2:])
            codes = torch.cat([codes, onehot], 1)
        return self.likelihood(self.decoder(codes).float())

    def decode(self, z: Tensor, y: Tensor | None = None):
        """p(x|z) for continuous latents (B, latent_dim), quantized to the nearest codes first."""
        if z.dim() != 2:
            raise ValueError(f"decode takes latents (B, {self.latent_dim}); got {tuple(z.shape)}")
        codes, _ = self.quantizer.quantize(z.reshape(-1, self.spec.quantizer.code_dim, *self.grid))
        return self._decode_grid(codes, y)

    def code_grid(self, x: Tensor) -> Tensor:
        """The code indices (B, h, w) of images."""
        return self.quantizer.quantize(self.encoder(x))[1]

    # -- what objectives and evaluation use ------------------------------------------------

    def terms(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """log_px (B,), the constant KL (B,), and `aux_loss` (the commitment/codebook loss, not
        part of the bound) with the codebook's health in `stats`. Training mode updates the
        codebook."""
        q = self.quantizer(self.encoder(x))
        log_px = self._decode_grid(q["codes"], y).log_prob(x)
        kl = -self.log_p_codes(q["index"], y)
        aux = (self.spec.quantizer.commitment * q["commit"] + q["codebook_loss"]).mean()
        stats = {"perplexity": q["perplexity"], "dead_codes": q["dead_codes"], "revived": q["revived"]}
        return {"log_px": log_px, "kl": kl, "kl_per_dim": None, "kl_exact": True, "aux_loss": aux, "stats": stats}

    def log_weights(self, x: Tensor, k: int, y: Tensor | None = None,
                    reparam: bool = False) -> tuple[Tensor, Tensor]:
        """log p(x|z_q) + log p(z_q) - log q(z_q|x) with q a point mass (log q = 0): the same for
        every one of the k "samples"."""
        codes, index = self.quantizer.quantize(self.encoder(x))
        log_px = self._decode_grid(codes, y).log_prob(x)
        return (log_px + self.log_p_codes(index, y)).expand(k, -1), log_px.expand(k, -1)

    def kl(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """KL(q || p) of a point mass on z_q: -log p(z_q)."""
        return -self.log_p_codes(self.code_grid(x), y)

    def decode_codes(self, index: Tensor, y: Tensor | None = None, common: bool = False) -> Tensor:
        """Images (B, C, H, W) in [0, 1] decoded from code grids (B, h, w): the decoder's mean
        (factorised: no draw, so `common` changes nothing)."""
        codes = self.quantizer.lookup(index).permute(0, 3, 1, 2)
        return self._decode_grid(codes, y).mean.clamp(0, 1)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None,
               y: Tensor | None = None) -> Tensor:
        """n images: code grids drawn from the prior (temperature divides its logits), decoded."""
        if self.code_prior is None:
            raise ValueError(self.prior_problem)
        return self.decode_codes(self.code_prior.sample(n, temperature, generator, y), y)
