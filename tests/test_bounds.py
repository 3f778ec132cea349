"""Every reported -log p(x) and bits/dim is a bound for the data as stored, or says it is not
(bounds.py). Tiny models whose exact log P(x) is computed by brute force: a 1-D latent integrated
on a grid, each pixel's probability of its stored level exact (a mass, or the density's mass over
the level's dequantization bin)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY, flat_spec_json, one_json, vae

from vaecli import bounds, objectives
from vaecli.evaluation import evaluate
from vaecli.config import load_config
from vaecli.data import ImageSet, fixed_uniform
from vaecli.models import build, from_flat, likelihoods

Z = torch.linspace(-8, 8, 4001, dtype=torch.float64)  # the quadrature grid of the 1-D latent


def tiny(likelihood: str, levels: int, dequantize: bool, shape=(1, 2, 2), seed=0, **extra):
    torch.manual_seed(seed)
    return build(from_flat("mlp", shape, latent_dim=1, hidden=[8], likelihood=likelihood, levels=levels,
                         dequantize=dequantize, **extra)).eval()


def level_probabilities(model, k: torch.Tensor, levels: int) -> torch.Tensor:
    """log P(k | z) (len(Z),) of one image of stored levels k (C, H, W), exactly: for a model fed
    the stored values, log_prob at them (a mass, or what a pseudo-likelihood calls one); for a
    dequantized density, its mass over each pixel's bin [k/L, (k+1)/L)."""
    with torch.no_grad():
        p = model.decode(Z[:, None].float())
        if not model.spec.data.dequantize:
            return p.log_prob(k / (levels - 1)).double()
        return log_bin_mass(p.base_dist, (k / levels).double(), ((k + 1) / levels).double()).flatten(1).sum(1)


