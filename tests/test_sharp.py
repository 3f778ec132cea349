"""Sharp images (issue 33): the perceptual objective (L1/L2, MS-SSIM, LPIPS, the learned
log-variance, the PatchGAN and its adaptive weight), model=autoencoder_kl, dataset=photos, eval-recon,
encode/decode, and diffusers interop against the real diffusers package."""

import json
import math
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from vaecli.cli import run
from vaecli.config import load_config
from vaecli.training.trainer import fit

# 16 px grey shapes, a two-level autoencoder_kl (f = 2: a 1 x 8 x 8 latent)
TINY = ["dataset=shapes", "dataset.image_size=16", "dataset.scales=1", "dataset.rotations=2", "dataset.positions=4",
        "trainer.batch_size=32", "trainer.sample_every=0", "trainer.eval_batch_size=64", "model=autoencoder_kl",
        "model.ch=8", "model.ch_mult=[1,2]", "model.norm_groups=8", "model.z_channels=1", "likelihood=gaussian"]
GAN = ["objective=perceptual", "objective.adversarial=true", "objective.disc_start=2", "objective.disc_channels=8",
       "objective.disc_layers=2"]


def cli_json(capsys, *args):
    assert run([*args, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def refused(capsys, args, needle, code=2):
    assert run(args) == code
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def known_images(n=4, size=64, channels=3):
    """Crops of the astronaut photograph in scikit-image's wheel and a degraded copy of each."""
    from vaecli.data import photos

    x = photos.crops("train", size, n, seed=3).float() / 255
    x = x[:, :channels]
    noisy = (x + 0.08 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    blurred = torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    return x, noisy, blurred


# -- image comparisons -------------------------------------------------------------------------------


def test_ms_ssim_and_ssim_match_pytorch_msssim_on_photographs():
    pm = pytest.importorskip("pytorch_msssim")
    from vaecli import perceptual

    x, noisy, blurred = known_images()
    for other in (noisy, blurred):
        theirs = pm.ms_ssim(x, other, data_range=1, win_size=3, size_average=False)
        assert torch.allclose(perceptual.ms_ssim(x, other, win_size=3, levels=5), theirs, atol=1e-5)
        weights = torch.tensor(perceptual.MS_SSIM_WEIGHTS[:3])
        theirs3 = pm.ms_ssim(x, other, data_range=1, win_size=3, size_average=False,
                             weights=(weights / weights.sum()).tolist())
        assert torch.allclose(perceptual.ms_ssim(x, other, win_size=3, levels=3), theirs3, atol=1e-5)
        assert torch.allclose(perceptual.ssim(x, other), pm.ssim(x, other, data_range=1, size_average=False), atol=1e-5)
    big = torch.nn.functional.interpolate(x, size=192, mode="bilinear")
    assert torch.allclose(perceptual.ms_ssim(big, big.flip(-1)),  # 192 px: the package's own window and scales
                          pm.ms_ssim(big, big.flip(-1), data_range=1, size_average=False), atol=1e-5)


@pytest.mark.parametrize("size", [28, 32, 64])
def test_ms_ssim_works_on_small_images_and_orders_degradations(size):
    from vaecli import perceptual

    x, noisy, blurred = known_images(size=size)
    assert torch.allclose(perceptual.ms_ssim(x, x), torch.ones(len(x)), atol=1e-5)
    assert (perceptual.ms_ssim(x, blurred) < 1).all() and (perceptual.ms_ssim(x, noisy) < 1).all()
    win, levels = perceptual.ms_ssim_settings(size)
    assert levels >= 3 and size // 2 ** (levels - 1) >= win
    assert perceptual.laplacian_energy(blurred).mean() < 0.5 * perceptual.laplacian_energy(x).mean()
    assert perceptual.psnr(x, noisy).mean() == pytest.approx(-10 * math.log10((x - noisy).square().mean()), abs=0.5)


def test_lpips_offline_says_which_file_and_where(monkeypatch, tmp_path):
    from vaecli import perceptual
    from vaecli.errors import UsageError, VaeError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(VaeError, match=r"vgg16-397923af.pth.*Name or service.*put https://download.pytorch.org/"
                                       r"models/vgg16-397923af.pth into .*checkpoints/ or pass the file"):
        perceptual.LPIPS(None)
    with pytest.raises(UsageError, match="no such file"):
        perceptual.LPIPS(str(tmp_path / "missing.pth"))


@pytest.mark.slow
def test_lpips_loads_torchvisions_vgg16_layout(tmp_path):
    """A VGG16 checkpoint in torchvision's key layout (random weights) goes into lpips' five slices."""
    import torchvision

    from vaecli import perceptual

    net = perceptual.LPIPS(perceptual.RANDOM)  # untrained backbone, the package's linear heads: no download
    x, noisy, _ = known_images(2, 32, 1)
    d = net(x, noisy)
    assert d.shape == (2,) and (d > 0).all() and torch.allclose(net(x, x), torch.zeros(2), atol=1e-6)
    vgg = torchvision.models.vgg16(weights=None)
    torch.save(vgg.state_dict(), tmp_path / "vgg16.pth")
    net = perceptual.LPIPS(str(tmp_path / "vgg16.pth"))
    assert torch.equal(net.net.net.slice1[0].weight, vgg.features[0].weight)
    assert torch.equal(getattr(net.net.net.slice5, "28").bias, vgg.features[28].bias)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    from vaecli.errors import VaeError

    with pytest.raises(VaeError, match="not torchvision's VGG16"):
        perceptual.LPIPS(str(tmp_path / "other.pth"))
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(VaeError, match="not torchvision's VGG16"):
        perceptual.LPIPS(str(tmp_path / "garbage.pth"))


# -- the objective's parts ---------------------------------------------------------------------------


def test_adaptive_weight_against_a_hand_computation():
    from vaecli.objectives import adaptive_weight

    torch.manual_seed(0)
    w = torch.randn(3, 4, requires_grad=True)  # the "decoder's last layer": y = W x
    x, target, a = torch.randn(4), torch.randn(3), torch.randn(3)
    y = w @ x
    nll = (y - target).square().sum()
    g = -(a * y).sum()  # a generator term linear in y
    got = adaptive_weight(nll, g, w, disc_weight=0.5)
    grad_nll = 2 * torch.outer(y - target, x)  # d nll / dW
    grad_g = -torch.outer(a, x)
    hand = grad_nll.norm() / (grad_g.norm() + 1e-4) * 0.5
    assert got.item() == pytest.approx(hand.item(), rel=1e-6) and not got.requires_grad
    tiny = adaptive_weight((w @ x).sum() * 1e9, (w @ x).sum() * 1e-9, w, 1.0)  # clamped at 1e4
    assert tiny.item() == pytest.approx(1e4)


def test_the_patchgan_is_taming_transformers_nlayer_discriminator():
    from vaecli.objectives import patchgan

    torch.manual_seed(0)
    net = patchgan(3, 64, 3)
    convs = [m for m in net if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0], c.bias is not None) for c in convs] == [
        (3, 64, 2, True), (64, 128, 2, False), (128, 256, 2, False), (256, 512, 1, False), (512, 1, 1, True)]
    assert sum(p.numel() for p in net.parameters()) == (3 * 64 * 16 + 64) + 64 * 128 * 16 + 2 * 128 + \
        128 * 256 * 16 + 2 * 256 + 256 * 512 * 16 + 2 * 512 + (512 * 16 + 1)
    assert abs(convs[2].weight.std().item() - 0.02) < 0.002
    assert [type(m).__name__ for m in net][:2] == ["Conv2d", "LeakyReLU"] and net[1].negative_slope == 0.2
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 1, 2, 2)  # one logit per patch


