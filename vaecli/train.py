"""fit(): the training loop. It knows no particular model: the objective returns a loss and a
dict of metrics, the model comes from models.build, and everything is saved as safetensors.

Determinism: weights come from `seed`; the data order of epoch e from (seed, e); reparameterization
noise and dynamic binarization from the global RNG, whose state is checkpointed. So a resumed
run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import checkpoint, data, evaluate, models, objectives
from .config import DEVICES, Composed
from .data.images import save_grid
from .errors import UsageError, VaeError

SAMPLE_GRID = 64


class Reporter:
    """Progress callbacks; the CLI passes a rich implementation, the default does nothing."""

    def start(self, total_steps: int, done_steps: int, run_dir: Path) -> None: ...
    def advance(self, step: int) -> None: ...
    def metrics(self, step: int, epoch: int, values: dict[str, float]) -> None: ...
    def note(self, text: str) -> None: ...
    def stop(self) -> None: ...


class Interrupted(Exception):
    """SIGINT/SIGTERM during training; a checkpoint at `step` was written first."""

    def __init__(self, step: int, run_dir: Path, signum: int, announce: bool = True, world: int = 1):
        command = (f"torchrun --nproc-per-node {world} -m vaecli train --resume {run_dir}" if world > 1
                   else f"vae train --resume {run_dir}")
        super().__init__(f"interrupted at step {step}; resume with: {command}")
        self.step, self.run_dir, self.signum = step, run_dir, signum
        self.announce = announce  # under torchrun only rank 0 says it


def pick_device(name: str) -> torch.device:
    """auto -> cuda, then mps, then cpu; an explicit device that is missing is a UsageError."""
    if name not in DEVICES:
        raise UsageError(f"device must be one of {', '.join(DEVICES)} (got {name!r})")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("trainer.device=cuda but no CUDA device is available; use trainer.device=auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("trainer.device=mps but MPS is not available; use trainer.device=auto")
    return torch.device(name)


@dataclass
class Dist:
    """This process's place in a torchrun job; the default is a single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Dist:
    """Join the process group described by torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK):
    nccl on CUDA, gloo on CPU. Without torchrun (or with one process) it does nothing."""
    import torch.distributed as td

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if device_name == "mps":
        raise UsageError("torchrun with trainer.device=mps is not supported; use cuda or cpu")
    if cuda:
        torch.cuda.set_device(local_rank)
    if not td.is_initialized():
        td.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank, world, local_rank)


def leave_distributed(dist: Dist, together: bool) -> None:
    """Tear down the process group. After a run that finished (together=True) every rank first
    waits for the others: rank 0 evaluates and saves after the last step while the others are
    done, and a gloo rank that destroyed its group and exited meanwhile was seen to abort
    ("terminate called without an active exception", SIGABRT) in CI. After a failure no rank
    waits (a peer may be gone; torchrun stops the rest). gc.collect() first, so DDP's reducer,
    which holds the group, is gone and destroy_process_group really closes it."""
    if dist.world == 1:
        return
    import gc

    import torch.distributed as td

    if not td.is_initialized():
        return
    gc.collect()
    if together:
        td.barrier()
    td.destroy_process_group()


def broadcast(value, dist: Dist):
    """Rank 0's `value` on every rank (small Python objects: a run folder name)."""
    if dist.world == 1:
        return value
    import torch.distributed as td

    box = [value]
    td.broadcast_object_list(box, src=0)
    return box[0]


class _LossStep(torch.nn.Module):
    """The model and its objective as one module. DDP synchronises gradients only for calls
    made through its forward(), and the objective calls model.terms()/log_weights(), so DDP
    wraps this, never the bare model."""

    def __init__(self, model: torch.nn.Module, objective):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, x, y, step: int):
        return self.objective(self.model, x, y, step)


def _compile(model: torch.nn.Module, device: torch.device) -> None:
    """torch.compile the two methods objectives call. They become instance attributes, so the
    module, its state_dict and therefore the checkpoint stay those of the plain model.
    dynamic=False: one specialised graph per batch shape (train, last batch, eval) ran 1.2x
    faster than eager on CPU, where dynamic-shape graphs were no faster than eager."""
    import logging
    import shutil

    if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++", "clang++")):
        raise UsageError("trainer.compile=true on CPU needs a C++ compiler (g++ or clang++) on PATH; "
                         "install one or drop trainer.compile")
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime" noise
    for name in ("terms", "log_weights"):
        setattr(model, name, torch.compile(getattr(model, name), dynamic=False))


def _channels_last(setting: str, arch: str, device: torch.device) -> bool:
    setting = str(setting).lower()
    if setting == "auto":  # NHWC suits cuDNN's tensor-core kernels; measured no gain on CPU
        return arch in ("conv", "resnet") and device.type == "cuda"
    return setting == "true" and arch in ("conv", "resnet")


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    cuda = [state[k] for k in sorted(state) if k.startswith("cuda")]
    if device.type == "cuda" and cuda:
        torch.cuda.set_rng_state_all(cuda)


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


