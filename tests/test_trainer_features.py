"""The trainer features that attach as callbacks (vaecli/callbacks.py): the learning-rate
schedule, EMA weights, gradient clipping and the skipping of extreme updates, each checked
against its formula on a real training run, and a resume with all of them on that matches an
uninterrupted run bit for bit."""

import math
import os
import signal
from types import SimpleNamespace

import pytest
import torch

from vaecli.runtime import checkpoint
from vaecli.training.callbacks import Callback, GradGuard, burda_lr, scheduled_lr
from vaecli.config import load_config, resume_config
from vaecli.errors import Interrupted, UsageError
from vaecli.training.trainer import build, fit

SMALL = ["dataset=shapes", "dataset.scales=2", "dataset.rotations=2", "dataset.positions=6",
         "model.hidden=[32]", "model.latent_dim=4", "trainer.batch_size=32", "trainer.log_every=3",
         "trainer.sample_every=0"]


class Recorder(Callback):
    """Keeps the training weights and the learning rate of every step."""

    def __init__(self):
        self.weights, self.lrs, self.applied = [], [], []

    def on_train_start(self, trainer):
        self.weights.append([p.detach().clone() for p in trainer.model.parameters()])
        self.lrs.append(trainer.optimizer.param_groups[0]["lr"])

    def on_step_end(self, trainer):
        self.weights.append([p.detach().clone() for p in trainer.model.parameters()])
        self.applied.append(trainer.state.applied)

    def on_gradients(self, trainer):  # the lr in force for this step's update
        self.lrs.append(trainer.optimizer.param_groups[0]["lr"])
        return True


def run(run_dir, *overrides, callbacks=()):
    composed = load_config(SMALL + list(overrides))
    trainer = build(composed, run_dir, callbacks=callbacks)
    from vaecli.runtime import runs
    runs.create(trainer.run_dir, composed.to_yaml())
    return trainer, trainer.fit()