def _trainer_stub(applied=True, lr=1e-3):
    return SimpleNamespace(device=torch.device("cpu"), dist=SimpleNamespace(world=1),
                           state=SimpleNamespace(applied=torch.tensor(applied)),
                           optimizer=SimpleNamespace(param_groups=[{"lr": lr}]))


def test_the_discriminator_and_the_log_variance_skip_a_rejected_step():
    from vaecli.objectives import LogVariance, PatchDiscriminator

    disc, logvar = PatchDiscriminator(1, 8, 2), LogVariance(0.0)
    for part in (disc, logvar):
        part.on_train_start(_trainer_stub())
    x = torch.rand(4, 1, 16, 16)
    before = [p.detach().clone() for p in disc.net.parameters()]
    disc.losses(x, x.flip(-1))
    disc.on_step_end(_trainer_stub(applied=False))
    assert all(torch.equal(a, b) for a, b in zip(before, disc.net.parameters()))
    g, metrics = disc.losses(x, x.flip(-1))
    assert metrics["disc_loss"] > 0 and g.requires_grad is False  # x^ carries no gradient here
    disc.on_step_end(_trainer_stub())
    assert not all(torch.equal(a, b) for a, b in zip(before, disc.net.parameters()))
    (3.0 * logvar.value).backward()  # the model's backward reaches s
    logvar.on_step_end(_trainer_stub(applied=False))
    assert logvar.value.item() == 0.0 and logvar.value.grad is None  # skipped, and its gradient cleared
    (3.0 * logvar.value).backward()
    logvar.on_step_end(_trainer_stub(lr=0.1))  # it follows the model optimizer's learning rate
    assert logvar.value.item() == pytest.approx(-0.1, rel=1e-3)


