"""fit(): the training loop. It knows no particular model: the objective returns a loss and a
dict of metrics, the model comes from models.build, and everything is saved as safetensors.

Determinism: weights come from `seed`; the data order of epoch e from (seed, e); reparameterization
noise and dynamic binarization from the global RNG, whose state is checkpointed. So a resumed
run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict
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

    def __init__(self, step: int, run_dir: Path, signum: int):
        super().__init__(f"interrupted at step {step}; resume with: vae train --resume {run_dir}")
        self.step, self.run_dir, self.signum = step, run_dir, signum


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


def fit(composed: Composed, run_dir: Path, resume: bool = False, reporter: Reporter | None = None) -> dict:
    """Train (or continue training) the model of `composed` into `run_dir`; returns a summary."""
    reporter = reporter or Reporter()
    cfg, t = composed.cfg, composed.cfg.trainer
    run_dir = Path(run_dir)
    device = pick_device(t.device)
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
    # fused: one kernel for the whole update instead of ~10 per parameter tensor; the unfused
    # CPU Adam was a third of a training step (bench/RESULTS.md).
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr, eps=t.adam_eps, fused=device.type in ("cpu", "cuda"))

    step = 0
    if resume:
        loaded = checkpoint.load_model(run_dir, device=device)
        if asdict(loaded.model.spec) != asdict(spec):
            raise UsageError(f"{run_dir}: the saved model differs from its config.yaml; start a new run")
        model.load_state_dict(loaded.model.state_dict())
        state = checkpoint.load_trainer(run_dir / checkpoint.TRAINER_FILE)
        if state["step"] != loaded.step:
            raise VaeError(f"{run_dir}: model is at step {loaded.step} but trainer state at step "
                           f"{state['step']}; the run folder is inconsistent")
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # a changed lr or eps applies from here on
            group["lr"], group["eps"] = t.lr, t.adam_eps
        set_rng_state(state["rng"], device)
        step = state["step"]
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VaeError(f"cannot create run folder {run_dir}: {e.strerror or e}") from None
    checkpoint.write_text(run_dir / checkpoint.CONFIG_FILE, composed.to_yaml())

    n, batch = len(train_set), t.batch_size
    steps_per_epoch = math.ceil(n / batch)
    total_steps = t.epochs * steps_per_epoch
    images = train_set.images.to(device)
    labels = train_set.labels.to(device) if train_set.labels is not None else None
    objective = objectives.build(cfg.objective, cfg.kl, cfg.beta, total_steps)
    # Mixture/Vamp priors and the hierarchical model have no closed-form KL: say so in the metrics.
    kl_exact = model.exact_kl if model.stochastic else True
    fixed_noise = torch.Generator(device=device).manual_seed(cfg.seed)

    def save(epoch: int) -> None:
        # Trainer state first: the model file's step is what marks a checkpoint complete.
        checkpoint.save_trainer(run_dir / checkpoint.TRAINER_FILE, optimizer, rng_state(device), step, epoch)
        checkpoint.save_model(run_dir / checkpoint.MODEL_FILE, model, cfg.dataset, cfg.seed, step, epoch)

    def forked_rng():  # evaluation and sample grids must not move the training RNG
        return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])

    reporter.start(total_steps, step, run_dir)
    seen, train_seconds, last_test = 0, 0.0, None
    sums, count = None, 0
    with _signals_as_flag() as caught:
        while step < total_steps:
            epoch, offset = divmod(step, steps_per_epoch)
            order = _epoch_order(n, cfg.seed, epoch, device)
            if t.lr_schedule == "burda":
                for group in optimizer.param_groups:
                    group["lr"] = burda_lr(t.lr, epoch)
            model.train()
            tick = time.perf_counter()
            for i in range(offset, steps_per_epoch):
                index = order[i * batch:(i + 1) * batch]
                x = train_set.to_float(images[index])
                loss, metrics = objective(model, x, None if labels is None else labels[index], step)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                seen += x.shape[0]
                values = torch.stack(list(metrics.values()))
                sums = values if sums is None else sums + values  # stays on device: no sync
                count += 1
                reporter.advance(step)
                if step % t.log_every == 0 or i == steps_per_epoch - 1:
                    means = dict(zip(metrics, (sums / count).tolist()))  # the one host sync
                    sums, count = None, 0
                    train_seconds += time.perf_counter() - tick
                    tick = time.perf_counter()
                    means["img_per_s"] = seen / train_seconds if train_seconds > 0 else 0.0
                    checkpoint.append_metrics(run_dir, {"step": step, "epoch": epoch + 1, "split": "train", **means})
                    reporter.metrics(step, epoch + 1, means)
                if caught:
                    save(epoch)
                    raise Interrupted(step, run_dir, caught["signum"])
            # end of an epoch
            train_seconds += time.perf_counter() - tick
            epoch += 1
            last = step == total_steps
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
    reporter.stop()
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
        "img_per_s": seen / train_seconds if train_seconds > 0 else None,
        "device": str(device),
        "dataset": cfg.dataset.name,
        "model": spec.arch,
        "checkpoint": str(run_dir / checkpoint.MODEL_FILE),
        "samples": str(run_dir / "samples"),
    }
