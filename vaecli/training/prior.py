"""Stage two of a VQ-VAE: `vae train-prior` fits the autoregressive prior over the code grids of
the training images with the same Trainer as stage one (progress, checkpoints, resume, signals,
torchrun), into the prior.* files of the VQ-VAE's run folder (runs.PRIOR).

The VQ-VAE is frozen: its codes of the train and test splits are computed once. Each epoch ends
with the test NLL of the codes and the VQ-VAE's bound on log p(x) with this prior,
log p(x|z_q) + log p(z_q), and a grid of samples decoded by the VQ-VAE.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..runtime import checkpoint, device as devices, runs
from .. import data
from ..evaluation import evaluate
from ..config import Composed
from ..data import ImageSet
from ..data.images import save_grid
from ..runtime.distributed import Dist
from ..errors import UsageError
from ..models.code_prior import CodePrior, PriorSpec
from .trainer import SAMPLE_GRID, Trainer


class CodeSet(ImageSet):
    """Code grids (N, h, w) of a dataset as int64 `images`, with the images' labels. The trainer's
    batches are the codes themselves (to_float leaves them as they are)."""

    def to_float(self, batch: torch.Tensor, generator: torch.Generator | None = None,
                 first: int | None = None) -> torch.Tensor:
        return batch


def prior_nll(model: CodePrior, codes: torch.Tensor, y, step: int):
    """The objective: -log p(z) in nats per image (the codes' negative log-likelihood)."""
    nll = -model.log_prob(codes, y)
    loss = nll.mean()
    return loss, {"loss": loss.detach(), "nll": loss.detach()}


@torch.no_grad()
def codes_of(vqvae, images: ImageSet, batch_size: int = 500) -> tuple[CodeSet, torch.Tensor]:
    """The code grids of a dataset and log p(x|z_q) (N,) of each image under the VQ-VAE."""
    vqvae.eval()
    grids, log_px = [], []
    for x, y in evaluate.batches(images, batch_size, vqvae.device):
        codes, index = vqvae.quantizer.quantize(vqvae.encoder(x))
        grids.append(index)
        log_px.append(vqvae._decode_grid(codes, y).log_prob(x).double())
    return (CodeSet(torch.cat(grids), images.labels, images.num_classes, name=images.name),
            torch.cat(log_px))


@dataclass
class PriorSummary:
    """What `vae train-prior` reports; to_dict() is its --json object."""

    run_dir: str  # the VQ-VAE's run folder
    step: int  # the prior's optimizer steps
    epochs: int  # the prior's epochs done
    test_nll: float  # -log p(z_q) of the test images' codes, nats per image
    bits_per_code: float  # test_nll in bits per code of the grid
    test_recon: float  # -log p(x|z_q), nats per image
    test_bound: float  # log p(x|z_q) + log p(z_q): a lower bound on log p(x) when `bound`
    bits_per_dim: float | None  # of that bound; None when it is not one (the VQ-VAE's measure)
    bound: bool  # test_bound bounds log P(x) of the data as stored
    measure: str  # what the figures are, in one line
    uniform_bound: float  # the same bound under the uniform prior, for comparison
    train_seconds: float  # the prior's training time
    img_per_s: float | None  # code grids per second
    processes: int  # torchrun processes
    skipped_steps: int  # updates skipped (non-finite)
    device: str  # cpu, cuda, mps
    prior: str  # RUN/prior.safetensors
    samples: str  # the last sample grid (RUN/prior_samples/)

    def to_dict(self) -> dict:
        return asdict(self)


class PriorTrainer(Trainer):
    """The Trainer with the prior's evaluation, sample grid and summary."""

    def __init__(self, vqvae, test_log_px: torch.Tensor, image_dims: int, **kwargs):
        super().__init__(**kwargs)
        self.vqvae, self.image_dims = vqvae, image_dims
        self.test_recon = -test_log_px.mean().item()

    def evaluate(self) -> dict:
        self.model.eval()
        nll = 0.0
        for x, y in evaluate.batches(self.test_set, self.settings.eval_batch_size, self.device):
            nll -= self.model.log_prob(x, y).double().sum().item()
        nll /= len(self.test_set)
        bound = -self.test_recon - nll
        return {"nll": nll, "bits_per_code": nll / (self.model.spec.grid[0] * self.model.spec.grid[1] * math.log(2)),
                "recon": self.test_recon, "elbo": bound,
                "bits_per_dim": self.vqvae.measure.bits_per_dim(bound, self.image_dims)}

    def sample_grid(self, epoch: int) -> None:
        self.model.eval()
        self.vqvae.attach_prior(self.model)
        classes = self.model.spec.num_classes
        per_row = max(1, SAMPLE_GRID // classes) if classes else SAMPLE_GRID
        from ..evaluation.pictures import prior_samples

        grid, nrow = prior_samples(self.vqvae, per_row, generator=self.fixed_noise.manual_seed(self.cfg.seed))
        save_grid(grid, self.run_dir / self.stage.samples / f"epoch_{epoch:03d}.png", nrow=nrow)

    def summary(self) -> PriorSummary:
        if self.last_test is None:
            with devices.forked_rng(self.device):
                self.last_test = self.evaluate()
            if not (self.run_dir / self.stage.model).exists():
                self.save(self.state.step // self.steps_per_epoch)
        t = self.last_test
        grid = self.model.spec.grid
        uniform = -self.test_recon - grid[0] * grid[1] * math.log(self.model.spec.codebook_size)
        return PriorSummary(
            run_dir=str(self.run_dir), step=self.state.step, epochs=self.settings.epochs, test_nll=t["nll"],
            bits_per_code=t["bits_per_code"], test_recon=t["recon"], test_bound=t["elbo"],
            bits_per_dim=t["bits_per_dim"], bound=self.vqvae.measure.bound, measure=self.vqvae.measure.what,
            uniform_bound=uniform, train_seconds=self.state.seconds,
            img_per_s=self.images_per_second(), processes=self.dist.world, skipped_steps=self.state.skipped,
            device=str(self.device), prior=str(self.run_dir / self.stage.model),
            samples=str(self.run_dir / self.stage.samples))


def build(composed: Composed, run_dir: Path, dist: Dist | None = None, callbacks=()) -> PriorTrainer:
    """The prior's trainer for the VQ-VAE in `run_dir`, with the config `composed` (the VQ-VAE's,
    with the prior's and the trainer's settings)."""
    cfg, t = composed.cfg, composed.cfg.trainer
    dist = dist or Dist()
    device = devices.for_training(t.device, t.threads, t.compile, dist.local_rank, dist.world)
    loaded = checkpoint.load_model(run_dir, device=device, with_prior=False)
    vqvae = loaded.model
    if not vqvae.discrete:
        raise UsageError(f"{run_dir} holds a model={cfg.model.name} run; vae train-prior is for VQ-VAE runs "
                         "(model=vqvae)")
    torch.manual_seed(cfg.seed)
    images = {split: data.build(cfg.dataset, split, cfg.seed, t.num_workers) for split in ("train", "test")}
    train_codes, _ = codes_of(vqvae, images["train"])
    test_codes, test_log_px = codes_of(vqvae, images["test"])
    cp = cfg.code_prior
    spec = PriorSpec(vqvae.codebook_size, vqvae.grid, cp.width, cp.layers, cp.heads, cp.dropout,
                     vqvae.spec.num_classes)
    model = CodePrior(spec).to(device)
    trainer = PriorTrainer(vqvae, test_log_px, math.prod(vqvae.spec.image_shape), cfg=cfg, model=model,
                           objective=prior_nll, train_set=train_codes, test_set=test_codes, run_dir=run_dir,
                           device=device, dist=dist, callbacks=callbacks, stage=runs.PRIOR)
    # which VQ-VAE the prior belongs to (checkpoint.load_model checks before attaching it)
    trainer.checkpoint_metadata = {"vaecli.vq_step": str(loaded.step), "vaecli.vq_codebook": vqvae.codebook_fingerprint()}
    return trainer


def fit(composed: Composed, run_dir: Path, resume: bool = False, dist: Dist | None = None,
        callbacks=()) -> PriorSummary | None:
    """Train (or, with resume, continue) the prior of the VQ-VAE in `run_dir`."""
    trainer = build(composed, Path(run_dir), dist, callbacks)
    if resume:
        trainer.resume()
    elif (Path(run_dir) / runs.PRIOR.model).exists() and trainer.dist.main:
        raise UsageError(f"{run_dir} already has a prior; continue it with vae train-prior --ckpt {run_dir} --resume, "
                         f"or delete {runs.PRIOR.model} to start again")
    if trainer.dist.main:
        runs.create(trainer.run_dir, composed.to_yaml(), runs.PRIOR.config)
    return trainer.fit()
