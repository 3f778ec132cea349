"""VQ-VAE: the quantizer's maths against independent computations, the bound, bit-exact resume,
and every command on a tiny run."""

import json
import math
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vaecli.runtime import checkpoint
from vaecli.cli import run
from vaecli.config import load_config, resume_config
from vaecli.errors import UsageError
from vaecli.models import build, from_flat
from vaecli.models.quantize import VectorQuantizer
from vaecli.training.trainer import fit

TINY = ["dataset=shapes", "dataset.image_size=16", "dataset.scales=2", "dataset.rotations=2", "dataset.positions=4",
        "model=vqvae", "model.hidden=[8,16]", "model.code_dim=4", "model.codebook_size=16", "model.dead_after=3",
        "trainer.batch_size=16", "trainer.log_every=1", "trainer.sample_every=1", "trainer.eval_batch_size=64"]


def test_each_vector_goes_to_its_nearest_code():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 3, ema_decay=0).eval()
    grid = torch.randn(2, 3, 4, 5)
    codes, index = vq.quantize(grid)
    flat = grid.permute(0, 2, 3, 1).reshape(-1, 3)
    expected = torch.cdist(flat, vq.codebook.detach()).argmin(1)
    assert torch.equal(index.flatten(), expected)
    assert torch.equal(codes.permute(0, 2, 3, 1).reshape(-1, 3), vq.codebook.detach()[expected])


def test_the_gradient_passes_straight_through_the_rounding():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 3, ema_decay=0.99, dead_after=0).eval()
    grid = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = vq(grid)
    assert torch.allclose(out["codes"], vq.quantize(grid.detach())[0], atol=1e-6)  # forward: the codes
    weights = torch.randn_like(grid)
    (out["codes"] * weights).sum().backward()
    assert torch.equal(grid.grad, weights)  # backward: identity


def test_the_ema_update_moves_each_code_to_the_smoothed_mean_of_its_vectors():
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 2, ema_decay=0.9, dead_after=0, eps=1e-5)
    old_codes, old_sizes, old_sums = vq.codebook.clone(), vq.cluster_size.clone(), vq.code_sum.clone()
    grid = torch.randn(3, 2, 2, 2)
    index = vq(grid)["index"].flatten()
    flat = grid.permute(0, 2, 3, 1).reshape(-1, 2)
    sizes = 0.9 * old_sizes + 0.1 * torch.stack([(index == k).sum() for k in range(4)]).float()
    sums = 0.9 * old_sums + 0.1 * torch.stack([flat[index == k].sum(0) for k in range(4)])
    n = sizes.sum()
    smoothed = (sizes + 1e-5) / (n + 4 * 1e-5) * n
    assert torch.allclose(vq.codebook, sums / smoothed[:, None], atol=1e-6)
    assert not torch.allclose(vq.codebook, old_codes)


def test_a_code_unused_for_dead_after_steps_is_revived_from_the_batch():
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 2, ema_decay=0.99, dead_after=2)
    vq.codebook[3], vq.code_sum[3] = 1e6, 1e6  # far from every vector (the EMA keeps it there): never chosen
    grid = torch.randn(2, 2, 3, 3)
    vq(grid)
    assert vq.revived.item() == 0 and vq.idle_steps[3] == 1
    vq(grid)
    flat = grid.permute(0, 2, 3, 1).reshape(-1, 2)
    assert vq.revived.item() >= 1 and vq.idle_steps[3] == 0
    assert (vq.codebook[3] - flat).abs().sum(1).min() < 1e-6  # re-seeded at one of the vectors


