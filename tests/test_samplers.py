"""Ex-post samplers (samplers.py, vae fit-sampler, sample/eval-samples --sampler): fit, save,
reload bit-exactly and sample; refusals of a mismatched sampler and of models they cannot serve."""

import os
import shutil

import pytest
import torch

from conftest import SMALL_SHAPES, assert_one_line_error, one_json, vae
from vaecli.evaluation import samplers
from vaecli.errors import UsageError


def two_clusters(n=600, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g) * 0.3
    z[: n // 2] += 4.0
    return z


def test_gmm_recovers_a_known_mixture_and_draws_reproducibly():
    z = two_clusters()
    gmm, stats = samplers.fit_gmm(z, components=2, covariance="full", max_iter=100, seed=0)
    assert stats["converged"] and gmm.weights.tolist() == pytest.approx([0.5, 0.5], abs=0.01)
    centres = sorted(gmm.means[:, 0].tolist())
    assert centres == pytest.approx([0.0, 4.0], abs=0.1)
    assert torch.allclose(gmm.scale_tril @ gmm.scale_tril.transpose(1, 2),
                          0.09 * torch.eye(3).expand(2, 3, 3), atol=0.03)
    a = gmm.draw(500, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, gmm.draw(500, generator=torch.Generator().manual_seed(1)))
    near = torch.minimum((a - 4).norm(dim=1), a.norm(dim=1))
    assert (near < 2).all()  # every draw lands in one of the two clusters, none in between
    assert gmm.draw(500, temperature=0.0).unique(dim=0).shape[0] == 2  # T = 0: the component means
    assert gmm.log_prob(torch.tensor([[2.0, 2.0, 2.0]])) < gmm.log_prob(torch.tensor([[4.0, 4.0, 4.0]])) - 10  # a hole


def test_auto_components_are_chosen_by_held_out_likelihood():
    # four tight clusters at the corners of a square: fewer than 4 components leave a held-out point
    # between the means (far worse), more only split clusters (no better); 1000 points in 2-d
    g = torch.Generator().manual_seed(0)
    corners = torch.tensor([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0], [6.0, 6.0]])
    z = corners[torch.arange(1000) % 4] + 0.3 * torch.randn(1000, 2, generator=g)
    gmm, stats = samplers.fit_gmm(z, components="auto", covariance="full", max_iter=100, seed=0)
    scores = stats["held_out_log_q_z"]
    assert stats["components"] == max(scores, key=scores.get) == gmm.means.shape[0]
    assert stats["components"] >= 4 and list(scores)[:3] == [1, 2, 5]
    assert scores[stats["components"]] > scores[2] + 1.0  # nats per point: the clusters are resolved
    # the search stops after samplers.PATIENCE candidates without a better score, and never tries a K
    # with fewer than MIN_PER_COMPONENT fitted points per component (900 / 20 = 45 at most)
    assert max(scores) <= 900 // samplers.MIN_PER_COMPONENT
    best_at = list(scores).index(stats["components"])
    assert len(scores) - 1 - best_at <= samplers.PATIENCE
    centres = sorted(map(tuple, gmm.means.round().tolist()))
    assert set(centres) >= {(0.0, 0.0), (6.0, 0.0), (0.0, 6.0), (6.0, 6.0)}
    with pytest.raises(UsageError, match="at least 2 latent vectors"):
        samplers.fit_gmm(z[:1], components="auto", covariance="full", max_iter=10, seed=0)


def test_auto_components_are_chosen_on_a_subset_of_many_latents_and_report_each_candidate(monkeypatch):
    monkeypatch.setattr(samplers, "SELECT_ON", 200)  # 180 fitted, 20 held out: K <= 180 / 20 = 9
    z = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0))
    seen = []
    gmm, stats = samplers.fit_gmm(z, components="auto", covariance="full", max_iter=50, seed=0,
                                  on_candidate=lambda k, score: seen.append((k, score)))
    assert list(stats["held_out_log_q_z"]) == [k for k, _ in seen] and max(k for k, _ in seen) <= 5
    assert dict(seen) == stats["held_out_log_q_z"] and gmm.means.shape[0] == stats["components"]


def test_auto_components_tries_one_component_on_too_few_latents():
    z = torch.randn(30, 2, generator=torch.Generator().manual_seed(0))
    _, stats = samplers.fit_gmm(z, components="auto", covariance="diag", max_iter=50, seed=0)
    assert stats["held_out_log_q_z"].keys() == {1} and stats["components"] == 1  # 2 x 20 > 27 fitted


def test_two_stage_learns_the_latents_and_its_gamma_shrinks():
    z = two_clusters(n=800, d=2)
    losses = []
    sampler, stats = samplers.fit_two_stage(z, [64, 64], epochs=30, lr=3e-3, batch_size=100, seed=0,
                                            on_epoch=lambda e, loss: losses.append(loss))
    assert losses[-1] < losses[0] - 0.3 and stats["gamma"] < 0.9  # gamma starts at 1
    draws = sampler.draw(4000, generator=torch.Generator().manual_seed(0)).detach()
    # z ~ p(z|u) p(u) matches the latents' first two moments (a constant decoder would not: the
    # draws would all be one point) ...
    assert torch.allclose(draws.mean(0), z.mean(0), atol=0.3)
    assert torch.allclose(draws.std(0), z.std(0), rtol=0.3)
    # ... and puts more of its mass on the two clusters than a Gaussian with those moments
    gaussian = torch.randn(4000, 2, generator=torch.Generator().manual_seed(1)) * z.std(0) + z.mean(0)

    def on_clusters(points):
        return (torch.minimum((points - 4.0).norm(dim=1), points.norm(dim=1)) < 1.0).float().mean()

    assert on_clusters(draws) > 1.2 * on_clusters(gaussian)


