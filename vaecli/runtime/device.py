"""Where and how tensors run: the device, the RNG state a checkpoint keeps, mixed precision,
torch.compile and the memory format. Nothing here knows a particular model."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil

import torch

from . import memory, sharing
from ..config import check_device
from ..errors import UsageError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def pick(name: str) -> torch.device:
    """auto -> cuda, then mps, then cpu; an explicit device that is missing is a UsageError."""
    check_device(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("trainer.device=cuda but no CUDA device is available; use trainer.device=auto")
    if name == "mps" and not _mps_available():
        raise UsageError("trainer.device=mps but MPS is not available; use trainer.device=auto")
    return torch.device(name)


def cores() -> int:
    """The CPU cores this process may run on (taskset / cgroup cpusets included)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def set_threads(requested: int = 0) -> int:
    """torch's intra-op threads: `requested`, or for 0 (auto) this process's fair share of its
    cores among the vae processes running on them (sharing.py: one per core when alone, and
    re-balanced as others start and end) unless the environment already says (OMP_NUM_THREADS, as
    torchrun sets, or MKL_NUM_THREADS). Every such process is counted by the others."""
    memory.tune()  # every command that computes passes here: glibc's malloc set for step loops
    fixed = requested > 0 or bool(os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS"))
    if requested > 0:
        torch.set_num_threads(requested)
    sharing.share().join(adjust=not fixed)
    return torch.get_num_threads()


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The global RNG states a checkpoint keeps (CPU, and every CUDA device when on CUDA)."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    cuda = [state[k] for k in sorted(state) if k.startswith("cuda")]
    if device.type == "cuda" and cuda:
        torch.cuda.set_rng_state_all(cuda)


def forked_rng(device: torch.device):
    """A block whose random draws do not move the global RNG (evaluation, sample grids)."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of trainer.precision (None for fp32). The networks run in it; the
    distributions (log-likelihood, KL) stay fp32 (models cast). auto starts as fp32: the trainer
    decides on bf16 with a check of its own (training/precision.py). bf16 where the device has no
    bf16 units (a CPU without AMX or AVX512-BF16, a GPU before Ampere) is refused: it would run
    slower than fp32, silently."""
    if precision == "auto":
        return None
    dtype = AMP_DTYPES.get(precision)
    if dtype is not None and device.type == "mps":
        raise UsageError(f"trainer.precision={precision} is supported on cuda and cpu, not mps; use fp32")
    if dtype is torch.bfloat16 and bf16_units(device) is None:
        where = ("this CPU has no bf16 matrix units (AMX or AVX512-BF16), so bf16 would run slower than fp32"
                 if device.type == "cpu" else "this GPU has no native bf16 (Ampere or later has)")
        raise UsageError(f"trainer.precision=bf16: {where}; use trainer.precision=auto (bf16 only where it "
                         "pays) or fp32")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def bf16_units(device: torch.device) -> str | None:
    """The hardware that makes bf16 matrix products fast here, by name, or None: on CPU Intel's
    AMX tiles or AVX-512 BF16 (where torch's oneDNN GEMMs run bf16 at several times the fp32
    rate), on CUDA a GPU with native bf16 (Ampere and later)."""
    if device.type == "cuda":
        return "CUDA bf16" if torch.cuda.is_bf16_supported() else None
    if device.type != "cpu":
        return None
    checks = (("AMX-BF16", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
    for name, check in checks:
        if getattr(torch.cpu, check, lambda: False)():
            return name
    return None


def use_channels_last(setting: str, model: torch.nn.Module, device: torch.device) -> bool:
    """trainer.channels_last for this model: only convolutional networks can use NHWC, and
    `auto` turns it on for CUDA alone (cuDNN's tensor-core kernels; no gain measured on CPU)."""
    setting = str(setting).lower()
    if not getattr(model, "convolutional", False):
        return False
    return device.type == "cuda" if setting == "auto" else setting == "true"


def for_training(name: str, threads: int, compile: bool, local_rank: int, world: int) -> torch.device:
    """What a trainer's build does first: CPU threads, the device (a torchrun rank's own GPU), and,
    for trainer.compile on CPU, which generates C++, a compiler on PATH: without one a UsageError
    before any run folder exists (rather than torch's failure at the first step)."""
    set_threads(threads)
    device = pick(name)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", local_rank)
    if compile and device.type == "cpu" and not any(
            shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++", "clang++")):
        raise UsageError("trainer.compile=true on CPU needs a C++ compiler (g++ or clang++) on PATH; "
                         "install one or add trainer.compile=false")
    return device


def compile_methods(model: torch.nn.Module, names=("terms", "log_weights")) -> None:
    """torch.compile the methods objectives call (for_training checked the compiler). They become
    instance attributes, so the module, its state_dict and therefore the checkpoint stay those of
    the plain model. dynamic=False: one specialised graph per batch shape (train, last batch, eval)
    ran 1.2x faster than eager on CPU, where dynamic-shape graphs were no faster than eager."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "no CUDA runtime" noise
    for name in names:
        setattr(model, name, torch.compile(getattr(model, name), dynamic=False))
