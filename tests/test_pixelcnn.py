"""The autoregressive decoder (models/autoregressive.py): the mask (a pixel's parameters depend on
no pixel at or after it), a normalised distribution, reproducible pixel-by-pixel draws, every
command, resume, and bad input."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import TINY, assert_one_line_error, one_json, vae, whole_and_resumed

from vaecli.config import load_config
from vaecli.models import build, from_flat
from vaecli.models.autoregressive import PixelCNN


def test_one_gated_3x3_layer_sees_six_pixels_above_and_one_to_the_left():
    """The receptive field docs/results/beyond-gaussian.md describes for the weak decoder (model.ar_layers=1,
    model.ar_kernel=3): the two rows above, three columns each, and the pixel to the left."""
    torch.manual_seed(0)
    net = PixelCNN(1, 4, 2, 1, 3, 8)
    x = torch.rand(1, 1, 7, 7, requires_grad=True)
    (grad,) = torch.autograd.grad(net(x, torch.randn(1, 4, 7, 7))[0, :, 4, 3].sum(), x)
    seen = {(int(i), int(j)) for i, j in (grad[0, 0].abs() > 0).nonzero()}
    assert seen == {(2, 2), (2, 3), (2, 4), (3, 2), (3, 3), (3, 4), (4, 2)}


@pytest.mark.parametrize("layers, kernel, channels", [(1, 3, 1), (3, 3, 1), (2, 5, 3)])
def test_no_output_depends_on_its_own_pixel_or_a_later_one(layers, kernel, channels):
    torch.manual_seed(0)
    net = PixelCNN(channels, 4, 2 * channels, layers, kernel, 8)
    h = w = 5
    x = torch.rand(1, channels, h, w, requires_grad=True)
    out = net(x, torch.randn(1, 4, h, w))
    for i, j in itertools.product(range(h), range(w)):
        (grad,) = torch.autograd.grad(out[0, :, i, j].sum(), x, retain_graph=True)
        seen = grad[0].abs().sum(0) > 0
        later = torch.arange(h * w).view(h, w) >= i * w + j
        assert not (seen & later).any(), (i, j)
    # and it sees something: the pixel just before (left, or the end of the row above)
    (grad,) = torch.autograd.grad(out[0, :, 2, 2].sum(), x)
    assert grad[0, :, 2, 1].abs().sum() > 0 and grad[0, :, 1, 2].abs().sum() > 0


def tiny_model(likelihood="bernoulli", shape=(1, 2, 2), **extra):
    torch.manual_seed(0)
    return build(from_flat("mlp", shape, latent_dim=2, hidden=[8], likelihood=likelihood, levels=2, decoder="pixelcnn",
                         ar_layers=2, ar_kernel=3, ar_channels=4, **extra)).eval()


def test_its_probabilities_of_every_binary_image_sum_to_one():
    model = tiny_model()
    z = torch.randn(1, 2)
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4))).view(16, 1, 2, 2)
    with torch.no_grad():
        log_p = model.decode(z.expand(16, -1)).log_prob(images)
    assert torch.logsumexp(log_p, 0).exp().item() == pytest.approx(1.0, abs=1e-5)
    assert model.measure.bound  # a Bernoulli per pixel on binary data, in any order


def test_pictures_are_drawn_pixel_by_pixel_and_repeat_with_a_seed():
    model = tiny_model(shape=(1, 4, 4))
    first = model.sample(6, generator=torch.Generator().manual_seed(3))
    again = model.sample(6, generator=torch.Generator().manual_seed(3))
    assert first.shape == (6, 1, 4, 4) and torch.equal(first, again) and set(first.unique().tolist()) <= {0.0, 1.0}
    logistic = tiny_model("logistic", shape=(3, 4, 4), mixtures=2)
    drawn = logistic.sample(2)
    assert torch.allclose(drawn * 255, (drawn * 255).round(), atol=1e-4)  # on the 8-bit grid
    assert model.draws_pixel_by_pixel and not build(from_flat("mlp", (1, 4, 4))).draws_pixel_by_pixel


def test_paths_through_latent_space_are_drawn_with_common_random_numbers():
    model = tiny_model(shape=(1, 4, 4))
    same = torch.zeros(5, 2)  # one latent five times: one image five times with common numbers
    common = model.decode_images(same, generator=torch.Generator().manual_seed(1), common=True)
    assert all(torch.equal(common[0], image) for image in common)
    independent = model.decode_images(same, generator=torch.Generator().manual_seed(1))
    assert not all(torch.equal(independent[0], image) for image in independent)
    # each image of a common draw is the image drawn alone with that seed
    z = torch.randn(3, 2)
    path = model.decode_images(z, generator=torch.Generator().manual_seed(2), common=True)
    seed = int(torch.randint(2**62, (1,), generator=torch.Generator().manual_seed(2)))
    for b in range(3):
        alone = model.decode_images(z[b:b + 1], generator=torch.Generator().manual_seed(seed))
        assert torch.equal(path[b:b + 1], alone)
    # a Bernoulli pixel drawn with a shared uniform is monotone in its probability: with p(x|z)
    # ignoring z (a collapsed decoder) every image of a path is the same
    collapsed = tiny_model(shape=(1, 4, 4))
    with torch.no_grad():
        for p in collapsed.parameters():
            p.zero_()  # every pixel probability 0.5 whatever z
    row = collapsed.decode_images(torch.randn(6, 2), generator=torch.Generator().manual_seed(0), common=True)
    assert all(torch.equal(row[0], image) for image in row)


@pytest.mark.slow  # real subprocess runs of every command (~25 s each): the fast suite keeps the maths tests
@pytest.mark.parametrize("model", [pytest.param([], id="mlp"),
                                   pytest.param(["model=ladder", "model.groups=2", "model.hidden=[16]"], id="ladder")])
def test_a_pixelcnn_decoder_through_every_command(env, tmp_path, model):
    run = tmp_path / "ar"
    ar = ["model.decoder=pixelcnn", "model.ar_layers=1", "model.ar_kernel=3", "model.ar_channels=4"]
    summary = one_json(vae("train", *TINY, *model, *ar, "dataset.limit=64", "--run-dir", str(run), "--json", env=env))
    assert summary["bound"] is False  # grey MNIST under a Bernoulli, autoregressive or not: still no bound
    assert [p.name for p in (run / "samples").iterdir()] == ["epoch_001.png"]  # the grid at the end
    bound = one_json(vae("eval-iwae", "--ckpt", str(run), "--k", "3", "--n", "4", "--json", env=env))
    assert bound["iwae"] >= bound["elbo"] - 3 * max(bound["elbo_se"], 1e-3)
    drawn = vae("sample", "--ckpt", str(run), "--n", "2", "--out", str(tmp_path / "s.png"), env=env)
    assert drawn.returncode == 0 and "pixel by pixel: 784 passes" in drawn.stderr
    path = vae("interpolate", "test:0", "test:1", "--steps", "3", "--ckpt", str(run), "--out", str(tmp_path / "i.png"),
               env=env)  # a path: one image at a time, the same random numbers for each
    assert path.returncode == 0 and "2352 passes of the network for 3 image(s), one image at a time" in path.stderr
    for command in (["reconstruct", "--n", "2", "--samples", "2"], ["interpolate", "test:0", "test:1", "--steps", "2"]):
        out = tmp_path / f"{command[0]}.png"
        one_json(vae(*command, "--ckpt", str(run), "--out", str(out), "--json", env=env))
        assert out.is_file()


def test_a_pixelcnn_decoder_resumes_bit_exactly(tmp_path):
    whole, split = whole_and_resumed(tmp_path, ["dataset.image_size=8", "model.decoder=pixelcnn", "model.ar_layers=1",
                                                "model.ar_kernel=3", "model.ar_channels=4"])
    assert all(torch.equal(whole[k], split[k]) for k in whole)

@pytest.mark.parametrize("overrides, needle", [
    (["model.decoder=pixelcnn", "model.ar_kernel=4"], "model.ar_kernel must be odd"),
    (["model.decoder=pixelcnn", "model.ar_layers=0"], "model.ar_layers must be >= 1"),
    (["model.decoder=transformer"], "model.decoder must be one of factorized, pixelcnn"),
    (["model=vqvae", "model.decoder=pixelcnn"], "unknown key 'model.decoder'"),
])
def test_bad_decoder_settings_are_refused_in_one_line(env, tmp_path, overrides, needle):
    assert_one_line_error(vae("train", *TINY, *overrides, "--run-dir", str(tmp_path / "r"), env=env), 2, needle)
    assert not (tmp_path / "r").exists()


def test_the_committed_rate_keeps_every_dimension_above_delta():
    """kl.delta (the delta-VAE's committed rate in its simplest form): whatever the encoder says,
    each dimension's KL to N(0, 1) is at least delta, so no decoder can make the posterior collapse."""
    torch.manual_seed(0)
    model = build(from_flat("mlp", (1, 4, 4), latent_dim=3, hidden=[8], delta=0.4))
    with torch.no_grad():
        model.head.weight.mul_(0)  # the would-be collapsed encoder: mu = 0, sigma as large as it may be
        model.head.bias[:3].fill_(0.0)
        model.head.bias[3:].fill_(30.0)
    x = torch.rand(5, 1, 4, 4)
    per_dim = model.terms(x)["kl_per_dim"]
    assert per_dim.min().item() >= 0.4 - 1e-4 and per_dim.max().item() == pytest.approx(0.4, abs=1e-3)
    assert model.kl(x).min().item() >= 3 * 0.4 - 1e-4
    from vaecli.errors import UsageError

    with pytest.raises(UsageError, match="kl.delta commits the rate"):  # no Gaussian posterior to commit
        load_config(["kl.delta=0.4", "model=ladder"])


# -- model.decoder=linear_ar: a masked dense layer over the pixels before each pixel ---------------

@pytest.mark.parametrize("shape, params", [((1, 4, 4), 1), ((3, 3, 3), 2)])
def test_linear_ar_sees_every_earlier_pixel_and_no_later_one(shape, params):
    from vaecli.models.autoregressive import MaskedLinear

    torch.manual_seed(0)
    net = MaskedLinear(shape, params)
    with torch.no_grad():
        net.weight.normal_()  # it starts at zero (the factorized decoder); any weights here
    c, h, w = shape
    x = torch.rand(1, *shape, requires_grad=True)
    out = net(x, torch.zeros(1, params * c, h, w))
    for i, j in itertools.product(range(h), range(w)):
        (grad,) = torch.autograd.grad(out[0, :, i, j].sum(), x, retain_graph=True)
        seen = grad[0].abs().sum(0) > 0
        assert torch.equal(seen, torch.arange(h * w).view(h, w) < i * w + j), (i, j)


def test_linear_ar_is_a_normalised_distribution_starting_from_the_factorized_decoder():
    torch.manual_seed(0)
    model = build(from_flat("mlp", (1, 2, 2), latent_dim=2, hidden=[8], levels=2, decoder="linear_ar")).eval()
    factorized = build(from_flat("mlp", (1, 2, 2), latent_dim=2, hidden=[8], levels=2)).eval()
    factorized.load_state_dict(model.state_dict(), strict=False)
    z = torch.randn(1, 2)
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4))).view(16, 1, 2, 2)
    with torch.no_grad():
        start = model.decode(z.expand(16, -1)).log_prob(images)
        assert torch.allclose(start, factorized.decode(z.expand(16, -1)).log_prob(images), atol=1e-6)
        for p in model.likelihood.network.parameters():
            p.normal_()
        log_p = model.decode(z.expand(16, -1)).log_prob(images)
    assert not torch.allclose(log_p, start)
    assert torch.logsumexp(log_p, 0).exp().item() == pytest.approx(1.0, abs=1e-5)
    assert model.draws_pixel_by_pixel and model.measure.bound
    drawn = model.sample(3, generator=torch.Generator().manual_seed(1))
    assert drawn.shape == (3, 1, 2, 2) and torch.equal(drawn, model.sample(3, generator=torch.Generator().manual_seed(1)))


def test_a_ladder_with_linear_ar_trains_and_bounds(tmp_path):
    from safetensors.torch import load_file

    from vaecli.runtime import runs
    from vaecli.training.trainer import fit

    summary = fit(load_config(["dataset=shapes", "dataset.image_size=16", "dataset.scales=1", "dataset.rotations=2",
                               "dataset.positions=4", "likelihood=bernoulli",
                               "model=ladder", "model.groups=2", "model.hidden=[32]", "model.latent_dim=4",
                               "model.decoder=linear_ar", "trainer.epochs=2", "trainer.sample_every=0"]),
                  tmp_path / "run")
    assert summary.model.startswith("ladder") and summary.test_elbo < 0 and summary.skipped_steps == 0
    weights = load_file(str(tmp_path / "run" / runs.MODEL_FILE))
    ar = weights["likelihood.network.weight"]
    assert ar.shape == (256, 256) and ar.abs().sum() > 0  # trained away from its zero start
    assert "likelihood.network.mask" not in weights  # the mask is rebuilt, not stored