def test_schedule_values():
    # warm-up: linear from base/warmup to base, then the schedule
    assert scheduled_lr("constant", 1e-3, 0, 100, warmup_steps=10) == pytest.approx(1e-4)
    assert scheduled_lr("constant", 1e-3, 9, 100, warmup_steps=10) == pytest.approx(1e-3)
    assert scheduled_lr("constant", 1e-3, 50, 100, warmup_steps=10) == 1e-3
    # cosine: base right after the warm-up, the midpoint halfway, lr_min at the end
    assert scheduled_lr("cosine", 1e-3, 10, 110, warmup_steps=10, lr_min=1e-5) == pytest.approx(1e-3)
    assert scheduled_lr("cosine", 1e-3, 60, 110, warmup_steps=10, lr_min=1e-5) == pytest.approx((1e-3 + 1e-5) / 2)
    assert scheduled_lr("cosine", 1e-3, 110, 110, warmup_steps=10, lr_min=1e-5) == pytest.approx(1e-5)
    assert scheduled_lr("cosine", 1.0, 25, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    # burda: by epoch
    assert scheduled_lr("burda", 1e-3, 7, 100, steps_per_epoch=2) == burda_lr(1e-3, 3) == pytest.approx(1e-3 * 10 ** (-1 / 7))


def test_the_trainer_follows_the_schedule_step_by_step(tmp_path):
    recorder = Recorder()
    trainer, _ = run(tmp_path / "r", "trainer.epochs=2", "trainer.lr_schedule=cosine", "trainer.warmup_steps=3",
                     "trainer.lr_min=1e-5", callbacks=[recorder])
    steps = trainer.total_steps
    expected = [scheduled_lr("cosine", 1e-3, s, steps, 3, 1e-5) for s in range(steps)]
    assert recorder.lrs[1:] == pytest.approx(expected)  # [0]: on_train_start, before step 0's update
    assert recorder.lrs[1] == pytest.approx(1e-3 / 3) and expected[-1] < 2e-5
    import json
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    logged = [(x["step"], x["lr"]) for x in lines if x["split"] == "train"]
    assert logged and all(lr == pytest.approx(scheduled_lr("cosine", 1e-3, s, steps, 3, 1e-5)) for s, lr in logged)


def test_ema_is_the_running_average_of_the_applied_updates(tmp_path):
    recorder = Recorder()
    decay = 0.5
    trainer, summary = run(tmp_path / "r", "trainer.epochs=1", f"trainer.ema={decay}", callbacks=[recorder])
    ema = recorder.weights[0]
    for n, weights in enumerate(recorder.weights[1:]):
        d = min(decay, (1 + n) / (10 + n))  # the warm-up of the decay: 0.1, 0.18, 0.25, ... then 0.5
        ema = [d * e + (1 - d) * w for e, w in zip(ema, weights)]
    saved = checkpoint.load_model(tmp_path / "r").model
    for e, p in zip(ema, saved.parameters()):
        torch.testing.assert_close(p, e, rtol=1e-5, atol=1e-6)
    # the training weights are in the trainer file and differ from the average
    training = checkpoint.load_trainer(tmp_path / "r" / checkpoint.TRAINER_FILE)["callbacks"]
    for i, w in enumerate(recorder.weights[-1]):
        assert torch.equal(training[f"ema.weights.{i}"], w)
    assert not all(torch.equal(e, w) for e, w in zip(ema, recorder.weights[-1]))
    # the test figures are those of the averaged weights (the KL is closed form: deterministic)
    from vaecli.evaluation import evaluate
    assert summary.test_kl == pytest.approx(evaluate.elbo_dataset(saved, trainer.test_set)["kl"], rel=1e-5)
    with torch.no_grad():
        for p, w in zip(saved.parameters(), recorder.weights[-1]):
            p.copy_(w)
    assert summary.test_kl != pytest.approx(evaluate.elbo_dataset(saved, trainer.test_set)["kl"], rel=1e-3)


def test_grad_guard_clips_to_the_norm_and_refuses_extreme_updates():
    layer = torch.nn.Linear(3, 2)
    for p in layer.parameters():
        p.grad = torch.full_like(p, 2.0)  # 8 entries: norm 2 * sqrt(8)
    trainer = SimpleNamespace(model=layer, extra_metrics={})
    assert GradGuard(clip=1.0).on_gradients(trainer) is True
    assert trainer.extra_metrics["grad_norm"].item() == pytest.approx(2 * math.sqrt(8))
    assert torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in layer.parameters()])).item() == pytest.approx(1.0)
    for p in layer.parameters():
        p.grad = torch.full_like(p, 2.0)
    # skipping is decided on the device: a 0-dim bool tensor, no host read in the hook
    refused, accepted = GradGuard(skip=5.0).on_gradients(trainer), GradGuard(skip=6.0).on_gradients(trainer)
    assert torch.is_tensor(refused) and not bool(refused)  # 5.66 > 5
    assert bool(accepted)


def test_skipped_updates_are_counted_and_never_reach_the_weights(tmp_path):
    recorder = Recorder()
    trainer, summary = run(tmp_path / "r", "trainer.epochs=1", "trainer.skip_threshold=1e-9",
                           "trainer.max_bad_steps=1000", callbacks=[recorder])
    assert summary.skipped_steps == trainer.total_steps and not any(recorder.applied)
    for before, after in zip(recorder.weights[0], recorder.weights[-1]):
        assert torch.equal(before, after)


def test_skipping_every_update_stops_as_a_divergence(tmp_path):
    from vaecli.errors import VaeError
    with pytest.raises(VaeError, match="training diverged.*gradient norm above trainer.skip_threshold=1e-09"):
        run(tmp_path / "r", "trainer.epochs=1", "trainer.skip_threshold=1e-9", "trainer.max_bad_steps=3")


def test_clipped_training_logs_the_gradient_norm(tmp_path):
    run(tmp_path / "r", "trainer.epochs=1", "trainer.grad_clip=1.0")
    import json
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    norms = [x["grad_norm"] for x in lines if x["split"] == "train"]
    assert norms and all(n > 0 for n in norms)


