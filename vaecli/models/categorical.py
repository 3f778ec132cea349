"""A VAE with categorical latents: N variables of K classes each, a uniform prior, trained through
the Gumbel-softmax (concrete) relaxation (Jang et al. 2017; Maddison et al. 2017).

z is the N one-hot vectors, flattened (N*K values) for the decoder. While training, rsample draws
the relaxed z = softmax((logits + Gumbel noise) / tau), tau annealed per training pass as
max(tau_min, tau_0 exp(-rate * passes)) (Jang et al.'s schedule, applied continuously; the pass count
is a buffer, so a resumed run anneals exactly as an uninterrupted one). The KL to the uniform prior
is exact: sum_n sum_k q_nk log(K q_nk). Evaluated (model.eval()), z is a hard one-hot draw, so the
ELBO and the importance-weighted bound log (1/k) sum_j p(x, z_j) / q(z_j|x) over hard codes are
bounds on log p(x) of this discrete-latent model.

`discrete` as for the VQ-VAE: `code_grid` gives each image's most likely classes (a 1 x N grid),
`decode_codes` decodes class indices, so `vae traverse` takes each variable through its classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from . import likelihoods, networks
from .vae_config import CategoricalSpec
from .vae import LatentModel


class CategoricalPosterior(Distribution):
    """q(z|x) = prod_n Cat(z_n; softmax(logits_n)), batch (B,), event (N*K,) one-hot vectors.
    rsample: the relaxed sample at `temperature` when `relaxed`, else a hard draw."""

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, logits: Tensor, temperature: Tensor, relaxed: bool):
        self.log_probs = torch.log_softmax(logits, dim=-1)  # (B, N, K)
        self.temperature, self.relaxed = temperature, relaxed
        n, k = logits.shape[-2:]
        super().__init__(logits.shape[:-2], torch.Size([n * k]), validate_args=False)

    def _hard(self, sample_shape: tuple) -> Tensor:
        """Hard one-hot draws (*sample_shape, B, N*K) from the global RNG."""
        k = self.log_probs.shape[-1]
        flat = self.log_probs.exp().reshape(-1, k)  # (B*N, K)
        draws = math.prod(sample_shape) if sample_shape else 1
        index = torch.multinomial(flat, draws, replacement=True).T  # (draws, B*N)
        index = index.reshape(*sample_shape, *self.log_probs.shape[:-1])
        return F.one_hot(index, k).to(self.log_probs.dtype).flatten(-2)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        if not self.relaxed:
            return self._hard(tuple(sample_shape))
        shape = (*sample_shape, *self.log_probs.shape)
        gumbel = -torch.log(-torch.log(torch.rand(shape, device=self.log_probs.device).clamp(1e-10, 1 - 1e-7)))
        return torch.softmax((self.log_probs + gumbel) / self.temperature, dim=-1).flatten(-2)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        with torch.no_grad():
            return self._hard(tuple(sample_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        """log q(z|x) of hard one-hot codes (..., B, N*K)."""
        return (value.unflatten(-1, self.log_probs.shape[-2:]) * self.log_probs).sum((-2, -1))

    def kl_uniform(self) -> Tensor:
        """KL(q || uniform) per variable (B, N), exactly."""
        return (self.log_probs.exp() * (self.log_probs + math.log(self.log_probs.shape[-1]))).sum(-1)

    @property
    def mean(self) -> Tensor:
        """The class probabilities, flattened (B, N*K): the expected one-hot code."""
        return self.log_probs.exp().flatten(-2)

    @property
    def stddev(self) -> Tensor:
        p = self.log_probs.exp()
        return (p * (1 - p)).sqrt().flatten(-2)


class CategoricalVAE(LatentModel):
    """p(z) uniform over K^N codes, p(x|z) from the decoder, q(z|x) categorical."""

    posterior = "categorical"
    discrete = True

    def __init__(self, spec: CategoricalSpec):
        super().__init__()
        self.spec = spec
        n, k = spec.latent_dim, spec.categorical.categories
        self.likelihood = likelihoods.build(spec)
        c = spec.num_classes or 0
        self.encoder, features = networks.body_encoder(spec)  # vaecli's, or the user's (model.encoder_net)
        self.head = nn.Linear(features + c, n * k)
        out_channels = self.likelihood.params_per_pixel * spec.image_shape[0]
        self.decoder = networks.body_decoder(spec, n * k + c, out_channels)
        self.register_buffer("passes", torch.zeros((), dtype=torch.long))  # training passes: the tau schedule

    exact_kl = True
    grid = property(lambda self: (1, self.spec.latent_dim))
    codebook_size = property(lambda self: self.spec.categorical.categories)

    def temperature(self) -> Tensor:
        """tau after this many training passes, as a tensor (no host read, no recompiling under
        torch.compile as it changes)."""
        s = self.spec.categorical
        return (s.temperature * torch.exp(-s.anneal_rate * self.passes.float())).clamp(min=s.temperature_min)

    def encode(self, x: Tensor, y: Tensor | None = None) -> CategoricalPosterior:
        logits = self.head(self._condition(self.encoder(x), y)).float()
        return CategoricalPosterior(logits.unflatten(-1, (self.spec.latent_dim, self.spec.categorical.categories)),
                                    self.temperature(), relaxed=self.training)

    def decode(self, z: Tensor, y: Tensor | None = None) -> Distribution:
        lead = z.shape[:-1]
        h = self._condition(z, y)
        params = self.decoder(h.reshape(-1, h.shape[-1])).float()
        return self.likelihood(params.reshape(*lead, *params.shape[1:]))

    def _count_pass(self) -> None:
        if self.training:
            self.passes += 1

    def terms(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """One sample (relaxed while training, hard when evaluating); the exact KL per variable."""
        posterior = self.encode(x, y)
        self._count_pass()
        log_px = self.decode(posterior.rsample(), y).log_prob(x)
        kl_per_dim = posterior.kl_uniform()
        return {"log_px": log_px, "kl": kl_per_dim.sum(-1), "kl_per_dim": kl_per_dim, "kl_exact": True}

    def log_weights(self, x: Tensor, k: int, y: Tensor | None = None,
                    reparam: bool = False) -> tuple[Tensor, Tensor]:
        """Importance sampling over hard codes: log p(x|z_j) + log p(z_j) - log q(z_j|x), each (k, B)."""
        if reparam:
            raise ValueError("categorical latents have no reparameterized importance weights; train with objective=elbo")
        posterior = self.encode(x, y)
        z = posterior.sample((k,))
        log_px = self.decode(z, y).log_prob(x)
        log_prior = -self.spec.latent_dim * math.log(self.spec.categorical.categories)
        return log_px + log_prior - posterior.log_prob(z), log_px

    def kl(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.encode(x, y).kl_uniform().sum(-1)

    # -- codes and pictures -----------------------------------------------------------------

    def code_grid(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Each image's most likely class per variable: (B, 1, N) indices."""
        return self.encode(x, y).log_probs.argmax(-1).unsqueeze(1)

    def decode_codes(self, index: Tensor, y: Tensor | None = None, common: bool = False) -> Tensor:
        """Images (B, C, H, W) in [0, 1] for class indices (B, 1, N) (`common`: decode_images)."""
        onehot = F.one_hot(index.flatten(1), self.spec.categorical.categories).float().flatten(1)
        return self.decode_images(onehot, y, common=common)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None,
               y: Tensor | None = None) -> Tensor:
        """n images from codes drawn uniformly (the prior has no temperature: it is ignored)."""
        index = torch.randint(0, self.spec.categorical.categories, (n, self.spec.latent_dim), generator=generator,
                              device=self.device)
        return self.decode_codes(index.unsqueeze(1), y)