def test_the_perceptual_loss_is_the_recipes_sum(monkeypatch):
    """nll = sum over pixels of (|x - x^| + w p) / e^s + s, averaged; + kl_weight KL; a hand check on
    a model whose decoder mean and posterior are known."""
    from vaecli import objectives
    from vaecli.models import build, spec as specs

    torch.manual_seed(0)
    model = build(specs.from_flat("mlp", (1, 8, 8), latent_dim=2, hidden=[8], likelihood="gaussian", sigma=0.1))
    x = torch.rand(3, 1, 8, 8)
    settings = objectives.Perceptual("l1", "msssim", 0.5, 1e-3, objectives.LogVariance(0.7))
    torch.manual_seed(1)
    loss, metrics = objectives.perceptual(model, x, None, settings, 1.0, 0)
    torch.manual_seed(1)
    q = model.encode(x)
    x_hat = model.decode(q.rsample()).mean
    from vaecli.perceptual import ms_ssim

    rec = (x - x_hat).abs() + 0.5 * (1 - ms_ssim(x, x_hat)).view(-1, 1, 1, 1)
    nll = (rec / math.exp(0.7) + 0.7).sum((1, 2, 3)).mean()
    kl = (0.5 * (q.mean.square() + q.variance - 1 - q.variance.log())).sum(-1).mean()
    assert loss.item() == pytest.approx((nll + 1e-3 * kl).item(), rel=1e-5)
    assert metrics["nll"].item() == pytest.approx(nll.item(), rel=1e-5)
    loss.backward()
    assert settings.logvar.value.grad is not None  # s is trained by the model's loss


# -- training -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_adversarial_recipe_resumes_bit_exactly_with_its_discriminator(tmp_path):
    from safetensors.torch import load_file

    from conftest import whole_and_resumed

    whole, split = whole_and_resumed(tmp_path, ["dataset.image_size=16", "model=conv", "model.latent_dim=3",
                                                "likelihood=gaussian", "objective=perceptual",
                                                "objective.adversarial=true", "objective.disc_start=1",
                                                "objective.disc_channels=4", "objective.disc_layers=2"])
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    saved = load_file(str(tmp_path / "whole/trainer.safetensors"))
    resumed = load_file(str(tmp_path / "split/trainer.safetensors"))
    parts = {k: v for k, v in saved.items() if k.startswith(("callback.discriminator.", "callback.pixel_logvar."))}
    assert any(k.startswith("callback.discriminator.adam.") for k in parts)
    assert any("running_mean" in k for k in parts)  # BatchNorm's statistics travel too
    assert "callback.pixel_logvar.net.logvar" in parts and parts["callback.pixel_logvar.net.logvar"].item() != 0
    assert all(torch.equal(v, resumed[k]) for k, v in parts.items())


