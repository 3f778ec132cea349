"""Trainer features that attach to the loop as callbacks (train.Trainer calls the hooks; it
knows none of these classes): the learning-rate schedule, EMA weights, the gradient-norm
guard and the TensorBoard logger. `train.trainer_features(trainer_cfg, total_steps)` gives the ones a
run config asks for.

A callback overrides the hooks it needs. Beyond the loop's events there are three more:
  on_gradients(trainer) -> bool   after backward, before the update; False skips the update
  eval_weights(trainer)           a context manager: the weights that evaluation, the sample
                                  grids and the model file use (EMA)
  state_dict() / load_state_dict  tensors kept in trainer.safetensors under "<name>.", so a
                                  resumed run continues bit for bit
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import UsageError
from ..hooks import Callback  # noqa: F401 (the base of every feature here; re-exported)


# ---------------------------------------------------------------------------------------------
# Learning rate


def burda_lr(base: float, epoch: int) -> float:
    """Burda et al. (2015): 3^i passes at base * 10^(-i/7) for i = 0..7, then the last rate.
    Stage i covers epochs [(3^i - 1)/2, (3^(i+1) - 1)/2)."""
    i = 0
    while i < 7 and epoch >= (3 ** (i + 1) - 1) // 2:
        i += 1
    return base * 10 ** (-i / 7)


def scheduled_lr(schedule: str, base: float, step: int, total_steps: int, warmup_steps: int = 0,
                 lr_min: float = 0.0, steps_per_epoch: int = 1) -> float:
    """The learning rate of optimizer step `step` (0-based).

    Warm-up: a linear rise base * (step + 1) / warmup_steps over the first warmup_steps steps
    (Goyal et al. 2017), so the first step is not taken at the full rate. Then:
      constant  base
      cosine    lr_min + (base - lr_min) * (1 + cos(pi * t)) / 2, t going 0 -> 1 over the steps
                after the warm-up (Loshchilov & Hutter 2017, without restarts)
      burda     burda_lr(base, epoch)
    """
    if warmup_steps and step < warmup_steps:
        return base * (step + 1) / warmup_steps
    if schedule == "cosine":
        span = max(total_steps - warmup_steps, 1)
        t = min(max(step - warmup_steps, 0) / span, 1.0)
        return lr_min + (base - lr_min) * 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "burda":
        return burda_lr(base, step // max(steps_per_epoch, 1))
    return base


class LRSchedule(Callback):
    """Sets the learning rate before every step from scheduled_lr (a pure function of the step,
    so a resumed run follows the same curve with no state to save)."""

    def __init__(self, schedule: str, base: float, total_steps: int, warmup_steps: int = 0, lr_min: float = 0.0):
        self.schedule, self.base, self.total_steps = schedule, base, total_steps
        self.warmup_steps, self.lr_min = warmup_steps, lr_min

    def _set(self, trainer) -> None:
        lr = scheduled_lr(self.schedule, self.base, trainer.state.step, self.total_steps, self.warmup_steps,
                          self.lr_min, trainer.steps_per_epoch)
        for group in trainer.optimizer.param_groups:
            group["lr"] = lr

    def on_train_start(self, trainer) -> None:
        self._set(trainer)

    def on_step_end(self, trainer) -> None:
        self._set(trainer)  # for the next step

    def on_log(self, trainer, epoch: int, values: dict[str, float]) -> None:
        values["lr"] = trainer.optimizer.param_groups[0]["lr"]


# ---------------------------------------------------------------------------------------------
# Weights


class EMA(Callback):
    """An exponential moving average of the weights, ema <- decay * ema + (1 - decay) * w after
    every applied update (Polyak averaging; VDVAE evaluates and samples with it). Evaluation,
    the sample grids and model.safetensors use the average; trainer.safetensors keeps the
    training weights, so resuming continues both exactly.

    The average starts at the initial weights, and the decay of update n is min(decay,
    (1 + n) / (10 + n)) (TensorFlow's ExponentialMovingAverage with num_updates): early in a run the
    average follows the weights closely instead of holding on to the random initialisation (with
    a fixed 0.999 after one MNIST epoch, 63% of the average would still be step 0's weights)."""

    name = "ema"

    def __init__(self, decay: float):
        self.decay = decay
        self.updates: torch.Tensor | int = 0  # applied updates averaged so far (on the device while training)
        self.shadow: list[torch.Tensor] | None = None
        self._loaded_training: list[torch.Tensor] | None = None

    @staticmethod
    def _params(trainer) -> list[torch.Tensor]:
        """The weights averaged: every parameter, and the buffers a module names as weights that
        are learned without gradients (`weight_buffers`: a VQ-VAE's EMA codebook), so the model
        file never pairs an averaged encoder and decoder with the live codebook."""
        model = trainer.model
        buffers = [getattr(m, name) for m in model.modules() for name in getattr(m, "weight_buffers", ())]
        return [*model.parameters(), *buffers]

    def on_train_start(self, trainer) -> None:
        if self.shadow is None:
            self.shadow = [p.detach().clone() for p in self._params(trainer)]
        self.updates = torch.as_tensor(self.updates, dtype=torch.float32, device=trainer.device)  # exact to 2^24 updates; MPS has no float64

    def on_step_end(self, trainer) -> None:
        """Average an applied step in, on the device (a skipped one moves nothing): no host read."""
        applied = torch.as_tensor(trainer.state.applied, device=self.updates.device).to(torch.float32)
        weight = ((1.0 - self.decay_at(self.updates)) * applied).to(self.shadow[0].dtype)
        with torch.no_grad():
            torch._foreach_lerp_(self.shadow, [p.detach() for p in self._params(trainer)], weight)
        self.updates = self.updates + applied

    def decay_at(self, n):
        """The decay used for update n (0-based; a number or a tensor)."""
        if torch.is_tensor(n):
            return torch.clamp((1 + n) / (10 + n), max=self.decay)
        return min(self.decay, (1 + n) / (10 + n))

    @contextmanager
    def eval_weights(self, trainer):
        """The averaged weights in the model for the duration; the training weights after."""
        params = self._params(trainer)
        if self.shadow is None:  # before training started (a summary of a finished run)
            yield
            return
        with torch.no_grad():
            training = [p.detach().clone() for p in params]
            torch._foreach_copy_([p.data for p in params], self.shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_([p.data for p in params], training)

    def state_dict(self, trainer) -> dict[str, torch.Tensor]:
        """The training weights (the model file holds the average)."""
        state = {f"weights.{i}": p.detach().clone() for i, p in enumerate(self._params(trainer))}
        state["updates"] = torch.as_tensor(self.updates).to(torch.int64).cpu()
        return state

    def load_state_dict(self, trainer, tensors: dict[str, torch.Tensor]) -> None:
        """Called after the model file (the average) was loaded into the model: that becomes
        the average, and the saved training weights go back into the model."""
        params = self._params(trainer)
        self.updates = int(tensors.pop("updates"))
        if len(tensors) != len(params):  # e.g. a VQ-VAE saved before its codebook was averaged too
            raise UsageError(f"the checkpoint's EMA state has {len(tensors)} tensors and the model averages "
                             f"{len(params)} (saved by another vaecli version?); start a new run")
        with torch.no_grad():
            self.shadow = [p.detach().clone() for p in params]
            for i, p in enumerate(params):
                p.copy_(tensors[f"weights.{i}"])


# ---------------------------------------------------------------------------------------------
# Gradients


class GradGuard(Callback):
    """Gradient-norm clipping to `clip` (0: off) and, as in VDVAE (Child 2021), skipping any
    update whose gradient norm exceeds `skip` (0: off): such a step is counted with the NaN
    guard's skips (trainer.state.skipped) and the weights never see it. The mean norm of the
    applied steps is logged as grad_norm."""

    def __init__(self, clip: float = 0.0, skip: float = 0.0):
        self.clip, self.skip = clip, skip

    def on_gradients(self, trainer) -> torch.Tensor | bool:
        """True, or (skipping on) whether the norm is within bounds, decided on the device."""
        params = [p for p in trainer.model.parameters() if p.grad is not None]
        if self.clip:
            norm = torch.nn.utils.clip_grad_norm_(params, self.clip, foreach=True)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        trainer.extra_metrics["grad_norm"] = norm.detach().float()
        return norm <= self.skip if self.skip else True


# ---------------------------------------------------------------------------------------------
# Logging

TENSORBOARD_DIR = "tensorboard"


class TensorBoard(Callback):
    """trainer.logger=tensorboard: the metrics.jsonl figures as TensorBoard scalars (train/* at
    every log line, test/* after every epoch, KL per dimension and per group as test/kl_dim/zN
    and test/kl_group/N), and the sample grid as an image, into RUN/tensorboard/ (rank 0 only).
    metrics.jsonl stays the record; this is a view of it. A resumed run opens the writer with
    purge_step = the checkpoint's step + 1, so TensorBoard drops what a killed session logged
    after the checkpoint (as runs.truncate_metrics does) and the curves continue without
    duplicate steps."""

    def __init__(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UsageError("trainer.logger=tensorboard needs the tensorboard package: "
                             "pip install 'vaecli[tensorboard]'") from None
        self.writer_class, self.writer = SummaryWriter, None

    def on_train_start(self, trainer) -> None:
        if trainer.dist.main:
            step = trainer.state.step
            kind = trainer.stage.kind  # a VQ-VAE's prior logs beside its model, in prior_tensorboard/
            folder = TENSORBOARD_DIR if kind == "model" else f"{kind}_{TENSORBOARD_DIR}"
            self.writer = self.writer_class(log_dir=str(Path(trainer.run_dir) / folder),
                                            purge_step=step + 1 if step > 0 else None)

    def on_log(self, trainer, epoch: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"train/{key}", value, trainer.state.step)

    def on_eval(self, trainer, epoch: int, test: dict) -> None:
        if self.writer is None:
            return
        step = trainer.state.step
        for key, value in test.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"test/{key}", value, step)
        for d, value in enumerate(test.get("kl_per_dim") or []):
            self.writer.add_scalar(f"test/kl_dim/z{d}", value, step)
        for g, value in enumerate(test.get("kl_per_group") or []):
            self.writer.add_scalar(f"test/kl_group/{g + 1}", value, step)
        self.writer.add_scalar("test/epoch", epoch, step)
        self.writer.flush()  # on disk by the time the checkpoint is

    def on_samples(self, trainer, epoch: int, grid: torch.Tensor) -> None:
        if self.writer is not None:
            self.writer.add_image("samples", grid.clamp(0, 1), trainer.state.step)
            self.writer.flush()

    def on_train_end(self, trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
