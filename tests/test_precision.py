"""bf16 evaluation (eval-iwae, score): chosen only where the hardware has bf16 matrix units and a
check on the first images shows the bound unchanged; the check itself moves no random draw. bf16
training: refused without bf16 units; trainer.precision=auto chooses it only where a check on the
first batch shows the loss unchanged and the step faster, and that check leaves no trace."""

from __future__ import annotations

import math

import pytest
import torch

from vaecli.runtime import device as devices
from vaecli.evaluation import evaluate
from vaecli import objectives
from vaecli.data import ImageSet
from vaecli.models import build, from_flat


def tiny():
    torch.manual_seed(0)
    model = build(from_flat("mlp", (1, 8, 8), latent_dim=4, hidden=[32], levels=2)).eval()
    g = torch.Generator().manual_seed(1)
    data = ImageSet((torch.rand(40, 1, 8, 8, generator=g) > 0.5).to(torch.uint8) * 255, levels=2)
    return model, data


def test_without_bf16_units_auto_stays_fp32(monkeypatch):
    model, data = tiny()
    monkeypatch.setattr(devices, "bf16_units", lambda device: None)
    check = evaluate.choose_precision(model, data, 20, requested="auto")
    assert check.precision == "fp32" and "no bf16 matrix units" in check.reason and check.images == 0
    assert evaluate.choose_precision(model, data, 20, requested="fp32").precision == "fp32"


def test_the_check_compares_bf16_with_fp32_on_the_same_samples(monkeypatch):
    model, data = tiny()
    monkeypatch.setattr(devices, "bf16_units", lambda device: "AMX-BF16")
    check = evaluate.choose_precision(model, data, 50, batch_size=16, requested="auto")
    assert check.images == 16 and check.k == 50 and check.units == "AMX-BF16"
    assert abs(check.mean_difference) < 0.5  # the same importance samples: only rounding differs
    passed = abs(check.mean_difference) <= evaluate.PRECISION_TOLERANCE and check.max_over_se <= 1
    assert check.precision == ("bf16" if passed else "fp32")
    # a check that cannot pass: auto falls back to fp32, an explicit bf16 is kept and says so
    monkeypatch.setattr(evaluate, "PRECISION_TOLERANCE", -1.0)
    refused = evaluate.choose_precision(model, data, 50, batch_size=16, requested="auto")
    assert refused.precision == "fp32" and refused.reason.startswith("bf16 would change the bound")
    forced = evaluate.choose_precision(model, data, 50, batch_size=16, requested="bf16")
    assert forced.precision == "bf16" and forced.reason.startswith("asked for, though")


def test_the_check_moves_no_random_draw_of_the_evaluation(monkeypatch):
    model, data = tiny()
    monkeypatch.setattr(devices, "bf16_units", lambda device: "AMX-BF16")
    monkeypatch.setattr(evaluate, "PRECISION_TOLERANCE", -1.0)  # the verdict is fp32, after a real check
    torch.manual_seed(3)
    checked = evaluate.iwae_dataset(model, data, 20, batch_size=16, precision="auto")
    torch.manual_seed(3)
    plain = evaluate.iwae_dataset(model, data, 20, batch_size=16, precision="fp32")
    assert checked["precision"] == "fp32" and checked["precision_check"]["images"] == 16
    assert checked["iwae"] == plain["iwae"] and checked["elbo"] == plain["elbo"]


def test_bf16_bounds_stay_close_to_fp32_and_are_reported():
    model, data = tiny()
    torch.manual_seed(0)
    low = evaluate.iwae_dataset(model, data, 50, batch_size=16, precision="bf16")
    torch.manual_seed(0)
    high = evaluate.iwae_dataset(model, data, 50, batch_size=16, precision="fp32")
    assert low["precision"] == "bf16" and high["precision"] == "fp32"
    assert abs(low["iwae"] - high["iwae"]) < 3 * high["iwae_se"]


def test_the_monte_carlo_standard_error_of_the_bound():
    """Weights w = (1, 3): mean 2, sample sd sqrt(2), SE of the mean 1, of its log 1/2."""

    class Fixed:
        exact_kl = False

        def log_weights(self, x, k, y=None):
            log_w = torch.log(torch.tensor([[1.0], [3.0]]))[:k]
            return log_w, log_w

    result = objectives.iwae_bound(Fixed(), torch.zeros(1, 1), 2)
    assert result["iwae"].item() == pytest.approx(math.log(2))
    assert result["iwae_mc_se"].item() == pytest.approx(0.5)


def test_trainer_precision_bf16_needs_bf16_units(monkeypatch):
    from vaecli.errors import UsageError

    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "bf16_units", lambda device: "AMX-BF16")
    assert devices.amp_dtype("bf16", cpu) is torch.bfloat16
    assert devices.amp_dtype("auto", cpu) is None  # auto starts in fp32; the trainer's check decides
    monkeypatch.setattr(devices, "bf16_units", lambda device: None)
    with pytest.raises(UsageError) as refused:
        devices.amp_dtype("bf16", cpu)
    message = str(refused.value)
    assert "\n" not in message and "no bf16 matrix units" in message and "trainer.precision=auto" in message
    assert devices.amp_dtype("fp32", cpu) is None and devices.amp_dtype("auto", cpu) is None
    from vaecli.config import load_config

    assert load_config(["trainer.precision=auto"]).cfg.trainer.precision == "auto"