@pytest.mark.slow
def test_autoencoder_kl_trains_with_the_recipe_and_every_command_works(tmp_path, capsys):
    summary = fit(load_config(TINY + GAN + ["trainer.epochs=2"]), tmp_path / "run").to_dict()
    assert summary["latent_dim"] == 64 and summary["bound"] is False and "not a likelihood" in summary["measure"]
    terms = summary["objective_terms"]
    assert terms["d_weight"] > 0 and terms["disc_loss"] > 0 and terms["msssim"] < 1
    ckpt = str(tmp_path / "run")
    for args in (["sample", "--n", "4"], ["reconstruct", "--n", "2"], ["interpolate", "test:0", "test:1"],
                 ["traverse", "--dims", "2"]):
        out = cli_json(capsys, *args, "--ckpt", ckpt, "--out", str(tmp_path / f"{args[0]}.png"))
        assert Image.open(out["out"]).size[0] > 0
    fitted = cli_json(capsys, "fit-sampler", "--ckpt", ckpt, "sampler=gmm", "sampler.components=2")
    assert fitted["latent_dim"] == 64
    out = cli_json(capsys, "sample", "--ckpt", ckpt, "--sampler", "gmm", "--n", "4", "--out", str(tmp_path / "g.png"))
    assert Image.open(out["out"]).size[0] > 0
    iwae = cli_json(capsys, "eval-iwae", "--ckpt", ckpt, "--k", "3", "--n", "4")
    assert math.isfinite(iwae["iwae"]) and iwae["kl_exact"] is True
    recon = cli_json(capsys, "eval-recon", "--ckpt", ckpt, "--features", "pixels",
                     "--lpips-weights", "random")
    assert recon["n"] == 9 and 0 < recon["ssim"] <= 1 and recon["psnr"] > 5 and recon["lpips"] >= 0 and recon["rfid"] >= 0
    assert recon["sharpness"] > 0
    evals = [json.loads(line) for line in (tmp_path / "run/evals.jsonl").read_text().splitlines()]
    assert evals[-1]["kind"] == "recon" and evals[-1]["psnr"] == pytest.approx(recon["psnr"])
    runs = cli_json(capsys, "runs", str(tmp_path))
    assert runs["runs"][0]["recon"]["ssim"] == pytest.approx(recon["ssim"]) and runs["runs"][0]["bound"] is False


@pytest.mark.slow
def test_eval_recon_without_lpips_weights_still_gives_the_rest(tmp_path, capsys, monkeypatch):
    fit(load_config(TINY + ["trainer.epochs=1"]), tmp_path / "run")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    recon = cli_json(capsys, "eval-recon", "--ckpt", str(tmp_path / "run"), "--n", "8", "--features", "pixels")
    assert recon["lpips"] is None and "vgg16-397923af.pth" in recon["lpips_missing"] and recon["psnr"] > 0
    refused(capsys, ["eval-recon", "--ckpt", str(tmp_path / "run"), "--n", "100000", "--features", "pixels"],
            "--n 100000 is more than")


@pytest.mark.slow
def test_encode_then_decode_gives_the_reconstructions(tmp_path, capsys):
    fit(load_config(TINY + ["trainer.epochs=1"]), tmp_path / "run")
    ckpt, latents = str(tmp_path / "run"), tmp_path / "z.safetensors"
    out = cli_json(capsys, "encode", "--data", "test", "--n", "5", "--ckpt", ckpt, "--out", str(latents),
                   "--scale-images", "50")
    assert out["shape"] == [1, 8, 8] and out["latents"] == 5 and out["scaling_factor"] > 0
    from safetensors import safe_open

    with safe_open(str(latents), "pt") as f:
        z, meta = f.get_tensor("latents"), f.metadata()
    assert z.shape == (5, 1, 8, 8) and float(meta["vaecli.scaling_factor"]) == pytest.approx(out["scaling_factor"])
    assert json.loads(meta["vaecli.names"])[0] == "test:0"
    decoded = cli_json(capsys, "decode", str(latents), "--ckpt", ckpt, "--out", str(tmp_path / "dec") + "/")
    files = sorted((tmp_path / "dec").glob("*.png"))
    assert decoded["images"] == 5 and len(files) == 5
    from vaecli import load
    from vaecli.data import build as build_data
    from vaecli.config import resume_config

    model = load(ckpt)
    test = build_data(resume_config(tmp_path / "run", []).cfg.dataset, "test")
    want = model.reconstruct(test.to_float(test.images[:1], first=0))[0, 0]
    got = torch.from_numpy(np.asarray(Image.open(files[0]).convert("L"), dtype=np.float32) / 255)
    assert (got - want).abs().max() <= 1 / 255 + 1e-6  # one grey level: the PNG's rounding
    torch.save({}, tmp_path / "bad.pt")
    from safetensors.torch import save_file

    save_file({"latents": torch.zeros(2, 3, 4, 4)}, str(tmp_path / "wrong.safetensors"))
    refused(capsys, ["decode", str(tmp_path / "wrong.safetensors"), "--ckpt", ckpt], "this model's are (N, 1, 8, 8)")
    refused(capsys, ["decode", str(tmp_path / "bad.pt"), "--ckpt", ckpt], "not a safetensors latents file")
    refused(capsys, ["decode", str(tmp_path / "none.safetensors"), "--ckpt", ckpt], "no such latents file")
    refused(capsys, ["encode", "--ckpt", ckpt], "give IMAGES or --data")


