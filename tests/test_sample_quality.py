"""FID, KID and precision/recall (sample_quality.py) against independent computations and cases
with known answers, and vae eval-samples end to end (pixel features; Inception with random weights)."""

import json
import os

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, one_json, vae
from vaecli.evaluation import sample_quality as sq


def random_statistics(rng, d, n=200, shift=0.0):
    f = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + shift
    return f.mean(0), np.atleast_2d(np.cov(f, rowvar=False))


def test_frechet_distance_matches_scipy_sqrtm_on_the_same_statistics():
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(0)
    for d in (1, 5, 40):
        mu1, s1 = random_statistics(rng, d)
        mu2, s2 = random_statistics(rng, d, shift=0.7)
        root = sqrtm(s1 @ s2)
        expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(root).real
        assert sq.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-7, abs=1e-7)
    assert sq.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)
    # two Gaussians N(0, I) and N(m, 4I) in d dims: |m|^2 + d (1 + 4 - 2 * 2)
    d = 6
    assert sq.frechet_distance(np.zeros(d), np.eye(d), np.full(d, 0.5), 4 * np.eye(d)) == pytest.approx(d * 0.25 + d)


def test_our_statistics_agree_with_torch_fidelity_on_the_same_features():
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 16, generator=g, dtype=torch.float64)
    fake = 0.8 * torch.randn(250, 16, generator=g, dtype=torch.float64) + 0.3
    fid = fid_statistics_to_metric(fid_features_to_statistics(fake), fid_features_to_statistics(real), False)
    assert sq.frechet_distance(*sq.statistics(real), *sq.statistics(fake)) == pytest.approx(fid["frechet_inception_distance"], rel=1e-6)
    theirs = kid_features_to_metric(fake, real, kid_subsets=20, kid_subset_size=100, rng_seed=3, verbose=False,
                                    kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                                    kid_kernel_poly_coef0=1)
    ours = sq.kid(real, fake, subsets=20, subset_size=100, seed=3)
    assert ours == pytest.approx((theirs["kernel_inception_distance_mean"], theirs["kernel_inception_distance_std"]), rel=1e-9)
    pr = prc_features_to_metric(fake.float(), real.float(), prc_neighborhood=3, prc_batch_size=10000,
                                save_cpu_ram=False, verbose=False)
    assert sq.precision_recall(real, fake) == pytest.approx((pr["precision"], pr["recall"]))


def test_kid_is_unbiased_zero_for_two_samples_of_one_distribution_and_matches_the_direct_sum():
    g = torch.Generator().manual_seed(1)
    # direct U-statistic on a tiny example: sum over i != j of k(a_i, a_j) etc.
    a, b = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64) + 1

    def k(u, v):
        return (u @ v / 3 + 1) ** 3

    m = 6
    aa = sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    bb = sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    ab = sum(k(a[i], b[j]) for i in range(m) for j in range(m)) / (m * m)
    mean, std = sq.kid(a, b, subsets=3, subset_size=6)
    assert mean == pytest.approx(float(aa + bb - 2 * ab)) and std == pytest.approx(0.0, abs=1e-12)
    # unbiased: the mean over many pairs of samples from the same distribution is ~0 (a biased V-statistic is > 0)
    values = [sq.kid(torch.randn(40, 5, generator=g), torch.randn(40, 5, generator=g), subsets=1, subset_size=40)[0]
              for _ in range(200)]
    assert abs(np.mean(values)) < 3 * np.std(values) / np.sqrt(len(values))
    assert sq.kid(torch.randn(40, 5, generator=g), torch.randn(40, 5, generator=g) + 2, subsets=1)[0] > 10 * np.std(values)


def test_precision_and_recall_on_sets_with_known_answers():
    g = torch.Generator().manual_seed(2)
    real = torch.randn(100, 8, generator=g)
    assert sq.precision_recall(real, real.clone()) == (1.0, 1.0)
    assert sq.precision_recall(real, real + 100.0) == (0.0, 0.0)
    # samples covering half of the data (one of two far clusters): precision 1, recall 1/2
    two = torch.cat([torch.randn(100, 8, generator=g), torch.randn(100, 8, generator=g) + 50])
    half = torch.randn(100, 8, generator=g)
    precision, recall = sq.precision_recall(two, half)
    assert precision > 0.8 and 0.4 <= recall <= 0.5  # the far cluster is never covered: recall <= 1/2


def test_reference_is_a_fixed_subset_and_n_larger_than_the_split_is_refused():
    first = sq.reference_indices(500, 100, "test")
    assert torch.equal(first, sq.reference_indices(500, 100, "test")) and len(first.unique()) == 100
    with pytest.raises(Exception, match="more than the 500 images of the test split"):
        sq.reference_indices(500, 501, "test")


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("quality")
    e = dict(os.environ, VAECLI_DATA=str(work / "data"))
    result = vae("train", "dataset=shapes", "dataset.scales=2", "dataset.rotations=4", "dataset.positions=8",
                 "model.hidden=[32]", "model.latent_dim=4", "trainer.epochs=1", "trainer.sample_every=0",
                 "--run-dir", str(work / "run"), "--quiet", cwd=work, env=e)
    assert result.returncode == 0, result.stderr
    return work, e