def test_bf16_training_on_a_cpu_without_units_is_refused_before_a_run_folder_exists(tmp_path, monkeypatch):
    from vaecli.config import load_config
    from vaecli.errors import UsageError
    from vaecli.training.trainer import fit

    monkeypatch.setattr(devices, "bf16_units", lambda device: None)
    with pytest.raises(UsageError, match="trainer.precision=bf16: this CPU has no bf16 matrix units"):
        fit(load_config(SHAPES + ["trainer.precision=bf16"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


class _Normed(torch.nn.Module):
    """A network with running statistics (BatchNorm) and random draws in its loss."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.BatchNorm1d(64), torch.nn.ReLU(),
                                       torch.nn.Linear(64, 16))

    def loss(self, x, y):
        noisy = x + torch.randn_like(x)
        return (self.net(noisy) - x).pow(2).sum(-1).mean(), {}


def test_the_training_check_leaves_weights_statistics_gradients_and_rng_alone(monkeypatch):
    from vaecli.training import precision

    monkeypatch.setattr(devices, "bf16_units", lambda device: "AVX512-BF16")
    monkeypatch.setattr(precision, "BUDGET", 0.0)
    torch.manual_seed(0)
    model = _Normed()
    x = torch.randn(32, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    check = precision.choose(model.loss, model, x, None, torch.device("cpu"))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm's running stats included
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())
    # the same noise for both: the losses differ by bf16's rounding only, not by a fresh draw
    assert check.loss_bf16 == pytest.approx(check.loss_fp32, rel=0.05)
    assert check.step_seconds_fp32 > 0 and check.step_seconds_bf16 > 0


def test_the_training_check_chooses_bf16_only_when_unchanged_and_faster(monkeypatch):
    from vaecli.training import precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "BUDGET", 0.0)
    model = _Normed()
    x = torch.randn(32, 16)
    monkeypatch.setattr(devices, "bf16_units", lambda device: None)
    none = precision.choose(model.loss, model, x, None, cpu)
    assert none.precision == "fp32" and none.reason == "no bf16 matrix units on this device"
    assert none.loss_fp32 is None  # nothing ran
    monkeypatch.setattr(devices, "bf16_units", lambda device: "AVX512-BF16")
    monkeypatch.setattr(precision, "SPEEDUP", 0.0)  # any speed passes
    chosen = precision.choose(model.loss, model, x, None, cpu)
    assert chosen.precision == "bf16" and chosen.dtype is torch.bfloat16 and chosen.reason.startswith("AVX512-BF16: ")
    monkeypatch.setattr(precision, "SPEEDUP", 1e9)
    slow = precision.choose(model.loss, model, x, None, cpu)
    assert slow.precision == "fp32" and slow.reason.startswith("bf16 is not faster here") and slow.dtype is None
    monkeypatch.setattr(precision, "SPEEDUP", 0.0)
    monkeypatch.setattr(precision, "LOSS_TOLERANCE", -1.0)  # no difference passes
    moved = precision.choose(model.loss, model, x, None, cpu)
    assert moved.precision == "fp32" and moved.reason.startswith("bf16 would change the loss")


def test_a_run_with_precision_auto_trains_in_what_its_check_chose(tmp_path, monkeypatch):
    from vaecli.config import load_config
    from vaecli.training import precision
    from vaecli.training.trainer import fit

    monkeypatch.setattr(devices, "bf16_units", lambda device: "AVX512-BF16")
    monkeypatch.setattr(precision, "SPEEDUP", 0.0)
    monkeypatch.setattr(precision, "BUDGET", 0.0)
    summary = fit(load_config(SHAPES + ["trainer.precision=auto"]), tmp_path / "run")
    assert summary.precision == "auto: bf16" and summary.precision_check["precision"] == "bf16"
    assert math.isfinite(summary.test_elbo)
    monkeypatch.setattr(precision, "SPEEDUP", 1e9)
    summary = fit(load_config(SHAPES + ["trainer.precision=auto"]), tmp_path / "run2")
    assert summary.precision == "auto: fp32" and "not faster" in summary.precision_check["reason"]


SHAPES = ["dataset=shapes", "dataset.image_size=16", "dataset.scales=1", "dataset.rotations=2",
          "dataset.positions=4", "model.hidden=[16]", "trainer.epochs=1", "trainer.sample_every=0"]


def test_a_run_with_precision_auto_says_what_it_chose(tmp_path, monkeypatch):
    from vaecli.config import load_config
    from vaecli.training.trainer import fit

    monkeypatch.setattr(devices, "bf16_units", lambda device: None)
    summary = fit(load_config(SHAPES + ["trainer.precision=auto"]), tmp_path / "run")
    assert summary.precision == "auto: fp32" and summary.precision_check["reason"] == "no bf16 matrix units on this device"