# -- diffusers -----------------------------------------------------------------------------------------


def _diffusers():
    diffusers = pytest.importorskip("diffusers")
    warnings.filterwarnings("ignore")
    return diffusers


def test_export_to_diffusers_gives_the_same_encode_and_decode(tmp_path, capsys):
    diffusers = _diffusers()
    overrides = ["dataset=photos", "dataset.image_size=16", "dataset.crops=64", "dataset.test_crops=16",
                 "model=autoencoder_kl", "model.ch=8", "model.ch_mult=[1,2]", "model.norm_groups=8",
                 "likelihood=gaussian_learned", "trainer.epochs=1", "trainer.batch_size=32", "trainer.sample_every=0"]
    fit(load_config(overrides), tmp_path / "run")
    out = cli_json(capsys, "export", str(tmp_path / "run"), str(tmp_path / "hf"), "--scale-images", "40")
    theirs = diffusers.AutoencoderKL.from_pretrained(str(tmp_path / "hf")).eval()
    assert theirs.config.scaling_factor == pytest.approx(out["scaling_factor"])
    from vaecli import load

    ours = load(str(tmp_path / "run"))
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        q_theirs, q_ours = theirs.encode(x * 2 - 1).latent_dist, ours.encode(x)
        assert torch.allclose(q_theirs.mean.flatten(1), q_ours.mean, atol=1e-5)
        assert torch.allclose(q_theirs.std.flatten(1), q_ours.stddev, atol=1e-5)
        z = q_ours.mean
        assert torch.allclose(theirs.decode(z.reshape(-1, *ours.latent_shape)).sample, 2 * ours.decode(z).mean - 1,
                              atol=1e-5)
    capsys.readouterr()  # diffusers' own notes
    refused(capsys, ["export", str(tmp_path / "run"), str(tmp_path / "hf")], "exists")


@pytest.mark.slow
def test_a_run_starts_from_a_diffusers_folder_and_can_train_the_decoder_alone(tmp_path, capsys):
    diffusers = _diffusers()
    torch.manual_seed(0)
    model = diffusers.AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=[8, 16],
                                    down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                                    layers_per_block=1, latent_channels=2, norm_num_groups=8, sample_size=16)
    model.save_pretrained(str(tmp_path / "hf"))
    base = TINY[:8] + ["model=autoencoder_kl", "likelihood=gaussian", "trainer.epochs=1"]
    summary = fit(load_config(base + [f"model.pretrained={tmp_path / 'hf'}", "model.train_encoder=false"]),
                  tmp_path / "run").to_dict()
    assert summary["latent_dim"] == 2 * 8 * 8  # the folder's architecture, not conf/model's
    from vaecli import load

    ours, theirs = load(str(tmp_path / "run")).state_dict(), model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs if k.startswith(("encoder.", "quant_conv.")))
    assert not torch.equal(ours["decoder.conv_in.weight"], theirs["decoder.conv_in.weight"])
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet/config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    refused(capsys, ["train", *base, f"model.pretrained={tmp_path / 'unet'}", "--run-dir", str(tmp_path / "r2")],
            "holds a UNet2DModel, not an AutoencoderKL")
    refused(capsys, ["train", *base, "dataset.image_size=16", f"model.pretrained={tmp_path / 'hf'}",
                     "likelihood=logistic", "--run-dir", str(tmp_path / "r2")], "use likelihood=gaussian")
    refused(capsys, ["train", "dataset=photos", "dataset.image_size=16", "dataset.crops=8", "dataset.test_crops=4",
                     "model=autoencoder_kl", "likelihood=gaussian", f"model.pretrained={tmp_path / 'hf'}",
                     "--run-dir", str(tmp_path / "r2")], "in_channels")  # colour images, a grey model
    assert not (tmp_path / "r2").exists()


