"""Cards of the objective family (the code is objectives.py): the keys, checks and needs of each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from .registry import MISSING, Card, Need, Requirement, member, needs

ONE_GAUSSIAN = frozenset({"gaussian_code", "closed_form", "standard_normal"})
KERNELS = ("imq", "rbf")


@member("objective", "elbo")
@dataclass
class ELBO(Card):
    """-ELBO = recon + beta KL, with the KL schedules, free bits and annealed capacity of kl.*."""

    def provides(self, run) -> set[str]:
        return {"elbo_loss"}


@member("objective", "iwae")
@dataclass
class IWAE(Card):
    """The importance-weighted bound with k samples (Burda et al. 2015)."""

    k: int = MISSING

    def check(self, run, need: Need) -> None:
        need(self.k >= 1, f"objective.k must be >= 1 (got {self.k})")
        need(run.kl.schedule == "constant" and run.kl.free_bits == 0 and run.beta == 1.0,
             "objective=iwae trains the importance-weighted bound itself: drop beta, kl.schedule and kl.free_bits")

    def requires(self, run):
        return [needs("importance_sampling", message=f"objective=iwae needs a model whose posterior can be "
                      f"importance-sampled (model=mlp, conv, resnet, hvae or ladder; got {run.model.describe()})")]


@dataclass
class OnOneGaussian(Card):
    """Objectives that shape the code of one diagonal Gaussian posterior against N(0, I)."""

    WHAT = "shapes"  # what it does to the code (a class attribute, not a key)

    def check(self, run, need: Need) -> None:
        need(run.kl.delta == 0, self._message(run))
        need(run.kl.free_bits == 0, f"objective={self.name} shapes the code its own way; kl.free_bits is for "
             "objective=elbo: drop it")

    def requires(self, run):
        return [Requirement((ONE_GAUSSIAN,), self._message(run))]

    def _message(self, run) -> str:
        return (f"objective={self.name} {self.WHAT} a diagonal Gaussian posterior against N(0, I): use model=mlp, conv or "
                f"resnet with posterior=gaussian and prior=normal (got {run.model.describe()}, prior={run.prior.name})")


@member("objective", "btcvae")
@dataclass
class BetaTCVAE(OnOneGaussian):
    """beta-TCVAE (Chen et al. 2018): the KL split into MI, total correlation and dimension-wise KL."""

    WHAT = "splits the KL of"
    alpha: float = MISSING  # weight of the index-code mutual information
    beta: float = MISSING  # weight of the total correlation
    gamma: float = MISSING  # weight of the dimension-wise KL

    def check(self, run, need: Need) -> None:
        super().check(run, need)
        need(run.beta == 1.0, "objective=btcvae weights its KL terms by objective.alpha, objective.beta and "
             "objective.gamma: leave beta at 1")
        need(all(w >= 0 for w in (self.alpha, self.beta, self.gamma)),
             "objective.alpha, objective.beta and objective.gamma must be >= 0")


@member("objective", "dipvae")
@dataclass
class DIPVAE(OnOneGaussian):
    """DIP-VAE i/ii (Kumar et al. 2018)."""

    WHAT = "regularizes the covariance of"
    type: str = MISSING  # i (covariance of the posterior means) | ii (of the aggregate posterior)
    lambda_od: float = MISSING  # weight of the off-diagonal entries
    lambda_d: Optional[float] = None  # weight of the diagonal's distance to 1 (null: 10 x lambda_od for i, 1 x for ii)

    def check(self, run, need: Need) -> None:
        super().check(run, need)
        need(self.type in ("i", "ii"), f"objective.type must be i or ii (got {self.type!r})")
        need(all(w is None or w >= 0 for w in (self.lambda_od, self.lambda_d)),
             "objective.lambda_od and objective.lambda_d must be >= 0")


@member("objective", "factorvae")
@dataclass
class FactorVAE(OnOneGaussian):
    """FactorVAE (Kim & Mnih 2018): a critic trained beside the model estimates the total correlation."""

    WHAT = "estimates the total correlation of"
    gamma: float = MISSING  # weight of the TC
    disc_width: int = MISSING  # the critic's hidden units per layer
    disc_layers: int = MISSING  # the critic's hidden layers
    disc_lr: float = MISSING  # the critic's Adam learning rate

    def check(self, run, need: Need) -> None:
        super().check(run, need)
        need(self.gamma >= 0, f"objective.gamma must be >= 0 (got {self.gamma})")
        need(self.disc_width >= 1 and self.disc_layers >= 1 and self.disc_lr > 0,
             "objective.disc_width and objective.disc_layers must be >= 1 and objective.disc_lr > 0 "
             f"(got {self.disc_width}, {self.disc_layers}, {self.disc_lr})")


@dataclass
class MMDKeys(OnOneGaussian):
    lambda_mmd: float = MISSING  # the MMD's weight
    kernel: str = MISSING  # imq | rbf
    kernel_scale: float = MISSING  # the kernel's bandwidth in prior variances

    def check(self, run, need: Need) -> None:
        super().check(run, need)
        need(self.kernel in KERNELS, f"objective.kernel must be imq or rbf (got {self.kernel!r})")
        need(self.kernel_scale > 0 and self.lambda_mmd >= 0,
             f"objective.kernel_scale must be > 0 and objective.lambda_mmd >= 0 (got {self.kernel_scale}, "
             f"{self.lambda_mmd})")


@member("objective", "infovae")
@dataclass
class InfoVAE(MMDKeys):
    """InfoVAE (Zhao et al. 2019) with the MMD divergence."""

    WHAT = "matches the aggregate of"
    alpha: float = MISSING  # InfoVAE's alpha: the KL is weighted by 1 - alpha

    def check(self, run, need: Need) -> None:
        super().check(run, need)
        need(run.beta == 1.0, "objective=infovae weights its KL by 1 - objective.alpha: leave beta at 1")


@member("objective", "wae")
@dataclass
class WAE(MMDKeys):
    """WAE-MMD (Tolstikhin et al. 2018): the aggregate posterior matched to the prior, no KL; the
    encoder may be a Gaussian one or the autoencoder's deterministic one."""

    WHAT = "matches the aggregate of"

    def check(self, run, need: Need) -> None:
        super().check(run, need)
        need(run.beta == 1.0, "objective=wae has no KL term: leave beta at 1")
        need(run.kl.schedule == "constant", "objective=wae has no KL term to schedule: drop kl.schedule")

    def requires(self, run):
        return [Requirement((ONE_GAUSSIAN, frozenset({"code", "standard_normal"})), self._message(run))]

    def _message(self, run) -> str:
        return super()._message(run).replace("resnet with", "resnet (or model=ae) with")