def test_kmeans_initialisation_fits_the_first_batch_better_than_the_random_codebook():
    torch.manual_seed(0)
    grid = torch.randn(4, 2, 4, 4) * 3
    flat = grid.permute(0, 2, 3, 1).reshape(-1, 2)
    plain = VectorQuantizer(8, 2, dead_after=0).eval()
    fitted = VectorQuantizer(8, 2, dead_after=0, kmeans_init=True)
    fitted(grid)
    assert fitted.initialised.item() == 1
    error = {name: (flat - vq.quantize(grid)[0].permute(0, 2, 3, 1).reshape(-1, 2)).pow(2).sum().item()
             for name, vq in (("plain", plain), ("kmeans", fitted.eval()))}
    assert error["kmeans"] < 0.2 * error["plain"]


def test_the_bound_is_log_p_x_given_the_codes_minus_hw_log_k_for_every_k():
    torch.manual_seed(0)
    model = build(from_flat("conv", (1, 8, 8), hidden=[4], kind="vqvae", codebook_size=5, code_dim=2)).eval()
    x = (torch.rand(3, 1, 8, 8) > 0.5).float()
    with torch.no_grad():
        grid = model.encoder(x)
        flat = grid.permute(0, 2, 3, 1).reshape(-1, 2)
        codes = model.quantizer.codebook[torch.cdist(flat, model.quantizer.codebook).argmin(1)]
        logits = model.decoder(codes.view(3, 4, 4, 2).permute(0, 3, 1, 2))
        log_px = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
        log_w, _ = model.log_weights(x, 7)
    assert log_w.shape == (7, 3) and torch.allclose(log_w, (log_px - 16 * math.log(5)).expand(7, 3), atol=1e-4)
    assert torch.allclose(model.kl(x), torch.full((3,), 16 * math.log(5)))


def test_vqvae_config_rules():
    for override, needle in (("model.network=mlp", "conv or resnet"), ("objective=iwae", "point-mass"),
                             ("prior=mog", "its own prior"), ("beta=4", "constant"), ("model.ema_decay=1", "[0, 1)")):
        with pytest.raises(UsageError, match=re_escape(needle)):
            load_config(TINY + [override])


def re_escape(text):
    import re

    return re.escape(text)


def test_resume_is_bit_identical_with_ema_codebook_and_revival(tmp_path):
    fit(load_config(TINY + ["trainer.epochs=2"]), tmp_path / "whole")
    fit(load_config(TINY + ["trainer.epochs=1"]), tmp_path / "split")
    fit(resume_config(tmp_path / "split", ["trainer.epochs=2"]), tmp_path / "split", resume=True)
    whole, split = load_file(str(tmp_path / "whole/model.safetensors")), load_file(str(tmp_path / "split/model.safetensors"))
    assert whole.keys() == split.keys() and "quantizer.cluster_size" in whole
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    assert whole["quantizer.revived"].item() > 0  # revival ran, and drew the same vectors