def log_bin_mass(base, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """log of the mass a per-pixel density puts on [lo, hi), in float64, accurate in the tails."""
    if isinstance(base, torch.distributions.Normal):
        loc, scale = base.loc.double(), torch.as_tensor(base.scale, dtype=torch.float64)
        a, b = (lo - loc) / scale, (hi - loc) / scale
        flip = a > 0  # in the upper tail, the same mass from the mirrored lower tail (no 1 - 1e-19)
        a, b = torch.where(flip, -b, a), torch.where(flip, -a, b)
        log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
        return log_b + torch.log1p(-torch.exp(log_a - log_b))
    double = torch.distributions.ContinuousBernoulli(logits=base.logits.double(), validate_args=False)
    return (double.cdf(hi.expand(double.batch_shape)) - double.cdf(lo.expand(double.batch_shape))).log()


def exact_log_p(model, k: torch.Tensor, levels: int) -> float:
    """log P(k) = log of the integral of p(z) P(k | z) dz, by the trapezoid-free Riemann sum on Z."""
    log_prior = -0.5 * Z.square() - 0.5 * math.log(2 * math.pi)
    dz = (Z[1] - Z[0]).item()
    return (torch.logsumexp(log_prior + level_probabilities(model, k, levels), 0) + math.log(dz)).item()


def stored(images: torch.Tensor, levels: int, dequantize: bool) -> ImageSet:
    """uint8 images holding levels 0..L-1 as the data pipeline stores them (binary as 0/255)."""
    return ImageSet((images * (255 // (levels - 1))).to(torch.uint8), levels=levels, dequantize=dequantize)


CASES = [  # (likelihood, levels, dequantize): every likelihood where its figures are bounds
    ("bernoulli", 2, False),
    ("logistic", 256, False),
    ("logistic", 2, False),
    ("gaussian", 256, True),
    ("gaussian_learned", 256, True),
    ("cbernoulli", 256, True),
    ("gaussian", 2, True),
]


@pytest.mark.parametrize("likelihood,levels,dequantize", CASES)
def test_reported_bound_is_a_bound_on_the_exact_log_probability(likelihood, levels, dequantize):
    model = tiny(likelihood, levels, dequantize)
    assert model.measure.bound
    g = torch.Generator().manual_seed(1)
    k = torch.randint(0, levels, (6, 1, 2, 2), generator=g)
    # A dequantized figure is a bound in expectation over the noise u, as IWAE's is over its
    # samples: each image is repeated with the evaluation's own noise of 64 positions and averaged.
    copies = 64 if dequantize else 1
    data = stored(k.repeat_interleave(copies, 0), levels, dequantize)
    torch.manual_seed(0)
    reported = evaluate.image_bounds(model, data, [2000])["iwae"].view(len(k), copies).mean(1)
    exact = torch.tensor([exact_log_p(model, k[i], levels) for i in range(len(k))], dtype=torch.float64)
    assert (exact <= 0).all()  # probabilities of discrete images
    assert (reported <= exact + 0.05).all(), (reported, exact)  # a lower bound on log P(x) ...
    if levels == 256 or not dequantize:  # ... and a tight one: the dequantization offset is D ln L, once
        assert (reported >= exact - 0.5).all(), (reported, exact)


def test_masses_sum_to_one_over_every_image_and_grey_bernoulli_does_not():
    binary = tiny("bernoulli", 2, False)
    every = torch.tensor([[(i >> b) & 1 for b in range(4)] for i in range(16)]).view(16, 1, 2, 2)
    total = sum(math.exp(exact_log_p(binary, every[i], 2)) for i in range(16))
    assert total == pytest.approx(1.0, abs=1e-6)
    logistic = tiny("logistic", 256, False, shape=(1, 1, 1))
    total = sum(math.exp(exact_log_p(logistic, torch.tensor([[[v]]]), 256)) for v in range(256))
    assert total == pytest.approx(1.0, abs=1e-6)
    # The textbook Bernoulli on grey levels: its "probabilities" of the 256 values of one pixel sum
    # to far more than 1, which is why its figures are labelled as not being bounds.
    grey = tiny("bernoulli", 256, False, shape=(1, 1, 1))
    total = sum(math.exp(exact_log_p(grey, torch.tensor([[[v]]]), 256)) for v in range(256))
    assert total > 10 and not grey.measure.bound


def test_a_density_at_the_grid_points_is_not_a_bound_and_says_so():
    """Without dequantization a sharp density evaluated at the grid points exceeds any probability:
    its "-log p(x)" comes out negative, so it is labelled as not being a bound."""
    model = tiny("gaussian", 256, False, sigma=0.002)
    assert not model.measure.bound and "not a bound" in model.measure.what
    k = torch.full((1, 1, 2, 2), 128)
    with torch.no_grad():
        model.decoder[0][-1].weight.zero_()
        model.decoder[0][-1].bias.fill_(128 / 255)  # every pixel's mean on its grid point
    torch.manual_seed(0)
    density = evaluate.image_bounds(model, stored(k, 256, False), [100])["iwae"][0].item()
    assert density > 0  # "log p(x)" > 0 >= log P(x) of any distribution over the stored images


@pytest.mark.parametrize("likelihood", ["bernoulli", "cbernoulli", "gaussian", "gaussian_learned", "logistic"])
def test_bits_per_dim_are_never_negative_on_8bit_data(likelihood):
    """Each likelihood with its default dequantization, trained to memorize a few 8-bit images
    (the case where a density sharpens most): bits/dim is >= 0, or not claimed at all."""
    cfg = load_config(["dataset=shapes", f"likelihood={likelihood}"]).cfg
    torch.manual_seed(0)
    images = (torch.rand(8, 1, 16, 16) * 256).floor().to(torch.uint8)
    data = ImageSet(images, levels=256, dequantize=cfg.dataset.dequantize)
    model = build(from_flat("mlp", (1, 16, 16), latent_dim=3, hidden=[64], likelihood=likelihood,
                          sigma=getattr(cfg.likelihood, "sigma", None), mixtures=getattr(cfg.likelihood, "mixtures", 1),
                          dequantize=cfg.dataset.dequantize))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(400):
        loss, _ = objectives.elbo(model, data.to_float(data.images))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.manual_seed(0)
    result = evaluate.iwae_dataset(model, data, 100)
    assert result["bound"] == (likelihood != "bernoulli")  # grey pixels under a Bernoulli: no claim
    if result["bound"]:
        assert result["bits_per_dim"] >= 0 and result["nll"] >= 0 and result["elbo_bits_per_dim"] >= result["bits_per_dim"]
    else:
        assert result["bits_per_dim"] is None and result["nll"] is None and result["elbo_bits_per_dim"] is None


def test_what_each_likelihood_measures():
    want = {("bernoulli", 2, False): True, ("bernoulli", 256, False): False, ("logistic", 256, False): True,
            ("logistic", 2, False): True, ("gaussian", 256, False): False, ("gaussian", 256, True): True,
            ("gaussian_learned", 256, True): True, ("cbernoulli", 256, False): False, ("cbernoulli", 2, True): True}
    for (name, levels, dequantize), bound in want.items():
        assert bounds.measure(name, levels, dequantize).bound == bound, name
        assert build(from_flat("mlp", (1, 2, 2), latent_dim=1, hidden=[4], likelihood=name, levels=levels,
                             dequantize=dequantize)).measure.bound == bound
    # The density list the config resolves dataset.dequantize with is the likelihoods that are densities.
    densities = {n for n in bounds.LIKELIHOODS
                 if isinstance(likelihoods.build(from_flat("mlp", (1, 2, 2), likelihood=n)), likelihoods._Density)}
    assert densities == set(bounds.DENSITIES)
    with pytest.raises(ValueError, match="needs a density"):
        build(from_flat("mlp", (1, 2, 2), likelihood="logistic", dequantize=True))


def test_dequantized_density_reports_the_offset_of_the_bins():
    """log_prob of a dequantized density is the plain density minus D ln L."""
    plain, dequantized = tiny("gaussian", 256, False), tiny("gaussian", 256, True)
    dequantized.load_state_dict(plain.state_dict())
    z, x = torch.zeros(3, 1), torch.rand(3, 1, 2, 2)
    gap = plain.decode(z).log_prob(x) - dequantized.decode(z).log_prob(x)
    assert torch.allclose(gap, torch.full((3,), 4 * math.log(256)))


def test_evaluation_noise_is_fixed_per_image_whatever_the_batch():
    data = ImageSet(torch.randint(0, 256, (10, 1, 3, 3), dtype=torch.uint8), dequantize=True)
    whole = data.to_float(data.images, first=0)
    pieces = torch.cat([data.to_float(data.images[i:i + 3], first=i) for i in range(0, 10, 3)])
    assert torch.equal(whole, pieces)
    levels = (whole * 256).floor()
    assert torch.equal(levels, data.images.double().float())  # each value stays inside its own bin
    u = fixed_uniform(0, torch.Size((1000, 1, 8, 8)), torch.device("cpu"))
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.002
    train = data.to_float(data.images)  # training draws fresh noise from the RNG
    assert not torch.equal(train, whole) and torch.equal((train * 256).floor(), levels)


@pytest.mark.parametrize("dataset,likelihood,bound", [
    ("mnist", "bernoulli", False), ("shapes", "logistic", True), ("binarized_mnist", "bernoulli", True),
    ("omniglot", "bernoulli", True), ("fashion_mnist", "logistic", True), ("kmnist", "logistic", True),
    ("cifar10", "logistic", True), ("svhn", "logistic", True), ("celeba", "logistic", True),
    ("folder", "logistic", True), ("dsprites", "bernoulli", True), ("shapes3d", "logistic", True)])
def test_each_dataset_names_its_natural_likelihood(dataset, likelihood, bound):
    extra = ["dataset.path=/nowhere"] if dataset == "folder" else []
    cfg = load_config([f"dataset={dataset}", *extra]).cfg
    assert cfg.likelihood.name == likelihood and cfg.dataset.dequantize is False
    assert bounds.measure(cfg.likelihood.name, bounds.levels(cfg.dataset.binarize), cfg.dataset.dequantize).bound == bound
    gaussian = load_config([f"dataset={dataset}", "likelihood=gaussian", *extra]).cfg  # the override wins
    assert gaussian.likelihood.name == "gaussian" and gaussian.dataset.dequantize is True


@pytest.mark.slow  # subprocess-heavy (6-24 s): the fast suite stays near 5 minutes on 2 cores
def test_every_command_says_whether_its_figures_are_bounds(trained_run, env, tmp_path):
    """train's summary, eval-iwae, score and `vae runs` for a binarized-MNIST run (a bound) beside
    the grey-MNIST Bernoulli run (no -log p(x) claimed anywhere)."""
    run = tmp_path / "runs" / "binary"
    summary = one_json(vae("train", *TINY, "dataset=binarized_mnist", "--run-dir", str(run), "--json", env=env))
    assert summary["bound"] is True and summary["test_bits_per_dim"] == pytest.approx(
        -summary["test_elbo"] / (784 * math.log(2)))
    assert "Bernoulli: a probability of the stored values" in summary["measure"]
    result = one_json(vae("eval-iwae", "--ckpt", str(run), "--k", "20", "--n", "16", "--json", env=env))
    assert result["bound"] is True and result["nll"] == pytest.approx(-result["iwae"])
    assert result["bits_per_dim"] == pytest.approx(result["nll"] / (784 * math.log(2)))
    table = vae("eval-iwae", "--ckpt", str(run), "--k", "5", "--n", "8", env=env).stdout
    assert "-log p(x) <=" in table and "bits/dim" in table

    for ckpt, bound in ((run, True), (trained_run, False)):
        scored = one_json(vae("score", "--ckpt", str(ckpt), "--k", "5", "--n", "8", "--out", str(tmp_path / "s.csv"),
                              "--json", env=env))
        rows = (tmp_path / "s.csv").read_text().splitlines()
        assert rows[0] == "set,image,label,neg_iwae,nll,bits_per_dim,elbo,recon,kl"
        first = rows[1].split(",")
        assert scored["bound"] is bound and (first[4] == first[3]) is bound and (first[5] != "") is bound
        assert (scored["sets"][0]["nll"] is not None) is bound and (scored["sets"][0]["bits_per_dim"] is not None) is bound

    (tmp_path / "runs" / "grey").symlink_to(trained_run, target_is_directory=True)
    listed = one_json(vae("runs", str(tmp_path / "runs"), "--json", env=env))
    assert {r["name"]: r["bound"] for r in listed["runs"]} == {"binary": True, "grey": False}
    shown = vae("runs", str(tmp_path / "runs"), env=env).stdout
    assert "* not a bound on -log p(x)" in shown and f"{summary['test_elbo']:.2f}*" not in shown


def test_a_checkpoint_from_before_levels_and_dequantization_keeps_its_meaning(tmp_path):
    """Saved before the spec knew the data's levels: a binarized-MNIST Bernoulli model is still a
    bound, a Gaussian one (never dequantized then) is still not, and a logistic one keeps the tanh
    on its means."""
    import json

    from vaecli.runtime import checkpoint
    from vaecli.config import DatasetConfig

    for likelihood, binarize, bound in (("bernoulli", "dynamic", True), ("gaussian", None, False),
                                        ("logistic", None, True)):
        model = build(from_flat("mlp", (1, 4, 4), latent_dim=2, hidden=[8], likelihood=likelihood, sigma=0.1))
        path = tmp_path / likelihood / "model.safetensors"
        path.parent.mkdir()
        checkpoint.save_model(path, model, DatasetConfig(name="mnist", binarize=binarize), seed=0, step=1, epoch=1)
        tensors, metadata = checkpoint.read_tensors(path)
        spec, dataset = flat_spec_json(model.spec), json.loads(metadata["vaecli.dataset"])  # a flat spec of earlier
        del spec["levels"], spec["dequantize"], spec["logistic_tanh_means"], dataset["dequantize"]
        metadata.update({"vaecli.model": json.dumps(spec), "vaecli.dataset": json.dumps(dataset)})
        checkpoint.save_tensors(path, tensors, metadata)
        loaded = checkpoint.load_model(path)
        assert loaded.model.measure.bound is bound and loaded.dataset.dequantize is False
        assert loaded.model.spec.data.levels == (2 if binarize else 256)
        assert loaded.model.spec.likelihood.tanh_means is (likelihood == "logistic")  # as it was trained
