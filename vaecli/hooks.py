"""The trainer's hooks: the one base class of everything that attaches to the training loop (the
trainer features of training/callbacks.py, the trackers, an objective's critic). Torch-free, so an
objective (objectives.py) can bring a callback without importing the trainer's package."""

from __future__ import annotations


class Callback:
    """Hooks into the loop; override what you need. `trainer.state` holds the step and counters,
    `trainer.optimizer` the learning rate. Called on every rank (check `trainer.dist.main` before
    writing or printing)."""

    name = ""  # the prefix of its tensors in the checkpoint (stateful callbacks only)

    def on_train_start(self, trainer) -> None: ...
    def on_epoch_start(self, trainer, epoch: int) -> None: ...
    def on_step_end(self, trainer) -> None: ...
    def on_log(self, trainer, epoch: int, values: dict[str, float]) -> None: ...  # may add to the logged line
    def on_eval(self, trainer, epoch: int, test: dict) -> None: ...
    def on_samples(self, trainer, epoch: int, grid) -> None: ...  # the sample grid: a tensor (C, H, W) in [0, 1]
    def on_train_end(self, trainer) -> None: ...
