"""disentanglement_lib's suite beside MIG: DCI, SAP, the FactorVAE and BetaVAE scores, against the
known answers of disentanglement_lib's own tests (importance matrices worked by hand) and on codes
whose answer is known (the factors themselves, and the same code rotated)."""

import math

import pytest
import torch

from vaecli.evaluation.disentanglement import METRICS, FactorGrid, dci_scores, factor_metrics, sap, sap_from_matrix


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


# -- objective=btcvae ---------------------------------------------------------------------------


def test_the_total_correlation_estimate_matches_a_gaussians_closed_form():
    """Posteriors N(mu_n, 0.3^2 I) around points of a 2-d Gaussian N(0, S), the whole set as the
    batch: the aggregate posterior is N(0, S + 0.09 I), whose total correlation is
    (sum_d log T_dd - log det T) / 2; for independent coordinates it is 0."""
    from vaecli.objectives import tc_decomposition

    torch.manual_seed(0)
    for correlation in (0.8, 0.0):
        cov = torch.tensor([[1.0, correlation], [correlation, 1.0]], dtype=torch.float64)
        mu = torch.randn(4000, 2, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
        logvar = torch.full_like(mu, 2 * math.log(0.3))
        z = mu + 0.3 * torch.randn_like(mu)
        tc = tc_decomposition(z, mu, logvar)["tc"].mean().item()
        total = cov + 0.09 * torch.eye(2, dtype=torch.float64)
        expected = 0.5 * (total.diagonal().log().sum() - torch.logdet(total)).item()
        assert tc == pytest.approx(expected, abs=0.03), correlation


def test_btcvae_with_unit_weights_is_the_elbo_and_its_terms_add_up_to_the_kl():
    from vaecli import objectives
    from vaecli.models import build, from_flat

    torch.manual_seed(0)
    model = build(from_flat("mlp", (1, 4, 4), latent_dim=3, hidden=[8]))
    x = (torch.rand(16, 1, 4, 4) > 0.5).float()
    torch.manual_seed(1)
    loss, metrics = objectives.btcvae(model, x, None, 1.0, 1.0, 1.0)
    torch.manual_seed(1)  # the same z: the one-sample ELBO, with log q(z|x) - log p(z) as its KL
    q = model.encode(x)
    z = q.rsample()
    expected = (q.log_prob(z) - model.prior().log_prob(z) - model.decode(z).log_prob(x)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert (metrics["mi"] + metrics["tc"] + metrics["dim_kl"]).item() == pytest.approx(metrics["kl"].item(), rel=1e-5)
    heavier, more = objectives.btcvae(model, x, None, 1.0, 6.0, 1.0)
    assert "tc" in more and heavier.requires_grad


@pytest.mark.slow  # a real training run through the CLI (the fast suite keeps the maths tests)
def test_btcvae_trains_logs_its_terms_and_refuses_models_it_cannot_split(tmp_path, capsys):
    import json

    from vaecli.cli import run

    tiny = ["dataset=shapes", "dataset.image_size=16", "dataset.rotations=2", "dataset.positions=4",
            "model.latent_dim=3", "model.hidden=[16]", "trainer.epochs=1", "trainer.log_every=5", "trainer.sample_every=0"]
    assert run(["train", *tiny, "objective=btcvae", "objective.beta=4", "--run-dir", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert train and all({"mi", "tc", "dim_kl"} <= set(r) for r in train)
    assert all(abs(r["mi"] + r["tc"] + r["dim_kl"] - r["kl"]) < 1e-3 * max(1.0, abs(r["kl"])) for r in train)
    for bad, needle in ((["model=ladder"], "objective=btcvae splits the KL"), (["beta=4"], "leave beta at 1"),
                        (["objective.gamma=-1"], "must be >= 0")):
        assert run(["train", *tiny, "objective=btcvae", *bad, "--run-dir", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


# -- kl.capacity -----------------------------------------------------------------------------------


def test_annealed_capacity_holds_the_kl_to_a_rising_target():
    """Burgess et al. 2018: loss = recon + gamma |KL - C(step)|, C rising linearly to kl.capacity."""
    from vaecli import objectives
    from vaecli.models import build, from_flat

    schedule = objectives.KLSchedule(capacity=20.0, capacity_steps=100, capacity_gamma=50.0)
    assert [schedule.capacity_at(s) for s in (0, 50, 100, 500)] == [0.0, 10.0, 20.0, 20.0]
    objective = objectives.Objective(schedule=schedule)
    torch.manual_seed(0)
    model = build(from_flat("mlp", (1, 4, 4), latent_dim=3, hidden=[8]))
    x = (torch.rand(16, 1, 4, 4) > 0.5).float()
    torch.manual_seed(1)
    loss, metrics = objective(model, x, None, 50)
    assert metrics["capacity"].item() == 10.0
    expected = 50.0 * abs(metrics["kl"].item() - 10.0) + metrics["recon"].item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert metrics["elbo"].item() == pytest.approx(-metrics["recon"].item() - metrics["kl"].item(), rel=1e-6)


def test_capacity_is_refused_beside_beta_and_the_kl_schedules():
    from vaecli.config import load_config
    from vaecli.errors import UsageError

    assert load_config(["kl.capacity=25"]).cfg.kl.capacity == 25
    for bad in (["beta=4"], ["kl.schedule=linear"], ["objective=iwae"], ["kl.capacity_gamma=0"]):
        with pytest.raises(UsageError, match="kl.capacity"):
            load_config(["kl.capacity=25", *bad])


# -- objective=dipvae ------------------------------------------------------------------------------


def test_the_dip_penalty_against_a_covariance_worked_by_hand():
    from vaecli.objectives import dip_regularizer

    mu = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [2.0, 2.0], [-2.0, -2.0]])
    sigma = torch.full_like(mu, 0.5)
    # population covariance of the means: var = (1+1+1+1+4+4)/6 = 2 each, cov = (1+1-1-1+4+4)/6 = 4/3
    expected_i = 3.0 * 2 * (4 / 3) ** 2 + 7.0 * 2 * (2 - 1) ** 2
    assert dip_regularizer(mu, sigma, "i", 3.0, 7.0).item() == pytest.approx(expected_i)
    expected_ii = 3.0 * 2 * (4 / 3) ** 2 + 7.0 * 2 * (2 + 0.25 - 1) ** 2  # + the mean posterior variance
    assert dip_regularizer(mu, sigma, "ii", 3.0, 7.0).item() == pytest.approx(expected_ii)
    white = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]) * math.sqrt(2)
    assert dip_regularizer(white, torch.zeros_like(white), "i", 5.0, 5.0).item() == pytest.approx(0.0, abs=1e-6)


def test_dipvae_adds_its_penalty_to_the_elbo_and_its_config_rules():
    from vaecli import objectives
    from vaecli.config import load_config
    from vaecli.errors import UsageError
    from vaecli.models import build, from_flat

    torch.manual_seed(0)
    model = build(from_flat("mlp", (1, 4, 4), latent_dim=3, hidden=[8]))
    x = (torch.rand(16, 1, 4, 4) > 0.5).float()
    loss, metrics = objectives.dipvae(model, x, None, "ii", 2.0, 3.0)
    assert loss.item() == pytest.approx((-metrics["elbo"] + metrics["dip"]).item(), rel=1e-5)
    built = objectives.build(load_config(["objective=dipvae"]).cfg.objective, load_config([]).cfg.kl, 1.0, 10)
    assert built.dip == ("i", 10.0, 100.0)  # disentanglement_lib's lambda_d_factor 10 for DIP-VAE-I
    for bad in (["objective.type=iii"], ["model=ladder"], ["kl.free_bits=0.5"]):
        with pytest.raises(UsageError, match="objective"):
            load_config(["objective=dipvae", *bad])


# -- objective=factorvae ---------------------------------------------------------------------------


def _trainer_stub(applied=True):
    from types import SimpleNamespace

    return SimpleNamespace(device=torch.device("cpu"), dist=SimpleNamespace(world=1),
                           state=SimpleNamespace(applied=torch.tensor(applied)))


def test_permuting_each_dimension_keeps_the_marginals_and_breaks_the_dependence():
    from vaecli.objectives import permute_dims

    torch.manual_seed(0)
    x = torch.randn(2000, 1)
    z = torch.cat([x, x], dim=1)  # perfectly dependent coordinates
    shuffled = permute_dims(z)
    for d in range(2):
        assert torch.equal(shuffled[:, d].sort().values, z[:, d].sort().values)
    assert abs(torch.corrcoef(shuffled.T)[0, 1].item()) < 0.1


def test_the_critic_estimates_a_gaussians_total_correlation():
    """Trained on draws of a 2-d Gaussian with correlation 0.9 its logit difference approaches the
    TC, -log(1 - 0.81) / 2 = 0.83 nats; on independent coordinates it stays near 0."""
    from vaecli.objectives import TCDiscriminator

    expected = -0.5 * math.log(1 - 0.81)
    for correlation, low, high in ((0.9, 0.5, 1.2), (0.0, -0.15, 0.15)):
        torch.manual_seed(0)
        critic = TCDiscriminator(2, width=64, layers=2, lr=3e-3)
        trainer = _trainer_stub()
        critic.on_train_start(trainer)
        chol = torch.linalg.cholesky(torch.tensor([[1.0, correlation], [correlation, 1.0]]))
        estimates = []
        for step in range(600):
            z = torch.randn(256, 2) @ chol.T
            tc, _ = critic.losses(z)
            critic.on_step_end(trainer)
            if step >= 500:
                estimates.append(tc.item())
        mean = sum(estimates) / len(estimates)
        assert low < mean < high, (correlation, mean, expected)


def test_factorvae_adds_gamma_tc_to_the_elbo_and_leaves_the_critic_to_its_own_step():
    from vaecli import objectives
    from vaecli.models import build, from_flat

    torch.manual_seed(0)
    model = build(from_flat("mlp", (1, 4, 4), latent_dim=3, hidden=[8]))
    critic = objectives.TCDiscriminator(3, width=8, layers=2)
    trainer = _trainer_stub()
    critic.on_train_start(trainer)
    x = (torch.rand(16, 1, 4, 4) > 0.5).float()
    loss, metrics = objectives.factorvae(model, x, None, 7.0, critic)
    assert loss.item() == pytest.approx((-metrics["elbo"] + 7.0 * metrics["tc"]).item(), rel=1e-5)
    assert {"tc", "disc_loss", "disc_acc"} <= set(metrics)
    loss.backward()  # the model's step: gradients for the model only
    assert all(p.grad is None for p in critic.net.parameters())
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    before = [p.detach().clone() for p in critic.net.parameters()]
    critic.on_step_end(_trainer_stub(applied=False))  # the model's step was rejected: so is the critic's
    assert all(torch.equal(a, b) for a, b in zip(before, critic.net.parameters()))
    objectives.factorvae(model, x, None, 7.0, critic)
    critic.on_step_end(trainer)
    assert not all(torch.equal(a, b) for a, b in zip(before, critic.net.parameters()))


def test_factorvae_resumes_bit_exactly_with_its_critic(tmp_path):
    from safetensors.torch import load_file

    from conftest import whole_and_resumed

    whole, split = whole_and_resumed(tmp_path, ["dataset.image_size=16", "model.latent_dim=3", "objective=factorvae",
                                                "objective.disc_width=16", "objective.disc_layers=2"])
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    critic = {k: v for k, v in load_file(str(tmp_path / "whole/trainer.safetensors")).items()
              if k.startswith("callback.discriminator.")}
    resumed = load_file(str(tmp_path / "split/trainer.safetensors"))
    assert any(".adam." in k for k in critic) and all(torch.equal(v, resumed[k]) for k, v in critic.items())


# -- objective=infovae / wae -----------------------------------------------------------------------


def test_the_mmd_estimate_against_a_sum_worked_term_by_term():
    from vaecli.objectives import MMD_SCALES, mmd

    a = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[1.0, 1.0], [-1.0, 0.0], [0.5, 0.5]])
    for kernel in ("imq", "rbf"):
        def k(u, v):
            sq = float(((u - v) ** 2).sum())
            if kernel == "imq":
                return sum(4 * s / (4 * s + sq) for s in MMD_SCALES)  # C = 2 d scale = 4
            return math.exp(-sq / 4)
        within = sum(k(a[i], a[j]) + k(b[i], b[j]) for i in range(3) for j in range(3) if i != j) / 6
        across = sum(k(a[i], b[j]) for i in range(3) for j in range(3)) / 9
        assert mmd(a, b, kernel).item() == pytest.approx(within - 2 * across, rel=1e-5)
    torch.manual_seed(0)
    same = mmd(torch.randn(500, 4), torch.randn(500, 4)).item()
    shifted = mmd(torch.randn(500, 4) + 1.0, torch.randn(500, 4)).item()
    assert abs(same) < 0.02 and shifted > 0.3