PIXEL_LOSSES = ("l1", "l2")
PERCEPTUAL = ("none", "msssim", "lpips")


@member("objective", "perceptual")
@dataclass
class Perceptual(Card):
    """The latent-diffusion autoencoder's loss (Rombach et al. 2022; taming-transformers'
    LPIPSWithDiscriminator): L1/L2 plus a perceptual distance, over a learned scalar log-variance, a
    tiny KL weight, and optionally a PatchGAN adversary with the adaptive weight. Not a likelihood."""

    pixel: str = MISSING  # l1 | l2
    perceptual: str = MISSING  # none | msssim | lpips
    perceptual_weight: float = MISSING
    kl_weight: float = MISSING
    learn_logvar: bool = MISSING
    logvar_init: float = MISSING
    lpips_weights: Optional[str] = None  # a VGG16 file (torchvision's vgg16-397923af.pth); null: torch's hub cache
    adversarial: bool = MISSING
    disc_start: int = MISSING
    disc_weight: float = MISSING
    disc_layers: int = MISSING
    disc_channels: int = MISSING
    disc_lr: Optional[float] = None  # null: trainer.lr
    adam_betas: List[float] = MISSING

    def check(self, run, need: Need) -> None:
        need(self.pixel in PIXEL_LOSSES, f"objective.pixel must be l1 or l2 (got {self.pixel!r})")
        need(self.perceptual in PERCEPTUAL,
             f"objective.perceptual must be one of {', '.join(PERCEPTUAL)} (got {self.perceptual!r})")
        need(self.perceptual_weight >= 0 and self.kl_weight >= 0,
             f"objective.perceptual_weight and objective.kl_weight must be >= 0 (got {self.perceptual_weight}, "
             f"{self.kl_weight})")
        need(run.beta == 1.0, "objective=perceptual weights its KL by objective.kl_weight: leave beta at 1")
        need(run.kl.free_bits == 0, "objective=perceptual has no free bits: drop kl.free_bits")
        need(self.disc_start >= 0, f"objective.disc_start must be >= 0 (a training step; got {self.disc_start})")
        need(self.disc_weight >= 0, f"objective.disc_weight must be >= 0 (got {self.disc_weight})")
        need(self.disc_layers >= 1 and self.disc_channels >= 1,
             f"objective.disc_layers and objective.disc_channels must be >= 1 (got {self.disc_layers}, "
             f"{self.disc_channels})")
        need(self.disc_lr is None or self.disc_lr > 0, f"objective.disc_lr must be > 0 or null (got {self.disc_lr})")
        need(len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas),
             f"objective.adam_betas must be two numbers in [0, 1), e.g. [0.5,0.9] (got {list(self.adam_betas)})")
        size = run.dataset.image_size
        need(not self.adversarial or size is None or size >= 2 ** (self.disc_layers + 1),
             f"objective.disc_layers={self.disc_layers} halves {size} px images too often: use fewer layers")

    def requires(self, run):
        message = ("objective=perceptual compares the decoder's mean image with the input and weighs a closed-form "
                   "KL to N(0, I): use model=autoencoder_kl, or model=mlp, conv or resnet with posterior=gaussian, "
                   f"prior=normal and model.decoder=factorized (got {run.model.describe()}, prior={run.prior.name})")
        return [Requirement((ONE_GAUSSIAN | {"pixel_mean"},), message)]
