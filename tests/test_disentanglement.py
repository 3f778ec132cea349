"""disentanglement_lib's suite beside MIG: DCI, SAP, the FactorVAE and BetaVAE scores, against the
known answers of disentanglement_lib's own tests (importance matrices worked by hand) and on codes
whose answer is known (the factors themselves, and the same code rotated)."""

import math

import pytest
import torch

from vaecli.disentanglement import (METRICS, FactorGrid, dci_scores, factor_metrics, sap, sap_from_matrix)


def grid(sizes=(3, 4, 5)):
    axes = torch.meshgrid(*[torch.arange(s) for s in sizes], indexing="ij")
    return torch.stack([a.reshape(-1) for a in axes], dim=1)


@pytest.mark.parametrize("importance, disentanglement, completeness", [
    (torch.diag(5.0 * torch.ones(5)), 1.0, 1.0),
    (torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), 1.0, 1.0),  # an unused code
    (torch.zeros(10, 10), 0.0, 0.0),
    (torch.cat([torch.diag(5.0 * torch.ones(5))] * 2, dim=0), 1.0, 1 - math.log(2) / math.log(10)),  # redundant codes
    (torch.diag(5.0 * torch.ones(5))[:2], 1.0, 1.0),  # factors no code captures
    (torch.cat([torch.diag(5.0 * torch.ones(5))] * 2, dim=1), 1 - math.log(2) / math.log(10), 1.0),  # one code, two factors
])
def test_dci_of_importance_matrices_worked_by_hand(importance, disentanglement, completeness):
    d, c = dci_scores(importance)
    assert d == pytest.approx(disentanglement, abs=1e-6) and c == pytest.approx(completeness, abs=1e-6)


def test_sap_is_the_mean_gap_between_each_factors_best_two_codes():
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.7], [0.1, 0.6]])
    assert sap_from_matrix(scores) == pytest.approx(((0.9 - 0.2) + (0.7 - 0.6)) / 2)


def test_continuous_sap_of_the_factors_and_of_a_duplicated_code():
    factors = grid((10, 10))
    codes = factors.double()
    assert sap(codes, factors, codes, factors, continuous=True)["sap"] > 0.9
    doubled = torch.cat([codes, codes], dim=1)  # two codes per factor: no gap
    assert sap(doubled, factors, doubled, factors, continuous=True)["sap"] < 0.2


def test_the_factor_grid_needs_every_combination_and_finds_each_image():
    factors = grid()
    codes = torch.randn(len(factors), 4)
    g = FactorGrid(factors[torch.randperm(len(factors))], codes)
    assert g.sizes == [3, 4, 5]
    with pytest.raises(ValueError, match="every combination"):
        FactorGrid(factors[:-1], codes[:-1])
    shuffled = torch.randperm(len(factors))
    g = FactorGrid(factors[shuffled], codes[shuffled])
    assert torch.equal(g.codes_of(factors[shuffled][:7]), codes[shuffled][:7].double())


def test_every_metric_scores_the_factors_themselves_high_and_a_rotation_of_them_lower():
    factors = grid()
    torch.manual_seed(0)
    codes = factors.double() / torch.tensor([3.0, 4.0, 5.0]) + 0.01 * torch.randn(len(factors), 3, dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    rotated = (codes - codes.mean(0)) / codes.std(0) @ rotation
    small = {"num_train": 300, "num_test": 200, "num_variance": 300}
    good = factor_metrics(codes, factors, METRICS, **small)
    bad = factor_metrics(rotated, factors, METRICS, **small)
    assert good["dci"]["disentanglement"] > 0.95 and good["dci"]["completeness"] > 0.95
    assert bad["dci"]["disentanglement"] < 0.5
    assert good["factor_vae"]["eval_accuracy"] == 1.0 and bad["factor_vae"]["eval_accuracy"] < 0.9
    assert good["beta_vae"]["eval_accuracy"] > 0.95
    assert good["sap"]["sap"] > bad["sap"]["sap"]
    again = factor_metrics(codes, factors, ("factor_vae",), seed=0, **small)
    assert again["factor_vae"] == good["factor_vae"]  # the seed decides every draw


def test_the_cli_lists_the_same_metrics_without_importing_torch():
    from vaecli.cli.inspect import METRICS as CLI_METRICS

    assert CLI_METRICS == METRICS
