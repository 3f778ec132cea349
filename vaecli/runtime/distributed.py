"""The torchrun session: which process this is, the collective operations the trainer needs,
and how a rank joins, leaves and exits. A single process (no torchrun) is `Dist()`, on which
every operation is a no-op, so the trainer never branches on the world size itself.

Design: each rank takes every world-th image of each global batch, DDP averages gradients,
metrics are averaged over ranks, and only rank 0 evaluates, writes files and prints.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import Interrupted, UsageError

if TYPE_CHECKING:  # torch is imported where it is used: `vae --help` and error exits stay light
    import torch


def torchrun_world() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def quiet_rank() -> bool:
    """A torchrun rank other than 0: it fails with the same exit code as rank 0 but does not
    repeat its error line."""
    return torchrun_world() > 1 and int(os.environ.get("RANK", "0") or 0) != 0


def resume_command(run_dir: Path, world: int, stage: str = "model") -> str:
    """The command that continues `run_dir` (its model, or a VQ-VAE's prior) with the number of
    processes it was trained with."""
    args = f"train --resume {run_dir}" if stage == "model" else f"train-prior --ckpt {run_dir} --resume"
    return f"torchrun --nproc-per-node {world} -m vaecli {args}" if world > 1 else f"vae {args}"


@dataclass
class Dist:
    """This process's place in a torchrun job; the default is a single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, order: torch.Tensor, i: int, global_batch: int) -> torch.Tensor:
        """This rank's images of step i: every world-th image of the global batch, the last
        global batch padded from the epoch's start so every rank gets as many steps (as
        DistributedSampler does)."""
        index = order[i * global_batch:(i + 1) * global_batch]
        if self.world == 1:
            return index
        if len(index) % self.world:
            import torch

            index = torch.cat([index, order[:self.world - len(index) % self.world]])
        return index[self.rank::self.world]

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The average over ranks of a tensor every rank holds."""
        if self.world == 1:
            return values
        import torch.distributed as td

        td.all_reduce(values)
        return values / self.world

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when it is true on any (a signal reaches ranks between different
        steps; all must stop after the same one)."""
        if self.world == 1:
            return flag
        import torch
        import torch.distributed as td

        value = torch.tensor([1.0 if flag else 0.0], device=device)
        td.all_reduce(value)
        return value.item() > 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as td

            td.barrier()

    def broadcast(self, value):
        """Rank 0's `value` on every rank (small Python objects: a run folder name)."""
        if self.world == 1:
            return value
        import torch.distributed as td

        box = [value]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def seed_epoch(self, seed: int, epoch: int) -> None:
        """Each rank its own noise, reproducible from (seed, epoch, rank). A single process keeps
        one RNG stream, checkpointed, so its resume is bit-exact from any step."""
        if self.world > 1:
            import torch

            torch.manual_seed((seed * 1_000_003 + epoch) * 4099 + self.rank)

    def wrap(self, module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """DDP around `module` under torchrun; the module itself otherwise."""
        if self.world == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def join(device_name: str) -> Dist:
    """Join the process group described by torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK):
    nccl on CUDA, gloo on CPU. Without torchrun (or with one process) it does nothing."""
    world = torchrun_world()
    if world <= 1:
        return Dist()
    import torch
    import torch.distributed as td

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if device_name == "mps":
        raise UsageError("torchrun with trainer.device=mps is not supported; use cuda or cpu")
    if cuda:
        torch.cuda.set_device(local_rank)
    if not td.is_initialized():
        td.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank, world, local_rank)


def leave(dist: Dist, together: bool) -> None:
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


@contextmanager
def session(device_name: str):
    """`with session(device) as dist:` joins torchrun's group (if any) and leaves it on the way
    out: together after a finished or interrupted run (every rank stops after the same step),
    at once after any other failure."""
    dist = join(device_name)
    together = False
    try:
        yield dist
        together = True
    except Interrupted:
        together = True
        raise
    finally:
        leave(dist, together)


def exit_process(code: int):
    """sys.exit, except on a torchrun rank: it ends without interpreter finalization, because
    gloo's worker threads can take the GIL while Python shuts down and abort the process
    ("terminate called without an active exception", SIGABRT; seen in CI after a finished run),
    and torchrun then reports a failed job. Every file is already written, fsynced and renamed."""
    if torchrun_world() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