@pytest.mark.slow
def test_export_refuses_what_diffusers_cannot_hold(tmp_path, capsys):
    fit(load_config(TINY[:8] + ["model=conv", "model.hidden=[4]", "model.latent_dim=2", "trainer.epochs=1"]),
        tmp_path / "conv")
    refused(capsys, ["export", str(tmp_path / "conv"), str(tmp_path / "a")], "exports model=autoencoder_kl runs")
    fit(load_config(TINY + ["likelihood=logistic", "trainer.epochs=1"]), tmp_path / "logistic")
    refused(capsys, ["export", str(tmp_path / "logistic"), str(tmp_path / "b")], "decodes other parameters")
    fit(load_config(TINY + ["model.ch=4", "trainer.epochs=1"]), tmp_path / "groups")  # 4 channels, 8 groups
    refused(capsys, ["export", str(tmp_path / "groups"), str(tmp_path / "c")], "model.norm_groups <= 4")
    assert not any((tmp_path / name).exists() for name in "abc")


# -- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, needle", [
    (["model.z_channels=0"], "model.z_channels must be >= 1"),
    (["model.ch_mult=[1,2,2,2,2]", "dataset.image_size=24"], "is not divisible by 16"),
    (GAN[:1] + ["objective.disc_start=-1"], "objective.disc_start must be >= 0"),
    (GAN[:1] + ["objective.pixel=l3"], "objective.pixel must be l1 or l2"),
    (["model=ladder", "model.hidden=[8]"] + GAN[:1], "objective=perceptual compares the decoder's mean image"),
    (["model=vqvae", "model.hidden=[4,8]"] + GAN[:1], "model=vqvae has a point-mass posterior"),
    (["model=conv", "model.hidden=[4]", "model.decoder=pixelcnn"] + GAN[:1], "model.decoder=pixelcnn"),
    (["model=ae", "model.hidden=[8]"] + GAN[:1], "model=ae"),
    (GAN[:1] + ["beta=4"], "weights its KL by objective.kl_weight"),
])
def test_bad_input_is_one_line_and_leaves_no_run_folder(overrides, needle, tmp_path, capsys):
    base = [o for o in TINY if not (o.startswith("model.") and any(k.startswith("model=") for k in overrides))]
    refused(capsys, ["train", *base, *overrides, "--run-dir", str(tmp_path / "r")], needle)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_mnist_sized_images_that_the_levels_do_not_divide_are_refused_at_build(tmp_path, capsys):
    refused(capsys, ["train", *TINY, "model.ch_mult=[1,2,2,2]", "dataset.image_size=20",
                     "--run-dir", str(tmp_path / "r")], "not divisible by 8")


# -- photos ----------------------------------------------------------------------------------------


def test_photos_are_seeded_crops_and_the_test_photographs_are_held_out(monkeypatch):
    from vaecli.config import load_config as compose
    from vaecli.data import build, photos

    cfg = compose(["dataset=photos", "dataset.image_size=32", "dataset.crops=40", "dataset.test_crops=10"]).cfg.dataset
    train, again, test = build(cfg, "train", 0), build(cfg, "train", 0), build(cfg, "test", 0)
    assert train.images.shape == (40, 3, 32, 32) and test.images.shape == (10, 3, 32, 32)
    assert torch.equal(train.images, again.images) and not torch.equal(train.images, build(cfg, "train", 1).images)
    held = photos._pyramids("test")
    assert [tuple(p[-1].shape) for p in held] == [(3, 400, 600), (3, 427, 640)]  # coffee and flower, as stored
    assert len(photos._pyramids("train")) == len(photos.PHOTOS) - 2
    assert all(min(level.shape[1:]) == side for p in held for level, side in zip(p, photos.SCALES[:2]))
    # a split's crops come from that split's photographs only
    monkeypatch.setattr(photos, "_pyramids", lambda split: tuple(
        (torch.full((3, 128, 160), 255 if split == "test" else 0, dtype=torch.uint8),) for _ in range(3)))
    assert (photos.crops("test", 32, 20, 0) == 255).all() and (photos.crops("train", 32, 20, 0) == 0).all()