def test_weight_averaging_averages_the_ema_codebook_and_resumes_exactly(tmp_path):
    """trainer.ema with a VQ-VAE: the model file holds the averaged codebook beside the averaged
    networks (not the live one), the trainer file the live one, and resuming stays bit-exact."""
    ema = ["trainer.ema=0.9"]
    fit(load_config(TINY + ema + ["trainer.epochs=2"]), tmp_path / "whole")
    fit(load_config(TINY + ema + ["trainer.epochs=1"]), tmp_path / "split")
    fit(resume_config(tmp_path / "split", ["trainer.epochs=2"]), tmp_path / "split", resume=True)
    whole, split = load_file(str(tmp_path / "whole/model.safetensors")), load_file(str(tmp_path / "split/model.safetensors"))
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    training = load_file(str(tmp_path / "whole/trainer.safetensors"))
    weights = sorted((k for k in training if k.startswith("callback.ema.weights.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    live = training[weights[-1]]  # the last averaged tensor: the codebook buffer, after every parameter
    assert live.shape == whole["quantizer.codebook"].shape
    assert not torch.equal(live, whole["quantizer.codebook"])  # the file's codebook is the average


def cli_json(capsys, *args):
    assert run([*args, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_every_command_on_a_tiny_vqvae_run(tmp_path, capsys):
    summary = cli_json(capsys, "train", *TINY, "trainer.epochs=1", "--run-dir", str(tmp_path / "run"))
    ckpt = str(tmp_path / "run")
    assert summary["codebook"]["size"] == 16 and 1 <= summary["codebook"]["perplexity"] <= 16
    train_lines = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert {"perplexity", "dead_codes", "revived", "aux_loss"} <= set(train_lines[0])
    assert not (tmp_path / "run/samples").exists()  # no prior to draw a grid from
    assert run(["sample", "--ckpt", ckpt]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no prior over its code grid" in err[0]
    recon = cli_json(capsys, "reconstruct", "--ckpt", ckpt, "--n", "3", "--out", str(tmp_path / "r.png"))
    assert recon["n"] == 3 and recon["mean_neg_elbo"] > 0
    for flag in ([], ["--slerp"]):
        strip = cli_json(capsys, "interpolate", "test:0", "test:1", "--ckpt", ckpt, "--steps", "4", *flag,
                         "--out", str(tmp_path / "i.png"))
        assert Image.open(strip["out"]).size == (strip["zoom"] * (4 * 16 + 5 * 2), strip["zoom"] * (16 + 2 * 2))
    bound = cli_json(capsys, "eval-iwae", "--ckpt", ckpt, "--k", "1,5", "--n", "8")
    assert bound["iwae_by_k"]["1"]["iwae"] == pytest.approx(bound["iwae_by_k"]["5"]["iwae"])  # k changes nothing
    assert bound["kl"] == pytest.approx(16 * math.log(16)) and bound["mutual_info"] is None
    assert 1 <= bound["perplexity"] <= 16 and bound["bound"] is True and bound["bits_per_dim"] > 0  # shapes: logistic
    assert abs(bound["elbo"] + bound["recon"] + bound["kl"]) < 1e-4
    traversed = cli_json(capsys, "traverse", "--ckpt", ckpt, "--dims", "2", "--out", str(tmp_path / "t.png"))
    assert traversed["ordered_by"] == "entropy of the codes at each grid position" and len(traversed["dims"]) == 2
    assert Image.open(traversed["out"]).size[1] == traversed["zoom"] * (2 * 16 + 3 * 2)  # one row per position
    assert traversed["scores"][0] >= traversed["scores"][1] and max(traversed["dims"]) < 16
    plot = cli_json(capsys, "latent-plot", "--ckpt", ckpt, "--n", "40", "--out", str(tmp_path / "l.png"))
    assert plot["method"] == "pca" and plot["latent_dim"] == 4 * 4 * 4
    loaded = checkpoint.load_model(ckpt)
    assert loaded.model.latent_dim == 64 and loaded.model.encode(torch.zeros(1, 1, 16, 16)).mean.shape == (1, 64)


# -- stage two: the prior over codes ------------------------------------------------------------

from vaecli.runtime.distributed import resume_command  # noqa: E402
from vaecli.models.code_prior import CodePrior, PriorSpec  # noqa: E402

PRIOR = ["trainer.epochs=1", "code_prior.width=16", "code_prior.layers=1", "code_prior.heads=2"]


def test_the_prior_never_sees_a_code_at_or_after_the_one_it_predicts():
    torch.manual_seed(0)
    prior = CodePrior(PriorSpec(7, (3, 4), width=16, layers=2, heads=2)).eval()
    codes = torch.randint(0, 7, (2, 12))
    base = prior.logits(codes)
    for j in range(12):
        changed = codes.clone()
        changed[:, j] = (changed[:, j] + 1) % 7
        logits = prior.logits(changed)
        assert torch.equal(logits[:, :j + 1], base[:, :j + 1])  # position i sees codes < i only
        if j < 11:
            assert not torch.allclose(logits[:, j + 1:], base[:, j + 1:])


def test_sampling_draws_each_code_from_the_conditional_that_log_prob_scores():
    torch.manual_seed(0)
    prior = CodePrior(PriorSpec(5, (2, 3), width=16, layers=1, heads=2)).eval()
    grid = prior.sample(4, generator=torch.Generator().manual_seed(1))
    assert grid.shape == (4, 2, 3) and grid.max() < 5
    codes = grid.flatten(1)
    stepwise = sum(torch.log_softmax(prior.logits(codes[:, :i + 1])[:, i], -1).gather(1, codes[:, i:i + 1]).squeeze(1)
                   for i in range(6))
    assert torch.allclose(prior.log_prob(grid), stepwise, atol=1e-5)
    assert torch.equal(prior.sample(4, generator=torch.Generator().manual_seed(1)), grid)  # reproducible
    cold = prior.sample(64, temperature=1e-4, generator=torch.Generator().manual_seed(2))
    assert (cold == cold[0]).all()  # T -> 0 is the argmax path


def test_the_resume_command_of_each_stage():
    assert resume_command("runs/x", 1) == "vae train --resume runs/x"
    assert resume_command("runs/x", 1, "prior") == "vae train-prior --ckpt runs/x --resume"
    assert resume_command("runs/x", 2, "prior") == "torchrun --nproc-per-node 2 -m vaecli train-prior --ckpt runs/x --resume"


@pytest.fixture(scope="module")
def vq_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("vq") / "run"
    fit(load_config(TINY + ["trainer.epochs=2"]), run_dir)
    return run_dir


def one_error(capsys, argv, code, needle):
    assert run(argv) == code, argv
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], lines


def test_train_prior_then_sample_and_a_tighter_bound(vq_run, tmp_path, capsys):

    run_dir = tmp_path / "run"
    shutil.copytree(vq_run, run_dir)
    one_error(capsys, ["sample", "--ckpt", str(run_dir)], 2, "vae train-prior")
    uniform = cli_json(capsys, "eval-iwae", "--ckpt", str(run_dir), "--k", "1", "--n", "16")
    assert uniform["code_prior"] == "uniform"
    summary = cli_json(capsys, "train-prior", "--ckpt", str(run_dir), *PRIOR)
    assert summary["test_bound"] > summary["uniform_bound"] and summary["step"] > 0
    assert (run_dir / "prior.safetensors").is_file() and (run_dir / "prior_samples/epoch_001.png").is_file()
    lines = [json.loads(line) for line in (run_dir / "prior.metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["split"] == "test" and "nll" in lines[0]
    grid = cli_json(capsys, "sample", "--ckpt", str(run_dir), "--n", "4", "--temperature", "0.7")
    assert Image.open(grid["out"]).size[0] > 0
    learned = cli_json(capsys, "eval-iwae", "--ckpt", str(run_dir), "--k", "1", "--n", "16")
    assert learned["code_prior"] == "learned" and learned["iwae"] > uniform["iwae"]
    assert learned["recon"] == pytest.approx(uniform["recon"])  # the same codes, a better prior
    model = checkpoint.load_model(run_dir).model
    assert model.can_sample and model.sample(2).shape == (2, 1, 16, 16)  # vaecli.load gives a sampler
    one_error(capsys, ["train-prior", "--ckpt", str(run_dir), *PRIOR], 2, "already has a prior")


def test_prior_resume_is_bit_identical(vq_run, tmp_path, capsys):

    for name in ("whole", "split"):
        shutil.copytree(vq_run, tmp_path / name)
    cli_json(capsys, "train-prior", "--ckpt", str(tmp_path / "whole"), *PRIOR[1:], "trainer.epochs=2")
    cli_json(capsys, "train-prior", "--ckpt", str(tmp_path / "split"), *PRIOR[1:], "trainer.epochs=1")
    cli_json(capsys, "train-prior", "--ckpt", str(tmp_path / "split"), "--resume", "trainer.epochs=2")
    whole = load_file(str(tmp_path / "whole/prior.safetensors"))
    split = load_file(str(tmp_path / "split/prior.safetensors"))
    assert all(torch.equal(whole[k], split[k]) for k in whole)


def test_bad_inputs_of_the_prior_stage(vq_run, tmp_path, capsys):

    run_dir = tmp_path / "run"
    shutil.copytree(vq_run, run_dir)
    one_error(capsys, ["train-prior", "--ckpt", str(run_dir), "--resume"], 2, "has no prior to resume")
    one_error(capsys, ["train-prior", "--ckpt", str(run_dir), "model.codebook_size=8"], 2, "cannot change model")
    cli_json(capsys, "train-prior", "--ckpt", str(run_dir), *PRIOR)
    fit(resume_config(run_dir, ["trainer.epochs=3"]), run_dir, resume=True)  # the VQ-VAE moves on
    one_error(capsys, ["sample", "--ckpt", str(run_dir)], 2, "was trained on the codes at step")
    other = tmp_path / "other"  # a prior copied from another run at the same step
    fit(load_config(TINY + ["trainer.epochs=2", "seed=1"]), other)
    shutil.copy(run_dir / "prior.safetensors", other)
    one_error(capsys, ["sample", "--ckpt", str(other)], 2, "of another VQ-VAE")
    vae_run = tmp_path / "vae"
    fit(load_config(TINY[:5] + ["model.hidden=[8]", "model.latent_dim=2", "trainer.epochs=1"]), vae_run)
    one_error(capsys, ["train-prior", "--ckpt", str(vae_run)], 2, "for VQ-VAE runs")


def test_a_conditional_vqvae_and_prior_sample_one_row_per_class(tmp_path, capsys):
    run_dir = tmp_path / "run"
    fit(load_config(TINY + ["trainer.epochs=1", "model.conditional=true"]), run_dir)
    cli_json(capsys, "train-prior", "--ckpt", str(run_dir), *PRIOR)
    grid = cli_json(capsys, "sample", "--ckpt", str(run_dir), "--n", "2", "--out", str(tmp_path / "all.png"))
    assert grid["label"] == "all" and grid["n"] == 6  # 3 shapes x 2
    one = cli_json(capsys, "sample", "--ckpt", str(run_dir), "--n", "3", "--label", "1", "--out", str(tmp_path / "1.png"))
    assert one["label"] == 1 and one["n"] == 3


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("g++") and not shutil.which("c++"), reason="torch.compile on CPU needs a C++ compiler")
def test_compile_trains_a_vqvae_like_eager(tmp_path):
    eager = fit(load_config(TINY + ["trainer.epochs=1"]), tmp_path / "eager").to_dict()
    compiled = fit(load_config(TINY + ["trainer.epochs=1", "trainer.compile=true"]), tmp_path / "compiled").to_dict()
    w_eager, w_compiled = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("eager", "compiled"))
    assert w_compiled.keys() == w_eager.keys()
    assert compiled["test_recon"] == pytest.approx(eager["test_recon"], rel=0.1)
    assert compiled["codebook"]["revived"] > 0  # the buffer updates ran under compile


@pytest.mark.slow
def test_both_stages_under_torchrun_with_two_gloo_processes(tmp_path):
    import os
    import subprocess
    import sys

    def torchrun(*args):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   "-m", "vaecli", *args]
        return subprocess.run(command, env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)

    run_dir = tmp_path / "run"
    done = torchrun("train", *TINY, "trainer.epochs=1", "--run-dir", str(run_dir), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["processes"] == 2
    done = torchrun("train-prior", "--ckpt", str(run_dir), *PRIOR, "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["processes"] == 2 and math.isfinite(summary["test_bound"])
    steps = [json.loads(line)["step"] for line in (run_dir / "prior.metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == summary["step"]  # rank 0 alone writes
    model = checkpoint.load_model(run_dir).model  # an ordinary checkpoint pair, loaded without torchrun
    assert model.can_sample and model.sample(2).shape == (2, 1, 16, 16)