def test_infovae_and_wae_losses():
    from vaecli import objectives
    from vaecli.models import build, from_flat

    torch.manual_seed(0)
    model = build(from_flat("mlp", (1, 4, 4), latent_dim=3, hidden=[8]))
    x = (torch.rand(16, 1, 4, 4) > 0.5).float()
    loss, metrics = objectives.infovae(model, x, None, 0.0, 1.0, "imq", 1.0)  # alpha 0, lambda 1: the ELBO
    assert loss.item() == pytest.approx(-metrics["elbo"].item(), rel=1e-5) and "mmd" in metrics
    loss, metrics = objectives.infovae(model, x, None, 0.5, 10.0, "rbf", 1.0)
    expected = 0.5 * metrics["kl"] + metrics["recon"] + 9.5 * metrics["mmd"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss, metrics = objectives.wae(model, x, None, 100.0, "imq", 1.0)
    assert loss.item() == pytest.approx((metrics["recon"] + 100.0 * metrics["mmd"]).item(), rel=1e-5)
    assert "elbo" in metrics  # a Gaussian encoder still has its (untrained) bound
    ae = build(from_flat("mlp", (1, 4, 4), latent_dim=3, hidden=[8], kind="ae"))
    _, metrics = objectives.wae(ae, x, None, 100.0, "imq", 1.0)
    assert "elbo" not in metrics and "kl" not in metrics


def test_new_objectives_train_report_their_terms_and_refuse_what_they_cannot_shape(tmp_path, capsys):
    import json

    from vaecli.cli import run

    tiny = ["dataset=shapes", "dataset.image_size=16", "dataset.rotations=2", "dataset.positions=4",
            "model.latent_dim=3", "model.hidden=[16]", "trainer.epochs=1", "trainer.log_every=5", "trainer.sample_every=0"]
    for objective, extra, terms in (("factorvae", ["objective.disc_width=16", "objective.disc_layers=2"],
                                     {"tc", "disc_loss", "disc_acc"}),
                                    ("infovae", [], {"mmd"}), ("wae", ["model=ae"], {"mmd"})):
        out = tmp_path / objective
        assert run(["train", *tiny, f"objective={objective}", *extra, "--run-dir", str(out), "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert set(summary["objective_terms"]) == terms
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert all(terms <= set(r) for r in records if r["split"] == "train")
    for bad, needle in ((["objective=factorvae", "model=vqvae"], "model=vqvae"),
                        (["objective=factorvae", "model.latent=categorical"], "model.latent=categorical"),
                        (["objective=wae", "model=ladder"], "objective=wae"),
                        (["objective=infovae", "objective.kernel=cosine"], "objective.kernel must be imq or rbf"),
                        (["objective=factorvae", "objective.disc_lr=0"], "objective.disc_lr > 0")):
        assert run(["train", *tiny, *bad, "--run-dir", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_dci_and_sap_score_the_varying_factors_when_one_never_varies():
    """dataset=shapes dataset.scales=1 has a factor with one value: disentanglement_lib exposes only
    the varying factors, and scikit-learn refuses a classifier of one class."""
    import itertools

    factors = torch.tensor(list(itertools.product(range(3), range(1), range(4))))
    codes = torch.cat([factors[:, [0, 2]].double(), torch.randn(len(factors), 1, dtype=torch.float64)], dim=1)
    out = factor_metrics(codes, factors, ("dci", "sap"), num_train=200, num_test=100)
    assert out["dci"]["disentanglement"] > 0.5 and len(out["dci"]["importance"][0]) == 2
    noise = factor_metrics(torch.randn_like(codes), factors, ("sap",), num_train=200, num_test=100)
    assert out["sap"]["sap"] > 0.2 > 0.1 > noise["sap"]["sap"]


def test_mig_is_computed_on_points_drawn_from_the_factor_grid():
    """As disentanglement_lib's mig.num_train: `points` observations of uniformly drawn factors."""
    import itertools

    from vaecli.evaluation.disentanglement import evaluate

    factors = torch.tensor(list(itertools.product(range(4), range(5))))
    codes = factors.double() + 0.01 * torch.randn(len(factors), 2, dtype=torch.float64)
    out = evaluate(codes, factors, ["a", "b"], ("mig",), seed=0, points=300)
    assert out["mig_points"] == 300 and out["mig"] > 0.8
    partial = evaluate(codes[:7], factors[:7], ["a", "b"], ("mig",))  # not a full grid: MIG on every image
    assert partial["mig_points"] == 7
    with pytest.raises(ValueError, match="every combination"):
        evaluate(codes[:7], factors[:7], ["a", "b"], ("mig", "dci"))


SHAPES_16 = ["dataset=shapes", "dataset.image_size=16", "dataset.rotations=2", "dataset.positions=4",
             "model.latent_dim=3", "model.hidden=[16]", "trainer.epochs=1", "trainer.log_every=5",
             "trainer.sample_every=0"]


def test_eval_disentanglement_of_a_run_trained_on_a_limit_scores_the_whole_grid(tmp_path, capsys):
    """dataset.limit trains on a subset; shapes renders its whole factor grid, so every metric (and
    --metrics mig, which was refused with the message that recommended it) works; scales=1 leaves
    a factor that never varies, which DCI and SAP now leave out."""
    import json

    from vaecli.cli import run

    assert run(["train", *SHAPES_16, "dataset.scales=1", "dataset.limit=40", "--run-dir", str(tmp_path / "sh")]) == 0
    capsys.readouterr()
    assert run(["eval-disentanglement", "--ckpt", str(tmp_path / "sh"), "--metrics", "mig", "--points", "60",
                "--json"]) == 0
    only_mig = json.loads(capsys.readouterr().out)
    assert only_mig["n"] == 3 * 1 * 2 * 4 * 4 and only_mig["mig_points"] == 60 and 0 <= only_mig["mig"] <= 1
    assert run(["eval-disentanglement", "--ckpt", str(tmp_path / "sh"), "--points", "60", "--json"]) == 0
    every = json.loads(capsys.readouterr().out)
    assert 0 <= every["dci"]["disentanglement"] <= 1 and 0 <= every["sap"]["sap"] <= 1
    assert len(every["dci"]["importance"][0]) == 4  # shape, rotation, pos_x, pos_y: scale never varies


@pytest.mark.parametrize("objective, extra", [("wae", ["model=ae"]), ("infovae", []), ("btcvae", [])])
def test_objectives_with_a_batch_statistic_never_train_on_a_short_last_batch(tmp_path, capsys, objective, extra):
    """33 images in batches of 32: the last batch would hold one image, whose MMD divides by
    n (n - 1) = 0 (a NaN, a skipped step every epoch) and whose minibatch TC estimate is degenerate.
    These objectives train on whole batches only (objectives.BATCH_STATISTIC)."""
    import json

    from vaecli.cli import run
    from vaecli.training.trainer import steps_per_epoch

    assert (steps_per_epoch(33, 32, False), steps_per_epoch(33, 32, True), steps_per_epoch(20, 32, True)) == (2, 1, 1)
    assert run(["train", *SHAPES_16, "dataset.limit=33", "trainer.batch_size=32", "trainer.epochs=2",
                f"objective={objective}", *extra, "--run-dir", str(tmp_path / "r"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["step"] == 2 and summary["skipped_steps"] == 0
