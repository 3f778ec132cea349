"""Speed and scale features: mixed precision, torch.compile, channels_last, the eval-iwae
Bernoulli fast path, and torchrun DDP with 2 gloo processes on CPU."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from torch.distributions import Bernoulli, Independent

from vaecli.runtime import checkpoint, runs
from vaecli.evaluation import evaluate
from vaecli.config import load_config, resume_config
from vaecli.data import ImageSet
from vaecli.errors import UsageError
from vaecli.models import build, from_flat
from vaecli.training.trainer import fit

from conftest import assert_one_line_error, one_json, vae

SMALL = ["dataset=shapes", "dataset.scales=2", "dataset.rotations=2", "dataset.positions=6",
         "model.hidden=[32]", "model.latent_dim=4", "trainer.batch_size=32", "trainer.log_every=3",
         "trainer.sample_every=0"]


def train(run_dir, *extra, resume=False):
    composed = resume_config(run_dir, list(extra)) if resume else load_config(SMALL + list(extra))
    return fit(composed, run_dir, resume=resume).to_dict()


def weights(run_dir):
    return load_file(str(run_dir / checkpoint.MODEL_FILE))


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


# -- the Bernoulli log-likelihood fast path ------------------------------------------------------

@pytest.mark.parametrize("binary", [True, False])
def test_bernoulli_fast_log_prob_equals_torch_bernoulli_broadcast_over_samples(binary):
    torch.manual_seed(0)
    model = build(from_flat("mlp", (1, 6, 5), latent_dim=3, hidden=[8]))
    x = torch.rand(4, 1, 6, 5)
    x = (x > 0.5).float() if binary else x
    z = torch.randn(7, 4, 3)  # k=7 samples for each of 4 images: x broadcasts over k
    dist = model.decode(z)
    reference = Independent(Bernoulli(logits=dist.base_dist.logits, validate_args=False), 3).log_prob(x)
    assert dist.log_prob(x).shape == (7, 4)
    torch.testing.assert_close(dist.log_prob(x), reference, rtol=1e-5, atol=1e-4)


def test_eval_iwae_chunk_is_sized_for_the_device_and_the_bound_does_not_depend_on_it(monkeypatch):
    torch.manual_seed(0)
    model = build(from_flat("mlp", (1, 8, 8), latent_dim=3, hidden=[16]))
    data = ImageSet((torch.rand(10, 1, 8, 8) > 0.5).to(torch.uint8) * 255)
    sizes = []
    plain = model.log_weights
    monkeypatch.setattr(model, "log_weights", lambda x, k, y=None: sizes.append(k) or plain(x, k, y))
    big = evaluate.iwae_dataset(model, data, 64, batch_size=5)
    assert sizes == [64, 64]  # 5 x 64 x 64 elements fit one chunk: one call per batch
    sizes.clear()
    monkeypatch.setitem(evaluate.CHUNK_ELEMENTS, "cpu", 5 * 64 * 3)  # room for 3 samples per chunk
    small = evaluate.iwae_dataset(model, data, 64, batch_size=5)
    assert max(sizes) == 3 and sum(sizes) == 2 * 64
    # fresh draws, so equal only up to Monte Carlo noise (~0.01 nats here)
    assert small["iwae"] == pytest.approx(big["iwae"], abs=0.1)
    assert small["samples_per_s"] > 0


# -- precision, compile, channels_last -------------------------------------------------------

def test_precision_options_train_finite_fp32_checkpoints(tmp_path, monkeypatch):
    from vaecli.runtime import device as devices

    # bf16 training is refused on a CPU without bf16 units (CI machines vary): here it runs
    # regardless, for what it checks (autocast really ran, checkpoints stay fp32)
    real = devices.bf16_units
    monkeypatch.setattr(devices, "bf16_units", lambda device: real(device) or "test")
    base = train(tmp_path / "fp32", "trainer.epochs=1")
    for precision in ("bf16", "fp16"):
        run_dir = tmp_path / precision
        summary = train(run_dir, "trainer.epochs=1", f"trainer.precision={precision}")
        assert summary["precision"] == precision
        assert abs(summary["test_elbo"] - base["test_elbo"]) < 0.1 * abs(base["test_elbo"])
        w = weights(run_dir)
        assert all(v.dtype == torch.float32 for v in w.values()), "checkpoints stay fp32"
        # autocast really ran: low-precision matmuls move the weights off the fp32 path
        assert 0 < max_diff(w, weights(tmp_path / "fp32")) < 0.1
    state = checkpoint.load_trainer(tmp_path / "fp16" / checkpoint.TRAINER_FILE)
    assert state["scaler"]["scale"] > 0  # fp16 loss scale saved for resume
    assert checkpoint.load_trainer(tmp_path / "bf16" / checkpoint.TRAINER_FILE)["scaler"] is None
    resumed = train(tmp_path / "fp16", "trainer.epochs=2", resume=True)
    assert resumed["step"] == 2 * summary["step"] and torch.isfinite(torch.tensor(resumed["test_elbo"]))


def test_bad_precision_and_channels_last_values_are_usage_errors():
    with pytest.raises(UsageError, match="trainer.precision must be one of fp32, bf16, fp16"):
        load_config(["trainer.precision=fp8"])
    with pytest.raises(UsageError, match="trainer.channels_last must be one of auto, true, false"):
        load_config(["trainer.channels_last=maybe"])


def test_channels_last_conv_trains_like_the_default_layout(tmp_path):
    conv = ["model=conv", "model.hidden=[8, 16]", "trainer.epochs=1"]
    default = train(tmp_path / "nchw", *conv, "trainer.channels_last=false")
    nhwc = train(tmp_path / "nhwc", *conv, "trainer.channels_last=true")
    assert nhwc["test_elbo"] == pytest.approx(default["test_elbo"], rel=1e-3)
    assert max_diff(weights(tmp_path / "nchw"), weights(tmp_path / "nhwc")) < 1e-3
    loaded = checkpoint.load_model(tmp_path / "nhwc", device="cpu")  # a plain, loadable checkpoint
    assert loaded.step == nhwc["step"]


def test_compile_without_a_compiler_is_one_line_before_any_run_folder(tmp_path, data_root, monkeypatch, capsys):
    """experiment=bmnist_fast compiles by default: on a CPU machine without g++/clang++ it must
    say how to go on (trainer.compile=false), not fail inside torch at the first step."""
    from vaecli.cli import run as cli_run

    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setenv("VAECLI_DATA", str(data_root))
    run_dir = tmp_path / "run"
    assert cli_run(["train", "experiment=bmnist_fast", "--run-dir", str(run_dir)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "C++ compiler" in err[0] and "trainer.compile=false" in err[0], err
    assert not run_dir.exists()


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("g++") and not shutil.which("c++"), reason="torch.compile on CPU needs a C++ compiler")
def test_compile_trains_and_saves_the_unwrapped_module(tmp_path):
    eager = train(tmp_path / "eager", "trainer.epochs=1")
    compiled = train(tmp_path / "compiled", "trainer.epochs=1", "trainer.compile=true")
    w_eager, w_compiled = weights(tmp_path / "eager"), weights(tmp_path / "compiled")
    assert w_compiled.keys() == w_eager.keys()  # no "_orig_mod." prefixes
    assert not any("orig_mod" in k for k in w_compiled)
    # compiled kernels draw their own noise, so only the quality is comparable
    assert compiled["test_elbo"] == pytest.approx(eager["test_elbo"], rel=0.1)
    assert checkpoint.load_model(tmp_path / "compiled", device="cpu").step == compiled["step"]


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("g++") and not shutil.which("c++"), reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_training_resumes_bit_identically(tmp_path):
    """The ladder presets compile: stopping after epoch 1 and resuming must give the weights of an
    uninterrupted compiled run (Inductor's random numbers come from the RNG state the checkpoint
    keeps)."""
    straight = train(tmp_path / "straight", "trainer.epochs=2", "trainer.compile=true")
    train(tmp_path / "split", "trainer.epochs=1", "trainer.compile=true")
    resumed = train(tmp_path / "split", "trainer.epochs=2", "trainer.compile=true", resume=True)
    assert resumed["step"] == straight["step"] and resumed["test_elbo"] == straight["test_elbo"]
    assert max_diff(weights(tmp_path / "straight"), weights(tmp_path / "split")) == 0.0


# -- torchrun DDP --------------------------------------------------------------------------------

DDP = ["dataset=mnist", "model=ae", "model.hidden=[32]", "model.latent_dim=4", "trainer.log_every=1",
       "trainer.sample_every=0"]


def torchrun(*args, env, cwd, timeout=240):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "vaecli", *args]
    return subprocess.run(command, env=dict(env, OMP_NUM_THREADS="1"), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def records(run_dir, split="train"):
    lines = (run_dir / runs.METRICS_FILE).read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_with_twice_the_batch(tmp_path, env):
    """2 ranks x batch 16 with averaged gradients is one process with batch 32: the same
    weights, the same (rank-averaged) losses, one writer, and a plain checkpoint. A
    deterministic autoencoder makes the comparison exact up to float rounding."""
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    result = torchrun("train", *DDP, "trainer.epochs=1", "trainer.batch_size=16", "--run-dir", str(ddp),
                      "--json", env=env, cwd=tmp_path)
    summary = one_json(result)  # rank 0 alone prints
    assert summary["processes"] == 2
    one = one_json(vae("train", *DDP, "trainer.epochs=1", "trainer.batch_size=32", "--run-dir", str(single),
                       "--json", env=env, cwd=tmp_path))
    assert summary["step"] == one["step"] == 8  # 256 tiny-MNIST images / 32
    assert max_diff(weights(ddp), weights(single)) < 1e-4
    logged, reference = records(ddp), records(single)
    assert [r["step"] for r in logged] == [r["step"] for r in reference]  # one line per step, not two
    for a, b in zip(logged, reference):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in single.iterdir())
    assert not list(tmp_path.glob("runs"))  # no stray run folder from another rank

    # resume under torchrun continues from the checkpoint, again like the single process
    result = torchrun("train", "--resume", str(ddp), "trainer.epochs=2", "--json", env=env, cwd=tmp_path)
    assert one_json(result)["step"] == 16
    one_json(vae("train", "--resume", str(single), "trainer.epochs=2", "--json", env=env, cwd=tmp_path))
    assert max_diff(weights(ddp), weights(single)) < 1e-4

    # the checkpoint is an ordinary one: every command loads it without torchrun
    out = tmp_path / "recon.png"
    done = vae("reconstruct", "--ckpt", str(ddp), "--n", "4", "--out", str(out), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert out.is_file()


@pytest.mark.slow
def test_sigterm_to_a_torchrun_job_stops_every_rank_at_one_step_with_one_message(tmp_path, env):
    import signal
    import time

    run_dir = tmp_path / "job"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "vaecli",
               "train", *DDP, "trainer.epochs=500", "trainer.batch_size=16", "--run-dir", str(run_dir)]
    proc = subprocess.Popen(command, env=dict(env, OMP_NUM_THREADS="1"), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not (run_dir / "model.safetensors").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)  # as Ctrl-C or a scheduler's preemption signals the whole job
    _, err = proc.communicate(timeout=120)
    announced = [line for line in err.splitlines() if line.startswith("interrupted at step")]
    assert len(announced) == 1, err  # rank 0 alone
    assert f"resume with: torchrun --nproc-per-node 2 -m vaecli train --resume {run_dir}" in announced[0]
    step = int(announced[0].split()[3].rstrip(";"))
    assert checkpoint.load_model(run_dir).step == step
    assert checkpoint.load_trainer_for(run_dir, step)["step"] == step
    # the global batch is part of the run: one process may not continue a 2-process run
    refused = vae("train", "--resume", str(run_dir), "--json", env=env, cwd=tmp_path)
    assert_one_line_error(refused, 2, "trained by 2 process(es)", "torchrun --nproc-per-node 2")
    assert checkpoint.load_model(run_dir).step == step  # untouched by the refusal


@pytest.mark.slow
def test_factorvae_under_torchrun_trains_its_critic_on_every_rank(tmp_path, env):
    """The critic lives outside DDP: its gradients are averaged over the ranks by hand, and rank 0
    saves it with the model; a resume under torchrun continues it."""
    from safetensors.torch import load_file

    args = ["dataset=mnist", "model.hidden=[32]", "model.latent_dim=4", "trainer.log_every=2", "trainer.sample_every=0",
            "objective=factorvae", "objective.disc_width=16", "objective.disc_layers=2", "trainer.batch_size=16"]
    run_dir = tmp_path / "ddp"
    result = torchrun("train", *args, "trainer.epochs=1", "--run-dir", str(run_dir), "--json", env=env, cwd=tmp_path)
    summary = one_json(result)
    assert summary["processes"] == 2 and set(summary["objective_terms"]) == {"tc", "disc_loss", "disc_acc"}
    critic = {k: v for k, v in load_file(str(run_dir / "trainer.safetensors")).items() if "discriminator" in k}
    steps = [v for k, v in critic.items() if k.endswith(".step")]
    assert steps and all(int(s) == summary["step"] for s in steps)  # one critic step per training step
    result = torchrun("train", "--resume", str(run_dir), "trainer.epochs=2", "--json", env=env, cwd=tmp_path)
    assert one_json(result)["step"] == 2 * summary["step"]


@pytest.mark.slow
def test_the_perceptual_recipe_under_torchrun_trains_its_discriminator_and_log_variance(tmp_path, env):
    """objective=perceptual's parts (the PatchGAN, the learned log-variance) live outside DDP like
    FactorVAE's critic: averaged over the ranks by hand, saved by rank 0, continued by a resume."""
    from safetensors.torch import load_file

    args = ["dataset=mnist", "model.hidden=[32]", "model.latent_dim=4", "likelihood=gaussian", "trainer.log_every=2",
            "trainer.sample_every=0", "objective=perceptual", "objective.adversarial=true", "objective.disc_start=0",
            "objective.disc_layers=2", "objective.disc_channels=8", "trainer.batch_size=16"]
    run_dir = tmp_path / "ddp"
    summary = one_json(torchrun("train", *args, "trainer.epochs=1", "--run-dir", str(run_dir), "--json", env=env,
                                cwd=tmp_path))
    assert summary["processes"] == 2 and summary["bound"] is False
    assert summary["objective_terms"]["d_weight"] > 0 and summary["objective_terms"]["disc_loss"] > 0
    saved = load_file(str(run_dir / "trainer.safetensors"))
    for part in ("discriminator", "pixel_logvar"):
        steps = [v for k, v in saved.items() if k.startswith(f"callback.{part}.adam.") and k.endswith(".step")]
        assert steps and all(int(s) == summary["step"] for s in steps)  # one step of each per training step
    assert saved["callback.pixel_logvar.net.logvar"].item() != 0
    assert one_json(torchrun("train", "--resume", str(run_dir), "trainer.epochs=2", "--json", env=env,
                             cwd=tmp_path))["step"] == 2 * summary["step"]