def test_samplers_refuse_models_with_discrete_codes_or_latent_groups():
    from vaecli import models
    from vaecli.config import load_config
    from vaecli.models import spec_from_config

    for overrides, needle in ((["model=vqvae"], "discrete codes"), (["model=ladder"], "latent groups"),
                              (["model.latent=categorical"], "discrete codes")):
        cfg = load_config(["dataset=shapes"] + overrides).cfg
        model = models.build(spec_from_config(cfg.model, cfg.likelihood, cfg.prior, (1, 32, 32), dataset_cfg=cfg.dataset))
        with pytest.raises(UsageError, match=needle):
            samplers.check_model(model)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two tiny shapes models (a VAE and an autoencoder) trained in-process."""
    from vaecli.config import load_config
    from vaecli.training.trainer import fit

    work = tmp_path_factory.mktemp("samplers")
    common = SMALL_SHAPES + ["dataset.positions=8", "model.latent_dim=3", "trainer.epochs=1"]
    fit(load_config(common), work / "vae")
    fit(load_config(common + ["model=ae", "model.hidden=[16]"]), work / "ae")
    return work


@pytest.mark.slow  # several vae processes; the fast suite keeps its 5 minutes
def test_fit_sampler_saves_a_sampler_that_reloads_bit_exactly_and_samples(two_runs, tmp_path):
    e = dict(os.environ)
    for name, extra in (("gmm", ["sampler.components=auto"]), ("gmm", ["sampler.components=3"]),
                        ("two_stage", ["sampler.epochs=2", "sampler.hidden=[16]"])):
        fitted = one_json(vae("fit-sampler", "--ckpt", str(two_runs / "ae"), f"sampler={name}", *extra, "--json",
                              cwd=tmp_path, env=e))
        assert fitted["sampler"] == name and fitted["out"].endswith(f"sampler.{name}.safetensors")
        if extra == ["sampler.components=auto"]:  # the file records the number chosen, which reloads
            scores = fitted["held_out_log_q_z"]
            assert fitted["components"] == int(max(scores, key=scores.get)) and fitted["config"]["components"] == "auto"
        from vaecli.runtime.checkpoint import load_model, read_tensors

        loaded = load_model(two_runs / "ae")
        sampler = samplers.load(name, loaded)
        tensors, _ = read_tensors(two_runs / "ae" / f"sampler.{name}.safetensors")
        assert all(torch.equal(sampler.state_dict()[k].cpu(), v) for k, v in tensors.items())
        outs = []
        for i in range(2):
            out = tmp_path / f"{name}{i}.safetensors"
            result = one_json(vae("sample", "--ckpt", str(two_runs / "ae"), "--sampler", name, "--n", "6",
                                  "--out", str(out), "--json", cwd=tmp_path, env=e))
            assert result["sampler"] == name
            outs.append(read_tensors(out)[0]["images"])
        assert outs[0].shape == (6, 1, 32, 32) and torch.equal(outs[0], outs[1])
        expected = sampler.images(loaded.model, 6, 1.0, torch.Generator().manual_seed(0), None)
        # the subprocess may run its GEMMs on another thread count (vaecli shares the cores between
        # vae processes), which reorders sums: a wrong draw differs by ~0.1, reordering by ~1e-7
        assert torch.allclose(outs[0], expected.clamp(0, 1), atol=1e-4)


@pytest.mark.slow  # subprocess-heavy (6-24 s): the fast suite stays near 5 minutes on 2 cores
def test_a_sampler_fitted_to_another_checkpoint_is_refused_and_a_missing_one_names_the_command(two_runs, tmp_path):
    e = dict(os.environ)
    assert_one_line_error(vae("sample", "--ckpt", str(two_runs / "vae"), "--sampler", "gmm", cwd=tmp_path, env=e),
                          2, "no gmm sampler", f"vae fit-sampler --ckpt {two_runs / 'vae'} sampler=gmm")
    one_json(vae("fit-sampler", "--ckpt", str(two_runs / "ae"), "sampler.components=2", "--json", cwd=tmp_path, env=e))
    other = tmp_path / "other"
    shutil.copytree(two_runs / "vae", other)
    shutil.copy(two_runs / "ae" / "sampler.gmm.safetensors", other)
    assert_one_line_error(vae("sample", "--ckpt", str(other), "--sampler", "gmm", cwd=tmp_path, env=e),
                          2, "was fitted to model.safetensors", "fit it again")
    assert not (other / "sample.png").exists()


def test_fit_sampler_bad_overrides_are_usage_errors_and_write_nothing(two_runs, tmp_path):
    e = dict(os.environ)
    before = sorted(p.name for p in (two_runs / "vae").iterdir())
    for args, needle in ((["sampler=flow"], "unknown sampler 'flow'"), (["sampler.components=0"], "sampler.components"),
                         (["sampler.components=many"], "a number >= 1 or auto"),
                         (["sampler.epochs=3"], "unknown key 'sampler.epochs'"), (["beta=2"], "fit-sampler takes")):
        assert_one_line_error(vae("fit-sampler", "--ckpt", str(two_runs / "vae"), *args, cwd=tmp_path, env=e), 2, needle)
    assert sorted(p.name for p in (two_runs / "vae").iterdir()) == before