def sample_labels(model, n: int, device: torch.device) -> torch.Tensor | None:
    """Labels for a sample grid: none for an unconditional model, else each class in turn
    (one row per class, as many columns as fit in n)."""
    if not model.conditional:
        return None
    classes = model.spec.num_classes
    per_class = max(1, n // classes)
    return torch.arange(classes, device=device).repeat_interleave(per_class)


def burda_lr(base: float, epoch: int) -> float:
    """Burda et al. (2015): 3^i passes at base * 10^(-i/7) for i = 0..7, then the last rate.
    Stage i covers epochs [(3^i - 1)/2, (3^(i+1) - 1)/2)."""
    i = 0
    while i < 7 and epoch >= (3 ** (i + 1) - 1) // 2:
        i += 1
    return base * 10 ** (-i / 7)


def _epoch_order(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).to(device)


def fit(composed: Composed, run_dir: Path, resume: bool = False, reporter: Reporter | None = None,
        dist: Dist | None = None) -> dict:
    """Train (or continue training) the model of `composed` into `run_dir`; returns a summary.

    Under torchrun (`dist` from init_distributed) each rank trains on its share of every batch,
    DDP averages the gradients, metrics are averaged over ranks, and only rank 0 evaluates and
    writes; trainer.batch_size is per process.
    """
    reporter = reporter or Reporter()
    dist = dist or Dist()
    cfg, t = composed.cfg, composed.cfg.trainer
    run_dir = Path(run_dir)
    device = pick_device(t.device)
    if dist.world > 1 and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    torch.manual_seed(cfg.seed)

    train_set = data.build(cfg.dataset, "train", cfg.seed, t.num_workers)
    test_set = data.build(cfg.dataset, "test", cfg.seed, t.num_workers)
    if cfg.model.conditional and train_set.labels is None:
        raise UsageError(f"model.conditional=true needs class labels, and dataset={cfg.dataset.name} has none")
    spec = models.spec_from_config(cfg.model, cfg.likelihood, cfg.prior, train_set.image_shape,
                                   train_set.num_classes)
    try:
        model = models.build(spec).to(device)
    except ValueError as e:  # e.g. too many conv stages for the image size
        raise UsageError(f"cannot build model={cfg.model.name} for {spec.image_shape} images: {e}") from None
    channels_last = _channels_last(t.channels_last, spec.arch, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    # fused: one kernel for the whole update instead of ~10 per parameter tensor; the unfused
    # CPU Adam was a third of a training step (bench/RESULTS.md).
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr, eps=t.adam_eps, fused=device.type in ("cpu", "cuda"))
    # Mixed precision: the networks run in bf16/fp16, the distributions (log-likelihood, KL) in
    # fp32 (models/vae.py casts); fp16 needs loss scaling against gradient underflow.
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision)
    if amp_dtype is not None and device.type == "mps":
        raise UsageError(f"trainer.precision={t.precision} is supported on cuda and cpu, not mps; use fp32")
    scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")

    step = 0
    if resume:
        loaded = checkpoint.load_model(run_dir, device=device)
        if asdict(loaded.model.spec) != asdict(spec):
            raise UsageError(f"{run_dir}: the saved model differs from its config.yaml; start a new run")
        model.load_state_dict(loaded.model.state_dict())
        if dist.main:  # rank 0 may finish an interrupted checkpoint; the others read after it
            state = checkpoint.load_trainer_for(run_dir, loaded.step)
        if dist.world > 1:
            import torch.distributed as td

            td.barrier()
        if not dist.main:
            state = checkpoint.load_trainer_for(run_dir, loaded.step, promote=False)
        if state["world"] != dist.world:  # like trainer.batch_size: the global batch is part of the run
            how = (f"torchrun --nproc-per-node {state['world']} -m vaecli train --resume {run_dir}"
                   if state["world"] > 1 else f"vae train --resume {run_dir} (without torchrun)")
            raise UsageError(f"{run_dir} was trained by {state['world']} process(es) and this is {dist.world}: "
                             f"the global batch would change; resume it with: {how}")
        optimizer.load_state_dict(state["optimizer"])
        if scaler.is_enabled() and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        for group in optimizer.param_groups:  # a changed lr or eps applies from here on
            group["lr"], group["eps"] = t.lr, t.adam_eps
        set_rng_state(state["rng"], device)
        step = state["step"]
        if dist.main:  # lines logged after the checkpoint (a crash) would be logged again
            checkpoint.truncate_metrics(run_dir, step)
            for stale in run_dir.glob(".*.tmp"):  # half-written files of a killed process
                stale.unlink(missing_ok=True)
    if dist.main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise VaeError(f"cannot create run folder {run_dir}: {e.strerror or e}") from None
        checkpoint.write_text(run_dir / checkpoint.CONFIG_FILE, composed.to_yaml())

    n, batch = len(train_set), t.batch_size
    global_batch = batch * dist.world
    if dist.world > 1 and n < dist.world:
        raise UsageError(f"{n} training images cannot be shared by {dist.world} processes")
    steps_per_epoch = math.ceil(n / global_batch)
    total_steps = t.epochs * steps_per_epoch
    images = train_set.images.to(device)
    labels = train_set.labels.to(device) if train_set.labels is not None else None
    objective = objectives.build(cfg.objective, cfg.kl, cfg.beta, total_steps)
    # Mixture/Vamp priors and the hierarchical model have no closed-form KL: say so in the metrics.
    kl_exact = model.exact_kl if model.stochastic else True
    fixed_noise = torch.Generator(device=device).manual_seed(cfg.seed)
    if t.compile:
        _compile(model, device)
    loss_step = _LossStep(model, objective)
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        loss_step = DistributedDataParallel(loss_step, device_ids=[device.index] if device.type == "cuda" else None)

    def save(epoch: int) -> None:
        if dist.main:
            checkpoint.save_checkpoint(run_dir, model, cfg.dataset, cfg.seed, optimizer, rng_state(device), step,
                                       epoch, scaler=scaler.state_dict() if scaler.is_enabled() else None,
                                       world=dist.world)

    params = [p for p in model.parameters() if p.requires_grad]

    def finite(loss: torch.Tensor) -> bool:
        """The loss and every gradient are finite: one sum over the gradients (NaN and inf
        survive it) and one host read, ~1% of a step (bench/RESULTS.md). Under fp16 overflowing
        gradients are the loss scaler's business (it skips those steps itself)."""
        if scaler.is_enabled():
            return bool(torch.isfinite(loss))
        grads = [p.grad for p in params if p.grad is not None]
        total = torch.stack([g.sum() for g in grads]).sum() if grads else loss.new_zeros(())
        return bool(torch.isfinite(loss.detach().float() + total))

    def diverged() -> VaeError:
        likely = [f"a learning rate too high (trainer.lr={t.lr:g}; try {t.lr / 10:g})"]
        if cfg.likelihood.name == "gaussian_learned":
            likely.append("the learned sigma of likelihood=gaussian_learned collapsing (raise likelihood.sigma "
                          "or use likelihood=gaussian)")
        if t.precision == "fp16":
            likely.append("fp16 overflow (try trainer.precision=bf16 or fp32)")
        saved = checkpoint.saved_step(run_dir)
        keep = (f"the last good checkpoint (step {saved}) is in {run_dir}" if saved is not None
                else "no checkpoint was written yet")
        return VaeError(f"training diverged: {bad_run} steps in a row (to step {step}) had a non-finite loss or "
                        f"gradient and were skipped; likely causes: {'; '.join(likely)}; {keep}")

    def shard(order: torch.Tensor, i: int) -> torch.Tensor:
        """Rank r's images of step i: every world-th image of the global batch, the last global
        batch padded from the epoch's start so every rank gets as many steps (as
        DistributedSampler does)."""
        index = order[i * global_batch:(i + 1) * global_batch]
        if dist.world == 1:
            return index
        if len(index) % dist.world:
            index = torch.cat([index, order[:dist.world - len(index) % dist.world]])
        return index[dist.rank::dist.world]

    def all_mean(values: torch.Tensor) -> torch.Tensor:
        if dist.world > 1:
            import torch.distributed as td

            td.all_reduce(values)
            values = values / dist.world
        return values

    def stop_requested() -> bool:
        """A signal reached any rank (torchrun forwards it to all, not necessarily between the
        same two steps): all ranks stop after the same step."""
        if dist.world == 1:
            return bool(caught)
        import torch.distributed as td

        flag = torch.tensor([1.0 if caught else 0.0], device=device)
        td.all_reduce(flag)
        return flag.item() > 0

    def forked_rng():  # evaluation and sample grids must not move the training RNG
        return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])

    if not dist.main:
        reporter = Reporter()
    reporter.start(total_steps, step, run_dir)
    seen, train_seconds, last_test = 0, 0.0, None
    sums, count = None, 0
    bad_run, skipped = 0, 0  # non-finite steps: in a row, and in all
    try:
        with _signals_as_flag() as caught:
            while step < total_steps:
                epoch, offset = divmod(step, steps_per_epoch)
                order = _epoch_order(n, cfg.seed, epoch, device)
                if dist.world > 1:  # each rank its own noise, reproducible from (seed, epoch, rank)
                    torch.manual_seed((cfg.seed * 1_000_003 + epoch) * 4099 + dist.rank)
                if t.lr_schedule == "burda":
                    for group in optimizer.param_groups:
                        group["lr"] = burda_lr(t.lr, epoch)
                model.train()
                tick = time.perf_counter()
                for i in range(offset, steps_per_epoch):
                    index = shard(order, i)
                    x = train_set.to_float(images[index])
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                        loss, metrics = loss_step(x, None if labels is None else labels[index], step)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    step += 1
                    seen += x.shape[0]
                    if finite(loss):
                        scaler.step(optimizer)
                        scaler.update()
                        bad_run = 0
                        values = torch.stack(list(metrics.values()))
                        sums = values if sums is None else sums + values  # stays on device: no sync
                        count += 1
                    else:  # skip: the weights and Adam's state never see a NaN
                        bad_run += 1
                        skipped += 1
                        if bad_run >= t.max_bad_steps:
                            raise diverged()
                    reporter.advance(step)
                    if (step % t.log_every == 0 or i == steps_per_epoch - 1) and count:
                        means = dict(zip(metrics, all_mean(sums / count).tolist()))  # the one host read
                        sums, count = None, 0
                        if skipped:
                            means["skipped_steps"] = skipped
                        train_seconds += time.perf_counter() - tick
                        tick = time.perf_counter()
                        means["img_per_s"] = seen * dist.world / train_seconds if train_seconds > 0 else 0.0
                        if dist.main:
                            checkpoint.append_metrics(run_dir, {"step": step, "epoch": epoch + 1, "split": "train", **means})
                        reporter.metrics(step, epoch + 1, means)
                    if stop_requested():
                        save(epoch)
                        # under torchrun a rank may stop because another rank was signalled
                        raise Interrupted(step, run_dir, caught.get("signum", signal.SIGTERM), announce=dist.main,
                                          world=dist.world)
                    if t.checkpoint_every_steps and step % t.checkpoint_every_steps == 0 and i < steps_per_epoch - 1:
                        save(epoch)  # mid-epoch: resume continues from this step, bit for bit
                # end of an epoch
                train_seconds += time.perf_counter() - tick
                epoch += 1
                last = step == total_steps
                if not dist.main:  # rank 0 evaluates, draws samples and saves
                    continue
                with forked_rng():
                    last_test = evaluate.elbo_dataset(model, test_set, t.eval_batch_size)
                    checkpoint.append_metrics(run_dir, {"step": step, "epoch": epoch, "split": "test", **last_test,
                                                        "kl_exact": kl_exact})
                    reporter.note(f"epoch {epoch}/{t.epochs}: test ELBO {last_test['elbo']:.2f}, "
                                  f"KL {last_test['kl']:.2f}, recon {last_test['recon']:.2f} nats")
                    if last or (t.sample_every and epoch % t.sample_every == 0):
                        model.eval()
                        grid_labels = sample_labels(model, SAMPLE_GRID, device)
                        grid = model.sample(len(grid_labels) if grid_labels is not None else SAMPLE_GRID,
                                            generator=fixed_noise.manual_seed(cfg.seed), y=grid_labels)
                        rows = model.spec.num_classes if grid_labels is not None else 8
                        save_grid(grid, run_dir / "samples" / f"epoch_{epoch:03d}.png", nrow=len(grid) // rows)
                if last or (t.checkpoint_every and epoch % t.checkpoint_every == 0):
                    save(epoch)
    finally:
        loss_step = None  # DDP's reducer holds the process group: let it go before teardown
    reporter.stop()
    if not dist.main:
        return {"run_dir": str(run_dir), "step": step, "rank": dist.rank}
    if last_test is None:  # nothing left to train (resumed a finished run): still report
        with forked_rng():
            last_test = evaluate.elbo_dataset(model, test_set, t.eval_batch_size)
        if not (run_dir / checkpoint.MODEL_FILE).exists():
            save(step // steps_per_epoch)
    return {
        "run_dir": str(run_dir),
        "step": step,
        "epochs": t.epochs,
        "test_elbo": last_test["elbo"],
        "test_kl": last_test["kl"],
        "kl_exact": kl_exact,
        "active_units": last_test.get("active_units"),
        "latent_dim": spec.latent_dim,
        "kl_per_dim": last_test.get("kl_per_dim"),
        "test_recon": last_test["recon"],
        "train_seconds": train_seconds,
        "img_per_s": seen * dist.world / train_seconds if train_seconds > 0 else None,
        "processes": dist.world,
        "skipped_steps": skipped,
        "precision": t.precision,
        "device": str(device),
        "dataset": cfg.dataset.name,
        "model": spec.arch,
        "checkpoint": str(run_dir / checkpoint.MODEL_FILE),
        "samples": str(run_dir / "samples"),
    }
