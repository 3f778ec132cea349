"""The trainer. Like minGPT's, it knows no particular model: the objective turns (model, x, y,
step) into a loss and a dict of metric tensors, the model comes from models.build, and every
file goes through runs.py / checkpoint.py. Later features (a learning-rate schedule, EMA
weights, a logger, a progress bar) attach as `Callback`s, without touching the loop.

Determinism: weights come from `seed`; the data order of epoch e from (seed, e); reparameterization
noise and dynamic binarization from the global RNG, whose state is checkpointed. So a resumed
run sees the same batches, and draws the same noise, as an uninterrupted one.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .. import data, models, objectives
from ..config import Composed, Config, loggers
from ..data.images import save_grid
from ..evaluation import evaluate, pictures
from ..runtime import checkpoint, device as devices, distributed, runs, sharing
from ..runtime.distributed import Dist
from . import callbacks as features, precision as precisions
from .precision import TrainingPrecision
from .callbacks import Callback  # noqa: F401 (the hook base class, re-exported for users of the trainer)
from ..errors import Interrupted, UsageError, VaeError

SAMPLE_GRID = 64  # images in the grid written after an epoch


@dataclass
class TrainState:
    """What changes as training goes; the rest of the trainer is fixed after construction."""

    step: int = 0  # optimizer steps taken (skipped ones included), over all epochs
    bad_in_a_row: int = 0  # non-finite steps in a row (the NaN guard), as of the last look
    skipped: int = 0  # steps not applied in all: non-finite, or refused by a callback (extreme gradient norm)
    applied: torch.Tensor | bool = False  # whether the last step updated the weights (0-dim bool, on the device)
    images_seen: int = 0  # this process's images this session
    seconds: float = 0.0  # training time this session, evaluation excluded


@dataclass
class TrainSummary:
    """What `vae train` reports; to_dict() is its --json object."""

    run_dir: str  # the run folder
    step: int  # optimizer steps taken
    epochs: int  # epochs done
    test_elbo: float  # mean ELBO of the test images, nats (EMA weights when trainer.ema is on)
    test_kl: float  # mean KL(q(z|x) || p(z)) of the test images, nats
    kl_exact: bool  # closed-form KL (false: a Monte Carlo estimate)
    active_units: int | None  # latent units whose posterior mean varies over the test images (null where undefined)
    latent_dim: int  # dimensions of z (all groups of a ladder)
    kl_per_dim: list[float] | None  # KL of each latent dimension (closed-form models)
    test_recon: float  # mean -E log p(x|z) of the test images, nats
    bound: bool  # the ELBO bounds log P(x) of the test images as stored (model.measure)
    measure: str  # what the figures are, in one line
    test_bits_per_dim: float | None  # -ELBO in bits/dim where it is a bound, else None
    train_seconds: float  # training time over all sessions, evaluation excluded
    img_per_s: float | None  # training images per second (all processes)
    processes: int  # torchrun processes (1 without torchrun)
    skipped_steps: int  # updates skipped: non-finite loss or gradient, or trainer.skip_threshold
    precision: str  # fp32, bf16 or fp16: what ran ("auto: bf16" where trainer.precision=auto decided)
    device: str  # cpu, cuda, mps
    threads: int  # torch's CPU threads (trainer.threads; 0 chose one per core)
    dataset: str  # dataset= of the run
    model: str  # model= of the run
    checkpoint: str  # RUN/model.safetensors
    samples: str  # the last sample grid written
    codebook: dict | None = None  # VQ-VAE: test perplexity, dead codes, revived codes, size
    kl_per_group: list[float] | None = None  # model=ladder: test KL of each latent group, top first
    active_per_group: list[int] | None = None  # model=ladder: active units of each group
    objective_terms: dict[str, float] | None = None  # the objective's own terms (TC, MMD, ...), last log line
    precision_check: dict | None = None  # trainer.precision=auto: its check on the first batch (precision, reason, loss_fp32, loss_bf16, step_seconds_fp32, step_seconds_bf16)


    def to_dict(self) -> dict:
        return asdict(self)


class _LossStep(torch.nn.Module):
    """The model and its objective as one module. DDP synchronises gradients only for calls
    made through its forward(), and the objective calls model.terms()/log_weights(), so DDP
    (and autocast) wrap this, never the bare model."""

    def __init__(self, model: torch.nn.Module, objective):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, x, y, step: int):
        return self.objective(self.model, x, y, step)


@contextmanager
def _signals_as_flag():
    """SIGINT/SIGTERM set a flag so the loop can finish its step and checkpoint; a second one
    interrupts at once."""
    caught: dict[str, int] = {}
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def handler(signum, frame):
        if caught:
            raise KeyboardInterrupt
        caught["signum"] = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def trainer_features(t, total_steps: int, run_dir: Path | None = None) -> list[features.Callback]:
    """The callbacks that the trainer section `t` of a run config asks for (the trackers need the
    run folder: tracking.py)."""
    found: list[features.Callback] = []
    if t.lr_schedule != "constant" or t.warmup_steps:
        found.append(features.LRSchedule(t.lr_schedule, t.lr, total_steps, t.warmup_steps, t.lr_min))
    if t.grad_clip or t.skip_threshold:
        found.append(features.GradGuard(t.grad_clip, t.skip_threshold))
    if t.ema:
        found.append(features.EMA(t.ema))
    chosen = loggers(t)
    if "tensorboard" in chosen:
        found.append(features.TensorBoard())
    if run_dir is not None and set(chosen) & {"mlflow", "wandb"}:
        from . import tracking  # only here: it imports the trackers' packages lazily, but not for nothing

        found += tracking.build(chosen, run_dir)
    return found


LAST_BATCH = "vaecli.last_batch"  # model file metadata: "dropped" when epochs leave out their short last batch


def steps_per_epoch(images: int, batch: int, whole_batches: bool) -> int:
    """Steps in an epoch: every image once, the last batch short; with `whole_batches` (an
    objective with a batch statistic: objectives.BATCH_STATISTIC) the short last batch is left out,
    unless the whole set is smaller than one batch."""
    return images // batch if whole_batches and images >= batch else math.ceil(images / batch)


def epoch_order(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).to(device)


class Trainer:
    """Trains `model` with `objective` on `train_set`, evaluating on `test_set`, into `run_dir`.

    Under torchrun (`dist`) each rank trains on its share of every batch, DDP averages the
    gradients, metrics are averaged over ranks, and only rank 0 evaluates and writes;
    trainer.batch_size is per process.
    """

    def __init__(self, cfg: Config, model, objective, train_set, test_set, run_dir: Path, device: torch.device,
                 dist: Dist | None = None, callbacks=(), stage: runs.Stage = runs.MODEL):
        t = self.settings = cfg.trainer
        self.stage = stage  # which files of the run folder this model's checkpoints and logs are
        self.checkpoint_metadata: dict[str, str] = {  # extra metadata for the model file
            LAST_BATCH: "dropped" if getattr(objective, "whole_batches", False) else "kept"}
        self.cfg, self.model, self.objective = cfg, model, objective
        self.train_set, self.test_set = train_set, test_set
        self.run_dir, self.device = Path(run_dir), device
        self.dist = dist or Dist()
        self.channels_last = devices.use_channels_last(t.channels_last, model, device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        # fused: one kernel for the whole update instead of ~10 per parameter tensor; the unfused
        # CPU Adam was a third of a training step (bench/RESULTS.md).
        fused = device.type in ("cpu", "cuda")
        # weight_decay: decoupled (AdamW, Loshchilov & Hutter 2019) on every parameter; 0 is plain Adam
        self.optimizer = torch.optim.Adam(model.parameters(), lr=t.lr, eps=t.adam_eps, fused=fused,
                                          betas=getattr(objective, "adam_betas", (0.9, 0.999)),
                                          weight_decay=t.weight_decay, decoupled_weight_decay=True)
        self.amp_dtype = devices.amp_dtype(t.precision, device)  # auto: fp32 until fit's check
        self.precision_check: TrainingPrecision | None = None
        # fp16 needs loss scaling against gradient underflow
        self.scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")
        self._skip_on_device = fused and not self.scaler.is_enabled()  # the fused Adam takes a found_inf tensor
        self.state = TrainState()
        self.global_batch = t.batch_size * self.dist.world
        self.steps_per_epoch = steps_per_epoch(len(train_set), self.global_batch, getattr(objective, "whole_batches", False))
        self.total_steps = t.epochs * self.steps_per_epoch
        # lr schedule, EMA, grad guard; and what the objective trains beside the model (FactorVAE's critic)
        self.callbacks = [*callbacks, *trainer_features(t, self.total_steps, self.run_dir),
                          *getattr(objective, "callbacks", ())]
        self.last_test: dict | None = None
        self.last_train: dict[str, float] = {}  # the last log line's means
        self.extra_metrics: dict[str, torch.Tensor] = {}  # set by callbacks during a step, logged with it
        self._sums, self._count, self._tick, self._caught = None, None, 0.0, {}
        self._unscaled = False
        self._steps_since_log = 0  # steps taken since the last log line (applied or not)
        # Each step's metric tensors and its skip flag are kept as they are (record: no op); they
        # are stacked and folded into the sums and the skip counters at log lines and every
        # max_bad_steps steps (fold: a few ops and the only host read of the interval).
        self._rows: list[tuple[torch.Tensor, ...]] = []
        self._names: list[str] = []
        self._worst_run = 0  # the longest run of skipped steps since the last check_divergence
        self._fold_every = max(1, min(t.max_bad_steps, t.log_every))
        self._hooks = [c for c in self.callbacks if hasattr(c, "on_gradients")]

    # -- resume --------------------------------------------------------------------------------

    def resume(self) -> None:
        """Continue from the run folder's checkpoint: weights, optimizer, loss scaler, RNG, step."""
        run_dir, dist, t = self.run_dir, self.dist, self.settings
        loaded = checkpoint.load_model(run_dir, device=self.device, stage=self.stage, with_prior=False)
        if asdict(loaded.model.spec) != asdict(self.model.spec):
            if loaded.model.spec.likelihood.tanh_means:
                raise UsageError(f"{run_dir} was trained by a vaecli whose logistic likelihood squashed its means by "
                                 "tanh: every command still reads it, but it cannot be resumed; start a new run")
            raise UsageError(f"{run_dir}: the saved model differs from its config.yaml; start a new run")
        self.model.load_state_dict(loaded.model.state_dict())
        if dist.main:  # rank 0 may finish an interrupted checkpoint; the others read after it
            state = checkpoint.load_trainer_for(run_dir, loaded.step, stage=self.stage)
        dist.barrier()
        if not dist.main:
            state = checkpoint.load_trainer_for(run_dir, loaded.step, promote=False, stage=self.stage)
        if state["world"] != dist.world:  # like trainer.batch_size: the global batch is part of the run
            how = distributed.resume_command(run_dir, state["world"], self.stage.kind)
            raise UsageError(f"{run_dir} was trained by {state['world']} process(es) and this is {dist.world}: "
                             f"the global batch would change; resume it with: "
                             f"{how}{'' if state['world'] > 1 else ' (without torchrun)'}")
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        for group in self.optimizer.param_groups:  # a changed lr, eps or weight decay applies from here on
            group["lr"], group["eps"], group["weight_decay"] = t.lr, t.adam_eps, t.weight_decay
            group["decoupled_weight_decay"] = True
        devices.set_rng_state(state["rng"], self.device)
        self.load_callback_states(state["callbacks"])
        self.state.step = state["step"]
        if dist.main:  # lines logged after the checkpoint (a crash) would be logged again
            runs.truncate_metrics(run_dir, self.state.step, self.stage.metrics)
            runs.remove_stale_temp_files(run_dir)

    def load_callback_states(self, saved: dict[str, torch.Tensor]) -> None:
        """Give each stateful callback its tensors; a feature that holds state cannot be turned
        on or off by a resume (the model file would mean something else)."""
        stateful = {c.name: c for c in self.callbacks if hasattr(c, "state_dict")}
        names = {key.split(".", 1)[0] for key in saved}
        for name in sorted(names ^ set(stateful)):
            was = "on" if name in names else "off"
            raise UsageError(f"{self.run_dir} was trained with trainer.{name} {was}: it cannot be turned "
                             f"{'off' if was == 'on' else 'on'} when resuming; start a new run")
        for name, callback in stateful.items():
            prefix = f"{name}."
            tensors = {k[len(prefix):]: v.to(self.device) for k, v in saved.items() if k.startswith(prefix)}
            callback.load_state_dict(self, tensors)

    # -- the loop ------------------------------------------------------------------------------

    def fit(self) -> TrainSummary | None:
        """Train to trainer.epochs; the summary on rank 0, None on the other ranks."""
        if self.dist.world > 1 and len(self.train_set) < self.dist.world:
            raise UsageError(f"{len(self.train_set)} training images cannot be shared by {self.dist.world} processes")
        self.images = self.train_set.images.to(self.device)
        self.labels = self.train_set.labels.to(self.device) if self.train_set.labels is not None else None
        self.fixed_noise = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
        self._params = [p for p in self.model.parameters() if p.requires_grad]
        if self.settings.precision == "auto":
            self.choose_precision()
        if self.settings.compile:
            devices.compile_methods(self.model, getattr(self.model, "compiled_methods", ("terms", "log_weights")))
        self.loss_step = self.dist.wrap(_LossStep(self.model, self.objective), self.device)
        self.emit("on_train_start")
        try:
            with _signals_as_flag() as self._caught:
                while self.state.step < self.total_steps:
                    self.run_epoch()
        finally:
            self.loss_step = None  # DDP's reducer holds the process group: let it go before teardown
            self.emit("on_train_end")
        try:
            return self.summary() if self.dist.main else None
        finally:  # a Python caller's process no longer counts as computing (the CLI's ends anyway)
            sharing.share().leave()

    def choose_precision(self) -> None:
        """trainer.precision=auto: bf16 only where the check on the first batch passes (precision.py),
        on every rank."""
        index = torch.arange(min(len(self.train_set), self.settings.batch_size), device=self.device)
        x = self.train_set.to_float(self.images[index])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = None if self.labels is None else self.labels[index]
        step = _LossStep(self.model, self.objective)
        # the whole loss module: what an objective trains beside the model (a critic) is restored too
        check = precisions.choose(lambda x, y: step(x, y, self.state.step), step, x, y, self.device)
        if self.dist.any(check.precision != "bf16", self.device) and check.precision == "bf16":
            check = TrainingPrecision("fp32", "another process's check kept fp32 (every process runs the same)")
        self.precision_check, self.amp_dtype = check, check.dtype

    def run_epoch(self) -> None:
        epoch, offset = divmod(self.state.step, self.steps_per_epoch)
        order = epoch_order(len(self.train_set), self.cfg.seed, epoch, self.device)
        self.dist.seed_epoch(self.cfg.seed, epoch)
        self.emit("on_epoch_start", epoch)
        self.model.train()
        self._tick = time.perf_counter()
        last = self.steps_per_epoch - 1
        for i in range(offset, self.steps_per_epoch):
            sharing.tick()  # at most once a second: this process's share of the cores (sharing.py)
            self.train_step(self.dist.shard(order, i, self.global_batch))
            step = self.state.step
            if (step % self.settings.log_every == 0 or i == last) and self._steps_since_log:
                self.log(epoch + 1)
            elif step % self.settings.max_bad_steps == 0:
                self.check_divergence()
            if self.dist.any(bool(self._caught), self.device):
                self.interrupt(epoch)
            every = self.settings.checkpoint_every_steps
            if every and step % every == 0 and i < last:
                self.save(epoch)  # mid-epoch: resume continues from this step, bit for bit
        self.state.seconds += time.perf_counter() - self._tick
        self.end_epoch(epoch + 1)

    def train_step(self, index: torch.Tensor) -> None:
        """One optimizer step on the images `index`, unless the loss or a gradient is not finite
        (or a callback refuses it). The decision stays on the device: the fused optimizer skips
        the update by a found_inf tensor (as GradScaler drives it), so no step waits for a host
        read; skips are counted lazily (`check_divergence`)."""
        x = self.train_set.to_float(self.images[index])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = None if self.labels is None else self.labels[index]
        with devices.autocast(self.device, self.amp_dtype):
            loss, metrics = self.loss_step(x, y, self.state.step)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.state.step += 1
        self.state.images_seen += x.shape[0]
        self._unscaled = False
        accepted = self.finite(loss)
        if self._hooks:
            accepted = accepted & self.gradients_accepted()
        rejected = (~accepted).float()  # 1: a skipped step
        if self._skip_on_device:
            self.optimizer.found_inf = rejected  # 1: the fused Adam leaves weights and state alone
            self.optimizer.step()
        elif bool(accepted):  # fp16's loss scaler, or an unfused optimizer (MPS): decided on the host
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self._unscaled:
            self.scaler.update()  # closes this step's unscale_; lowers the loss scale if it overflowed
        self.state.applied = accepted
        self.record(rejected, {**metrics, **self.extra_metrics} if self.extra_metrics else metrics)
        self.emit("on_step_end")

    def record(self, rejected: torch.Tensor, metrics: dict[str, torch.Tensor]) -> None:
        """Keep a step's metric tensors and its skip flag (1: skipped) for `fold`: no op per step."""
        names = list(metrics)
        if names != self._names or len(self._rows) == self._fold_every:
            self.fold()  # full, or another set of metrics (a callback's): sums so far first
            if names != self._names:
                self._sums, self._names = None, names
        self._rows.append((*metrics.values(), rejected))
        self._steps_since_log += 1

    def fold(self) -> None:
        """Add the recorded steps to the metric sums of this log interval (applied steps only: a
        skipped step's values may be NaN) and count skips and skips in a row: one host read."""
        n = len(self._rows)
        if n == 0:
            return
        rows = torch.stack([v for row in self._rows for v in row]).float().view(n, -1)  # types promote
        self._rows = []
        flags = rows[:, -1]
        applied = flags == 0
        sums = torch.where(applied[:, None], rows[:, :-1], 0.0).sum(0)
        count = applied.sum().float()
        self._sums, self._count = (sums, count) if self._sums is None else (self._sums + sums, self._count + count)
        state = self.state
        for flag in flags.tolist():
            state.bad_in_a_row = state.bad_in_a_row + 1 if flag else 0
            state.skipped += int(flag)
            self._worst_run = max(self._worst_run, state.bad_in_a_row)

    def check_divergence(self) -> None:
        """Fold the recorded steps (one host read) and stop when trainer.max_bad_steps steps in a
        row were skipped (the weights never saw them; this only decides when to give up)."""
        self.fold()
        if self._worst_run >= self.settings.max_bad_steps:
            self.state.bad_in_a_row = self._worst_run
            raise self.diverged()
        self._worst_run = self.state.bad_in_a_row  # the current run may go on

    def gradients_accepted(self) -> torch.Tensor:
        """Every callback with an on_gradients hook (clipping, skipping) accepts the update (a
        hook returns a bool, or a 0-dim bool tensor to decide on the device); under fp16 they see
        the true gradients (unscaled first)."""
        self.extra_metrics = {}
        self._unscaled = bool(self._hooks) and self.scaler.is_enabled()
        if self._unscaled:
            self.scaler.unscale_(self.optimizer)
        accepted = torch.ones((), dtype=torch.bool, device=self.device)
        for callback in self._hooks:
            verdict = callback.on_gradients(self)
            if verdict is False:
                accepted = torch.zeros_like(accepted)
            elif torch.is_tensor(verdict):
                accepted = accepted & verdict
        return accepted

    @contextmanager
    def eval_weights(self):
        """The weights that evaluation, pictures and the model file use: the callbacks' choice
        (EMA's average), else the training weights."""
        with ExitStack() as stack:
            for callback in self.callbacks:
                if hasattr(callback, "eval_weights"):
                    stack.enter_context(callback.eval_weights(self))
            yield

    def finite(self, loss: torch.Tensor) -> torch.Tensor:
        """Whether the loss and every gradient are finite, as a 0-dim bool tensor on the device:
        one sum over the gradients (NaN and inf survive it), no host read. Under fp16 overflowing
        gradients are the loss scaler's business (it skips those steps itself)."""
        if self.scaler.is_enabled():
            return torch.isfinite(loss.detach())
        grads = [p.grad for p in self._params if p.grad is not None]
        # one read-only pass over the gradients (NaN and inf survive a sum; _foreach_norm's 1-norm
        # took 5x longer on CPU)
        total = torch.stack([*(g.sum() for g in grads), loss.detach().float()]).sum()
        return (total - total) == 0  # 0 for a finite total; NaN for inf or NaN

    def log(self, epoch: int) -> None:
        """Average the metrics of the applied steps since the last log line over steps and
        ranks: one host read (the skip counters: another)."""
        self.check_divergence()
        self._steps_since_log = 0
        if self._sums is None or not bool(self._count > 0):  # nothing applied since the last line
            self._sums = None
            return
        means = dict(zip(self._names, self.dist.mean(self._sums / self._count).tolist()))
        self._sums = None
        if self.state.skipped:
            means["skipped_steps"] = self.state.skipped
        now = time.perf_counter()
        self.state.seconds += now - self._tick
        self._tick = now
        means["img_per_s"] = self.images_per_second() or 0.0
        self.emit("on_log", epoch, means)  # a callback may add values to the line (the learning rate)
        self.last_train = means
        if self.dist.main:
            runs.append_metrics(self.run_dir, {"step": self.state.step, "epoch": epoch, "split": "train", **means},
                                self.stage.metrics)

    def end_epoch(self, epoch: int) -> None:
        """Rank 0 evaluates on the test split, writes the sample grid and the checkpoint."""
        last = self.state.step == self.total_steps
        if not self.dist.main:
            return
        t = self.settings
        with devices.forked_rng(self.device), self.eval_weights():  # the training RNG and weights stay
            self.last_test = self.evaluate()
            runs.append_metrics(self.run_dir, {"step": self.state.step, "epoch": epoch, "split": "test",
                                               **self.last_test}, self.stage.metrics)
            self.emit("on_eval", epoch, self.last_test)
            # a decoder that draws pixel by pixel (H * W passes a grid) draws its grid at the end only
            every = t.sample_every and not getattr(self.model, "draws_pixel_by_pixel", False)
            if last or (every and epoch % t.sample_every == 0):
                self.sample_grid(epoch)
        if last or (t.checkpoint_every and epoch % t.checkpoint_every == 0):
            self.save(epoch)

    def evaluate(self) -> dict:
        result = evaluate.elbo_dataset(self.model, self.test_set, self.settings.eval_batch_size)
        result["kl_exact"] = self.model.exact_kl
        return result

    def sample_grid(self, epoch: int) -> None:
        """The same prior draws after every epoch (one row per class for a conditional model)."""
        from torchvision.utils import make_grid

        if not self.model.can_sample:
            return
        self.model.eval()
        per_row = max(1, SAMPLE_GRID // self.model.num_classes) if self.model.conditional else SAMPLE_GRID
        grid, nrow = pictures.prior_samples(self.model, per_row, generator=self.fixed_noise.manual_seed(self.cfg.seed))
        path = self.run_dir / self.stage.samples / f"epoch_{epoch:03d}.png"
        save_grid(grid, path, nrow=nrow)
        self.emit("on_samples", epoch, make_grid(grid.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=2))

    # -- checkpoints, stopping -----------------------------------------------------------------

    def save(self, epoch: int) -> None:
        if self.dist.main:
            scaler = self.scaler.state_dict() if self.scaler.is_enabled() else None
            state = {f"{c.name}.{key}": value for c in self.callbacks if hasattr(c, "state_dict")
                     for key, value in c.state_dict(self).items()}  # read before eval_weights swaps them
            with self.eval_weights():
                checkpoint.save_checkpoint(self.run_dir, self.model, self.cfg.dataset, self.cfg.seed, self.optimizer,
                                           devices.rng_state(self.device), self.state.step, epoch, scaler=scaler,
                                           world=self.dist.world, stage=self.stage, extra=self.checkpoint_metadata,
                                           callbacks=state)

    def interrupt(self, epoch: int):
        """A signal reached some rank: every rank saves (rank 0 writes) and stops after this step."""
        self.save(epoch)
        signum = self._caught.get("signum", signal.SIGTERM)  # a rank may stop for another's signal
        command = distributed.resume_command(self.run_dir, self.dist.world, self.stage.kind)
        raise Interrupted(f"interrupted at step {self.state.step}; resume with: {command}", signum,
                          announce=self.dist.main)

    def diverged(self) -> VaeError:
        t, cfg = self.settings, self.cfg
        likely = [f"a learning rate too high (trainer.lr={t.lr:g}; try {t.lr / 10:g})"]
        if cfg.likelihood.name == "gaussian_learned":
            likely.append("the learned sigma of likelihood=gaussian_learned collapsing (raise likelihood.sigma "
                          "or use likelihood=gaussian)")
        if t.precision == "fp16":
            likely.append("fp16 overflow (try trainer.precision=bf16 or fp32)")
        if t.skip_threshold:
            likely.append(f"trainer.skip_threshold={t.skip_threshold:g} below this model's usual gradient norms "
                          "(grad_norm in metrics.jsonl; raise it or set 0)")
        saved = checkpoint.saved_step(self.run_dir, self.stage)
        keep = (f"the last good checkpoint (step {saved}) is in {self.run_dir}" if saved is not None
                else "no checkpoint was written yet")
        why = "a non-finite loss or gradient" + (f", or a gradient norm above trainer.skip_threshold={t.skip_threshold:g}"
                                                 if t.skip_threshold else "")
        return VaeError(f"training diverged: {self.state.bad_in_a_row} steps in a row (to step {self.state.step}) "
                        f"had {why} and were skipped; likely causes: {'; '.join(likely)}; {keep}")

    # -- reporting -----------------------------------------------------------------------------

    def emit(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            method = getattr(callback, hook, None)  # a duck-typed callback may leave hooks out
            if method is not None:
                method(self, *args)

    def precision_used(self) -> str:
        """trainer.precision as it ran: auto says what it chose."""
        used = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp_dtype, "fp32")
        return f"auto: {used}" if self.settings.precision == "auto" else used

    def images_per_second(self) -> float | None:
        s = self.state
        return s.images_seen * self.dist.world / s.seconds if s.seconds > 0 else None

    def summary(self) -> TrainSummary:
        if self.last_test is None:  # nothing left to train (resumed a finished run): still report
            with devices.forked_rng(self.device), self.eval_weights():
                self.last_test = self.evaluate()
            if not (self.run_dir / self.stage.model).exists():
                self.save(self.state.step // self.steps_per_epoch)
        test, model = self.last_test, self.model
        measure = self.objective.measure(model.measure) if hasattr(self.objective, "measure") else model.measure
        dims = math.prod(self.test_set.image_shape)
        return TrainSummary(
            run_dir=str(self.run_dir), step=self.state.step, epochs=self.settings.epochs,
            test_elbo=test["elbo"], test_kl=test["kl"], kl_exact=model.exact_kl,
            active_units=test.get("active_units"), latent_dim=test.get("latent_dim", model.latent_dim),
            kl_per_dim=test.get("kl_per_dim"),
            test_recon=test["recon"], bound=measure.bound, measure=measure.what,
            test_bits_per_dim=measure.bits_per_dim(test["elbo"], dims),
            train_seconds=self.state.seconds, img_per_s=self.images_per_second(),
            processes=self.dist.world, skipped_steps=self.state.skipped, precision=self.precision_used(),
            device=str(self.device), threads=torch.get_num_threads(), dataset=self.cfg.dataset.name,
            model=model.spec.body.arch if model.spec.kind == "vae" else f"{model.spec.kind} ({model.spec.body.arch})",
            checkpoint=str(self.run_dir / runs.MODEL_FILE), samples=str(self.run_dir / runs.SAMPLES_DIR),
            codebook=codebook_health(test, model), kl_per_group=test.get("kl_per_group"),
            active_per_group=test.get("active_per_group"), objective_terms=self.objective_terms(),
            precision_check=self.precision_check.to_dict() if self.precision_check else None)

    def objective_terms(self) -> dict[str, float] | None:
        """The objective's own terms (objective.terms: TC, MMD, the critic's loss...) as the last
        log line averaged them; None when it has none or nothing was logged this session."""
        names = getattr(self.objective, "terms", ())
        terms = {name: self.last_train[name] for name in names if name in self.last_train}
        return terms or None


def codebook_health(test: dict, model) -> dict | None:
    """The codebook figures of a test evaluation (None for a model without a codebook)."""
    if "perplexity" not in test:
        return None
    return {"perplexity": test["perplexity"], "dead_codes": test["dead_codes"], "revived": int(test["revived"]),
            "size": model.codebook_size}


def build(composed: Composed, run_dir: Path, dist: Dist | None = None, callbacks=(),
          whole_batches: bool | None = None) -> Trainer:
    """The trainer for a composed config: device, data, model and objective, in the order that
    makes the weights a function of `seed` alone. `whole_batches`: whether an epoch drops its short
    last batch (None: as the objective asks, objectives.BATCH_STATISTIC; a resumed run keeps what
    it was trained with)."""
    cfg, t = composed.cfg, composed.cfg.trainer
    dist = dist or Dist()
    device = devices.for_training(t.device, t.threads, t.compile, dist.local_rank, dist.world)
    torch.manual_seed(cfg.seed)
    train_set = data.build(cfg.dataset, "train", cfg.seed, t.num_workers)
    test_set = data.build(cfg.dataset, "test", cfg.seed, t.num_workers)
    model = models.from_config(cfg, train_set.image_shape, train_set.num_classes).to(device)
    if whole_batches is None:
        whole_batches = cfg.objective.name in objectives.BATCH_STATISTIC
    steps = t.epochs * steps_per_epoch(len(train_set), t.batch_size * dist.world, whole_batches)
    objective = objectives.build(cfg.objective, cfg.kl, cfg.beta, steps, model.latent_dim,
                                  model.spec.image_shape[0])
    objective.whole_batches = whole_batches
    return Trainer(cfg, model, objective, train_set, test_set, run_dir, device, dist, callbacks)


def fit(composed: Composed, run_dir: Path, resume: bool = False, dist: Dist | None = None,
        callbacks=()) -> TrainSummary | None:
    """Train (or, with resume, continue) the model of `composed` in `run_dir`."""
    # a run keeps the epoch length it was trained with (files from before short batches were dropped: kept)
    whole_batches = checkpoint.saved_metadata(run_dir).get(LAST_BATCH) == "dropped" if resume else None
    trainer = build(composed, run_dir, dist, callbacks, whole_batches)
    if resume:
        trainer.resume()
    else:
        try:
            trainer.model.initialize()  # weights a new run starts from (model=autoencoder_kl model.pretrained=DIR)
        except ValueError as e:
            raise UsageError(f"model.pretrained: {e}") from None
    if trainer.dist.main:
        runs.create(trainer.run_dir, composed.to_yaml())
    with runs.session(trainer.run_dir, composed.overrides, enabled=trainer.dist.main) as record_summary:
        summary = trainer.fit()
        if summary is not None:
            record_summary(summary.to_dict())
    return summary