ALL_ON = ["trainer.ema=0.9", "trainer.lr_schedule=cosine", "trainer.warmup_steps=4", "trainer.grad_clip=5",
          "trainer.skip_threshold=1000"]


class InterruptAt(Callback):
    """Sends this process SIGINT after step `step`, as Ctrl-C would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer):
        if trainer.state.step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("model", [[], ["model=ladder", "model.groups=2", "model.hidden=[32]"]], ids=["mlp", "ladder"])
def test_resume_with_every_feature_on_matches_an_uninterrupted_run(tmp_path, model):
    """Interrupted mid-epoch (the cosine schedule depends on the run's length, so the run is cut,
    not shortened), then resumed: the same EMA, training weights, optimizer and RNG state."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    config = SMALL + model + ALL_ON + ["trainer.epochs=2"]
    fit(load_config(config), straight)
    with pytest.raises(Interrupted):
        fit(load_config(config), split, callbacks=[InterruptAt(5)])
    assert checkpoint.saved_step(split) == 5
    fit(resume_config(split, []), split, resume=True)
    for name in (checkpoint.MODEL_FILE, checkpoint.TRAINER_FILE):
        a, _ = checkpoint.read_tensors(straight / name)
        b, _ = checkpoint.read_tensors(split / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_weight_decay_is_decoupled_and_applies_from_a_resume(tmp_path):
    # the same seed, data and first gradient: with AdamW's decoupled decay the first update differs
    # from plain Adam's by exactly -lr * weight_decay * w0, on every parameter
    plain, decayed = Recorder(), Recorder()
    run(tmp_path / "a", "trainer.epochs=1", callbacks=[plain])
    run(tmp_path / "b", "trainer.epochs=1", "trainer.weight_decay=0.1", callbacks=[decayed])
    for w0, a, b in zip(plain.weights[0], plain.weights[1], decayed.weights[1]):
        torch.testing.assert_close(b - a, -1e-3 * 0.1 * w0, rtol=1e-3, atol=2e-8)  # rounding of w ~ 1e-9
    assert not all(torch.equal(a, b) for a, b in zip(plain.weights[-1], decayed.weights[-1]))
    # a resume takes the weight decay given to it (like lr and adam_eps)
    trainer = build(resume_config(tmp_path / "a", ["trainer.epochs=2", "trainer.weight_decay=0.3"]), tmp_path / "a")
    trainer.resume()
    assert [g["weight_decay"] for g in trainer.optimizer.param_groups] == [0.3]
    assert all(g["decoupled_weight_decay"] for g in trainer.optimizer.param_groups)


def test_ema_cannot_be_switched_on_or_off_by_a_resume(tmp_path):
    fit(load_config(SMALL + ["trainer.epochs=1", "trainer.ema=0.9"]), tmp_path / "r")
    with pytest.raises(UsageError, match="trainer.ema on: it cannot be turned off"):
        fit(resume_config(tmp_path / "r", ["trainer.epochs=2", "trainer.ema=0"]), tmp_path / "r", resume=True)
    fit(resume_config(tmp_path / "r", ["trainer.epochs=2", "trainer.ema=0.99"]), tmp_path / "r", resume=True)


@pytest.mark.parametrize("override, message", [
    ("trainer.ema=1", "trainer.ema must be in [0, 1)"),
    ("trainer.lr_schedule=linear", "trainer.lr_schedule must be one of constant, cosine, burda"),
    ("trainer.warmup_steps=-1", "trainer.warmup_steps must be >= 0"),
    ("trainer.lr_min=1", "trainer.lr_min must be in [0, trainer.lr]"),
    ("trainer.grad_clip=-1", "trainer.grad_clip must be >= 0"),
    ("trainer.weight_decay=-0.1", "trainer.weight_decay must be in [0, 1)"),
    ("trainer.skip_threshold=-2", "trainer.skip_threshold must be >= 0"),
])
def test_bad_feature_settings_are_refused(override, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace(")", r"\)").replace("(", r"\(")):
        load_config([override])
