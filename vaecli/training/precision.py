"""trainer.precision=auto: bf16 autocast for training only where it is both harmless and faster.

bf16 pays on convolutions where oneDNN has bf16 kernels (AMX, AVX512-BF16), and costs on small
layers, where the casts outweigh the faster products (bench/images.py, docs/results/speed.md: the
resnet 1.8x faster in bf16 on an AVX512-BF16 CPU, the 28 px conv model and the MLP ladders slower).
So `auto` does not decide by the hardware alone. Where there are bf16 units it runs, on the first
training batch and the same random numbers, the loss in fp32 and in bf16 (unchanged within
LOSS_TOLERANCE of the fp32 loss) and then times forward + backward in each, alternating
(bf16 chosen at >= SPEEDUP x the fp32 step's speed). The check leaves no trace: it runs under a
forked RNG and restores the weights' buffers (BatchNorm statistics, codebook EMAs) and drops the
gradients. Under torchrun every rank must agree, or all run fp32."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch

from ..runtime import device as devices

LOSS_TOLERANCE = 0.01  # |bf16 loss - fp32 loss| <= 1% of |fp32 loss| on the same batch and noise
SPEEDUP = 1.15  # bf16's forward + backward at least this much faster than fp32's
WARMUP = 2  # untimed steps of each precision first (oneDNN primitives, the allocator)
REPEATS = 3  # timed steps of each precision at least, alternating ...
BUDGET = 1.0  # ... and more until each has this many seconds (small models: many short steps)


@dataclass
class TrainingPrecision:
    precision: str  # "fp32" | "bf16"
    reason: str
    loss_fp32: float | None = None
    loss_bf16: float | None = None
    step_seconds_fp32: float | None = None  # median forward + backward on the first batch
    step_seconds_bf16: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None


def choose(loss_fn, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | None,
           device: torch.device) -> TrainingPrecision:
    """auto's verdict for `loss_fn(x, y) -> (loss, metrics)` (the trainer's step, undecorated)."""
    units = devices.bf16_units(device)
    if units is None:
        return TrainingPrecision("fp32", "no bf16 matrix units on this device")
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.train()
    try:
        with devices.forked_rng(device):
            rng = devices.rng_state(device)

            def step(dtype, backward=True) -> tuple[float, float]:
                devices.set_rng_state(rng, device)  # the same noise (z, dropout) for both
                start = time.perf_counter()
                with devices.autocast(device, dtype):
                    loss, _ = loss_fn(x, y)
                if backward:
                    loss.backward()
                    model.zero_grad(set_to_none=True)
                value = float(loss.detach())
                if device.type == "cuda":
                    torch.cuda.synchronize(device)  # the backward's kernels too
                return value, time.perf_counter() - start

            with torch.no_grad():
                reference, _ = step(None, backward=False)
                low, _ = step(torch.bfloat16, backward=False)
            for _ in range(WARMUP):
                step(None), step(torch.bfloat16)
            times: dict[str, list[float]] = {"fp32": [], "bf16": []}
            while len(times["fp32"]) < REPEATS or min(sum(t) for t in times.values()) < BUDGET:
                for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
                    times[name].append(step(dtype)[1])
    finally:
        model.load_state_dict(saved)
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    fp32_s, bf16_s = statistics.median(times["fp32"]), statistics.median(times["bf16"])
    figures = dict(loss_fp32=reference, loss_bf16=low, step_seconds_fp32=fp32_s, step_seconds_bf16=bf16_s)
    moved = abs(low - reference) / max(abs(reference), 1e-12)
    speed = fp32_s / bf16_s
    said = (f"on the first batch the loss moved {100 * moved:.2f}% in bf16 and a step ran {speed:.2f}x "
            f"fp32's speed")
    if not moved <= LOSS_TOLERANCE:
        return TrainingPrecision("fp32", f"bf16 would change the loss: {said} (limit {100 * LOSS_TOLERANCE:g}%)",
                                 **figures)
    if speed < SPEEDUP:
        return TrainingPrecision("fp32", f"bf16 is not faster here: {said} (needs {SPEEDUP:g}x)", **figures)
    return TrainingPrecision("bf16", f"{units}: {said}", **figures)
