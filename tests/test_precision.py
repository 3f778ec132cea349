"""bf16 evaluation (eval-iwae, score): chosen only where the hardware has bf16 matrix units and a
check on the first images shows the bound unchanged; the check itself moves no random draw."""

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


def test_trainer_precision_auto_follows_the_hardware(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "bf16_units", lambda device: "AMX-BF16")
    assert devices.amp_dtype("auto", cpu) is torch.bfloat16
    monkeypatch.setattr(devices, "bf16_units", lambda device: None)
    assert devices.amp_dtype("auto", cpu) is None and devices.amp_dtype("fp32", cpu) is None
    from vaecli.config import load_config

    assert load_config(["trainer.precision=auto"]).cfg.trainer.precision == "auto"


def test_a_run_with_precision_auto_says_what_it_chose(tmp_path, monkeypatch):
    from vaecli.config import load_config
    from vaecli.training.trainer import fit

    monkeypatch.setattr(devices, "bf16_units", lambda device: None)
    summary = fit(load_config(["dataset=shapes", "dataset.image_size=16", "dataset.scales=1", "dataset.rotations=2",
                               "dataset.positions=4", "model.hidden=[16]", "trainer.epochs=1",
                               "trainer.precision=auto", "trainer.sample_every=0"]), tmp_path / "run")
    assert summary.precision == "auto: fp32"