@pytest.mark.slow  # several vae processes; the fast suite keeps its 5 minutes
def test_eval_samples_with_pixel_features_writes_figures_and_caches_the_reference(shapes_run):
    work, e = shapes_run
    run = str(work / "run")
    first = one_json(vae("eval-samples", "--ckpt", run, "--n", "40", "--features", "pixels", "--json", cwd=work, env=e))
    assert first["features"] == "pixels" and first["n"] == 40 and first["sampler"] == "prior"
    assert first["fid"] > 0 and first["kid_subset_size"] == 40 and 0 <= first["precision"] <= 1 and 0 <= first["recall"] <= 1
    cache = first["reference_cache"]
    assert cache and os.path.isfile(cache) and cache.startswith(str(work / "data"))
    again = one_json(vae("eval-samples", "--ckpt", run, "--n", "40", "--features", "pixels", "--json", cwd=work, env=e))
    assert again["fid"] == first["fid"] and again["reference_cache"] == cache  # same seed, same figures, cache reused
    recon = one_json(vae("eval-samples", "--ckpt", run, "--n", "40", "--features", "pixels", "--of", "reconstructions",
                         "--json", cwd=work, env=e))
    assert recon["of"] == "reconstructions" and recon["sampler"] is None and recon["fid"] != first["fid"]
    evals = [json.loads(line) for line in (work / "run" / "evals.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in evals] == ["samples"] * 3 and evals[-1]["of"] == "reconstructions"
    (row,) = one_json(vae("runs", str(work / "run"), "--json", cwd=work, env=e))["runs"]
    assert row["fid"]["fid"] == recon["fid"] and row["fid"]["of"] == "reconstructions"


@pytest.mark.slow  # subprocess-heavy (6-24 s): the fast suite stays near 5 minutes on 2 cores
def test_eval_samples_refuses_bad_input_in_one_line(shapes_run):
    work, e = shapes_run
    run = str(work / "run")
    before = (work / "run" / "evals.jsonl").read_text() if (work / "run" / "evals.jsonl").exists() else ""
    assert_one_line_error(vae("eval-samples", "--ckpt", run, "--n", "100000", "--features", "pixels", cwd=work, env=e),
                          2, "--n 100000 is more than the", "test split")
    assert_one_line_error(vae("eval-samples", "--ckpt", run, "--sampler", "gmm", "--features", "pixels", cwd=work, env=e),
                          2, "no gmm sampler", "vae fit-sampler")
    assert_one_line_error(vae("eval-samples", "--ckpt", run, "--features", "fancy", cwd=work, env=e), 2, "--features")
    offline = dict(e, TORCH_HOME=str(work / "empty-torch-home"), https_proxy="http://127.0.0.1:9",
                   HTTPS_PROXY="http://127.0.0.1:9")
    assert_one_line_error(vae("eval-samples", "--ckpt", run, "--n", "20", cwd=work, env=offline), 1,
                          "Inception-v3 weights", "weights-inception-2015-12-05", "--features pixels")
    after = (work / "run" / "evals.jsonl").read_text() if (work / "run" / "evals.jsonl").exists() else ""
    assert after == before


def random_inception_weights(path):
    """A randomly initialised (seeded) Inception-v3 in torch-fidelity's weights format: the real
    network's shapes and code path, without the download."""
    from unittest import mock

    from torch_fidelity import feature_extractor_inceptionv3 as fe

    torch.manual_seed(0)
    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: None), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(net.state_dict(), path)
    return path


@pytest.mark.slow
def test_eval_samples_with_a_random_inception_network(shapes_run):
    work, e = shapes_run
    weights = random_inception_weights(work / "inception-random.pth")
    out = one_json(vae("eval-samples", "--ckpt", str(work / "run"), "--n", "24", "--inception-weights", str(weights),
                       "--batch-size", "12", "--json", cwd=work, env=e))
    assert out["features"] == "inception" and out["feature_dims"] == 2048 and np.isfinite(out["fid"]) and out["fid"] > 0


class _Recording(sq.Pixels):
    """Pixel features that keep the uint8 images they were given."""

    def __init__(self):
        self.seen = []

    def __call__(self, images):
        self.seen.append(images.clone())
        return super().__call__(images)


@pytest.mark.parametrize("levels, draw, binary", [(2, None, True), (2, False, False), (256, None, False),
                                                  (256, True, True)])
def test_eval_samples_draws_binary_images_where_the_data_are_binary(tmp_path, levels, draw, binary):
    """Binarized data are compared with draws x ~ p(x|z) by default, not with grey Bernoulli means
    (which no binary image is near: recall ~ 0); --mean / --draw choose either way."""
    from vaecli.evaluation import samplers
    from vaecli.config import DatasetConfig
    from vaecli.data import ImageSet
    from vaecli.models import build, from_flat

    torch.manual_seed(0)
    images = (torch.rand(40, 1, 8, 8) > 0.5).to(torch.uint8) * 255
    data = ImageSet(images, levels=levels)
    model = build(from_flat("mlp", (1, 8, 8), latent_dim=2, hidden=[8])).eval()
    features = _Recording()
    cfg = DatasetConfig(name="shapes", root=str(tmp_path))
    result = sq.evaluate(model, samplers.Prior(), data, cfg, "test", 20, "samples", features, draw=draw)
    model_images = features.seen[-1]  # the reference images come first
    assert result["images"] == ("draws" if binary else "means")
    assert bool(((model_images == 0) | (model_images == 255)).all()) is binary
    again = _Recording()
    sq.evaluate(model, samplers.Prior(), data, cfg, "test", 20, "samples", again, draw=draw)
    assert torch.equal(again.seen[-1], model_images)  # seeded: the draws repeat
