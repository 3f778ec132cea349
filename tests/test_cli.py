"""The `vae` command line, run as a real subprocess on tiny generated data."""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from conftest import TINY, assert_one_line_error, one_json, vae


def png_size(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.format, im.size


def test_help_and_version_do_not_import_torch():
    code = ("import sys; from vaecli.cli import run; rc = run(['--help']); "
            "rc2 = run(['train', '--help']); assert rc == rc2 == 0; "
            "print('torch' in sys.modules, 'hydra' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False False"
    version = vae("--version")
    assert version.returncode == 0 and version.stdout.startswith("vaecli ")


def test_train_json_summary_and_run_folder(trained_run):
    assert (trained_run / "model.safetensors").is_file() and (trained_run / "config.yaml").is_file()
    assert (trained_run / "samples" / "epoch_001.png").is_file()


def test_train_json_prints_exactly_one_object(env, tmp_path):
    result = vae("train", *TINY, "dataset.limit=64", "--run-dir", str(tmp_path / "r"), "--json", env=env, cwd=tmp_path)
    summary = one_json(result)
    assert {"test_elbo", "test_kl", "test_recon", "train_seconds", "img_per_s", "run_dir"} <= set(summary)
    assert summary["step"] == 2 and summary["test_elbo"] < 0


def test_print_config_prints_yaml_and_exits_zero(env):
    result = vae("train", "dataset=shapes", "beta=4", "--print-config", env=env)
    assert result.returncode == 0
    assert "beta: 4.0" in result.stdout and "name: shapes" in result.stdout


def test_bad_override_exits_2_with_one_line_listing_valid_keys(env):
    assert_one_line_error(vae("train", "trainer.epoch=3", env=env), 2, "unknown key 'trainer.epoch'", "epochs")
    assert_one_line_error(vae("train", "model=transformer", env=env), 2, "choose one of: ae, autoencoder_kl, conv, hvae, ladder, mlp, resnet")
    assert_one_line_error(vae("train", "beta=big", env=env), 2, "beta")
    assert_one_line_error(vae("sample", "--bogus", env=env), 2, "--bogus")


def test_missing_checkpoint_and_no_runs_are_clear_errors(env, tmp_path):
    assert_one_line_error(vae("sample", "--ckpt", str(tmp_path / "nope"), env=env), 2, "no checkpoint at")
    assert_one_line_error(vae("sample", env=env, cwd=tmp_path), 2, "no trained run under ./runs")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    assert_one_line_error(vae("eval-iwae", "--ckpt", str(tmp_path / "junk.safetensors"), env=env), 2,
                          "not a readable safetensors file")


def test_sample_writes_a_grid_and_defaults_to_the_latest_run(trained_run, env, tmp_path):
    out = tmp_path / "s" / "grid.png"  # a missing folder is created
    result = one_json(vae("sample", "--n", "9", "--temperature", "0.7", "--out", str(out), "--json",
                          cwd=trained_run.parent.parent, env=env))
    assert result["n"] == 9 and result["ckpt"].endswith("tiny/model.safetensors")
    fmt, (w, h) = png_size(out)
    z = result["zoom"]  # MNIST's 28 px shown at 4x by default: nearest neighbour, whole pixels
    assert z == 4 and fmt == "PNG" and (w, h) == (z * (3 * 28 + 4 * 2), z * (3 * 28 + 4 * 2))  # 3x3 grid, padding 2
    assert_one_line_error(vae("sample", "--ckpt", str(trained_run), "--temperature", "0", env=env), 2, "--temperature")


@pytest.mark.slow  # subprocess-heavy (6-24 s): the fast suite stays near 5 minutes on 2 cores
def test_sample_is_reproducible_with_a_seed(trained_run, env, tmp_path):
    for name in ("a", "b"):
        vae("sample", "--ckpt", str(trained_run), "--n", "4", "--seed", "3", "--out", str(tmp_path / f"{name}.png"), env=env)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


@pytest.mark.slow  # subprocess-heavy (6-24 s): the fast suite stays near 5 minutes on 2 cores
def test_reconstruct_test_images_and_files_of_any_mode(trained_run, env, tmp_path):
    out = tmp_path / "rec.png"
    result = one_json(vae("reconstruct", "--ckpt", str(trained_run), "--n", "4", "--out", str(out), "--json", env=env))
    assert result["n"] == 4 and len(result["images"]) == 4 and all(r["neg_elbo"] > 0 for r in result["images"])
    z = result["zoom"]
    assert png_size(out)[1] == (z * (4 * 28 + 5 * 2), z * (2 * 28 + 3 * 2))  # originals row above reconstructions row
    rgba = tmp_path / "big.png"
    Image.new("RGBA", (50, 40), (255, 0, 0, 128)).save(rgba)
    human = vae("reconstruct", str(rgba), "test:1", "--ckpt", str(trained_run), "--out", str(out), env=env)
    assert human.returncode == 0, human.stderr
    assert "converted 50x40 RGBA to 28x28 grey" in human.stderr and "-ELBO" in human.stdout


def test_pictures_zoom_gif_and_raw_outputs(trained_run, data_root, tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file

    from vaecli.cli import run

    monkeypatch.setenv("VAECLI_DATA", str(data_root))
    ckpt = ["--ckpt", str(trained_run)]

    def ok(*args: str) -> dict:  # in-process: the same main path, without a new interpreter each time
        assert run([*args, "--json"]) == 0, capsys.readouterr().err
        return json.loads(capsys.readouterr().out)

    one = ok("sample", *ckpt, "--n", "6", "--nrow", "2", "--zoom", "1", "--out", str(tmp_path / "g.png"))
    assert one["zoom"] == 1 and png_size(tmp_path / "g.png")[1] == (2 * 28 + 3 * 2, 3 * 28 + 4 * 2)  # 2 per row
    raw = ok("sample", *ckpt, "--n", "3", "--out", str(tmp_path / "each") + "/")
    assert sorted(p.name for p in (tmp_path / "each").iterdir()) == [f"sample_000{i}.png" for i in range(3)]
    assert png_size(tmp_path / "each" / "sample_0000.png")[1] == (28, 28) and raw["n"] == 3
    ok("sample", *ckpt, "--n", "3", "--out", str(tmp_path / "t.safetensors"))
    tensor = load_file(str(tmp_path / "t.safetensors"))["images"]
    assert tensor.shape == (3, 1, 28, 28) and 0 <= tensor.min() and tensor.max() <= 1
    gif = ok("interpolate", "test:0", "test:1", *ckpt, "--steps", "5", "--gif", "--out", str(tmp_path / "i.gif"))
    with Image.open(gif["out"]) as im:
        assert im.n_frames == 8 and im.size == (112, 112)  # there and back, 4x
    walk = ok("traverse", *ckpt, "--dims", "4", "--steps", "5", "--gif", "--out", str(tmp_path / "t.gif"))
    with Image.open(walk["out"]) as im:
        assert im.n_frames == 8 and im.size == (4 * (2 * 28 + 3 * 2),) * 2  # 4 dims in a 2x2 grid
    assert run(["interpolate", "test:0", "test:1", *ckpt, "--gif", "--out", str(tmp_path / "x.png")]) == 2
    assert "give --out a .gif name" in capsys.readouterr().err
    assert run(["sample", *ckpt, "--zoom", "0"]) == 2
    assert "--zoom must be >= 1" in capsys.readouterr().err
    default = vae("interpolate", "test:0", "test:1", *ckpt, "--steps", "3", "--gif", "--json", env={
        **os.environ, "VAECLI_DATA": str(data_root)})  # the default name, through the real entry point
    assert json.loads(default.stdout)["out"].endswith("interpolation.gif")


@pytest.mark.slow  # 14 s; the fast suite covers interpolate through the gif test above
def test_interpolate_lerp_and_slerp_strips(trained_run, env, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.jpg"
    Image.new("L", (28, 28), 0).save(a)
    Image.new("RGB", (64, 64), (200, 200, 200)).save(b)
    for flag in ([], ["--slerp"]):
        out = tmp_path / f"strip{len(flag)}.png"
        result = one_json(vae("interpolate", str(a), str(b), "--ckpt", str(trained_run), "--steps", "6",
                              "--out", str(out), "--json", *flag, env=env))
        assert result["method"] == ("slerp" if flag else "lerp") and result["steps"] == 6
        z = result["zoom"]
        assert png_size(out)[1] == (z * (6 * 28 + 7 * 2), z * (28 + 2 * 2))
    assert_one_line_error(vae("interpolate", str(a), str(tmp_path / "missing.png"), "--ckpt", str(trained_run), env=env),
                          2, "image not found")
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    assert_one_line_error(vae("interpolate", str(a), str(tmp_path / "bad.png"), "--ckpt", str(trained_run), env=env),
                          2, "not an image")
    assert_one_line_error(vae("interpolate", str(a), str(tmp_path), "--ckpt", str(trained_run), env=env),
                          2, "is a directory")
    assert_one_line_error(vae("interpolate", str(a), str(b), "--ckpt", str(trained_run), "--steps", "1", env=env),
                          2, "--steps must be >= 2")


def test_eval_iwae_json_has_the_documented_keys_and_a_tighter_bound(trained_run, env):
    result = one_json(vae("eval-iwae", "--ckpt", str(trained_run), "--k", "200", "--n", "32", "--batch-size", "7",
                          "--json", env=env))
    assert {"elbo", "iwae", "k", "n", "elbo_se", "iwae_se", "kl", "recon", "bits_per_dim", "bound", "measure",
            "nll", "mutual_info_saturated", "agg_posterior_kl_upper"} <= set(result)
    assert result["k"] == 200 and result["n"] == 32
    assert result["iwae"] >= result["elbo"] - 2 * result["elbo_se"]
    # grey MNIST under the textbook Bernoulli: no -log p(x) or bits/dim is claimed
    assert result["bound"] is False and result["nll"] is None and result["bits_per_dim"] is None
    assert "not a bound" in result["measure"] and result["kl"] > 0
    assert abs(result["elbo"] + result["recon"] + result["kl"]) < 1e-6 * abs(result["elbo"]) + 1e-6


def test_eval_iwae_human_table(trained_run, env):
    result = vae("eval-iwae", "--ckpt", str(trained_run), "--k", "10", "--n", "8", env=env)
    assert result.returncode == 0, result.stderr
    for needle in ("ELBO", "IWAE (k=10)", "KL", "recon", "cross-entropy on grey pixels, not a bound"):
        assert needle in result.stdout
    assert "bits/dim" not in result.stdout and "-log p(x) <=" not in result.stdout


@pytest.mark.slow  # subprocess-heavy (6-24 s): the fast suite stays near 5 minutes on 2 cores
def test_resume_via_cli_continues_and_refuses_model_changes(env, tmp_path):
    run = tmp_path / "r"
    one_json(vae("train", *TINY, "dataset.limit=64", "--run-dir", str(run), "--json", env=env))
    resumed = one_json(vae("train", "trainer.epochs=2", "--resume", str(run), "--json", env=env))
    assert resumed["step"] == 4 and resumed["epochs"] == 2
    assert_one_line_error(vae("train", "model.latent_dim=9", "--resume", str(run), env=env), 2, "when resuming")
    assert_one_line_error(vae("train", "--resume", str(tmp_path / "none"), env=env), 2, "not a vaecli run folder")
    assert_one_line_error(vae("train", *TINY, "--run-dir", str(run), env=env), 2, "already holds a run")
    assert_one_line_error(vae("train", *TINY, "--run-dir", str(run / "config.yaml"), env=env), 2, "is not a folder")


def test_missing_dataset_offline_exits_1_with_the_fix(tmp_path):
    env = dict(os.environ, VAECLI_DATA=str(tmp_path / "empty"))
    assert_one_line_error(vae("train", "trainer.epochs=1", env=env), 1, "MNIST not found under", "dataset=shapes")


def test_python_dash_m_entry_point_and_console_script_agree():
    script = os.path.join(os.path.dirname(sys.executable), "vae")
    if not os.path.exists(script):
        pytest.skip("console script not installed (not an installed package)")
    out = subprocess.run([script, "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == vae("--version").stdout


@pytest.mark.parametrize("signame, code", [
    ("SIGTERM", 143), pytest.param("SIGINT", 130, marks=pytest.mark.slow)])
def test_sigterm_during_training_checkpoints_and_the_run_resumes(tmp_path, signame, code):
    import signal
    import time

    run = tmp_path / "r"
    args = [sys.executable, "-m", "vaecli", "train", "dataset=shapes", "model.hidden=[32]",
            "model.latent_dim=4", "trainer.epochs=50", "trainer.batch_size=16", "trainer.log_every=1",
            "--run-dir", str(run)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "interrupted at step" in err
    assert "Traceback" not in err
    assert f"resume with: vae train --resume {run}" in err
    from vaecli.runtime import checkpoint

    step = checkpoint.load_model(run).step
    assert 0 < step == checkpoint.load_trainer(run / "trainer.safetensors")["step"]
    assert not list(run.glob(".*.tmp"))
    resumed = one_json(vae("train", "trainer.epochs=1", "--resume", str(run), "--json"))
    assert resumed["step"] >= step


def test_json_is_strict_even_when_a_figure_is_undefined(trained_run, data_root, capsys, monkeypatch):
    import json

    from vaecli.cli import run

    monkeypatch.setenv("VAECLI_DATA", str(data_root))
    assert run(["eval-iwae", "--ckpt", str(trained_run), "--k", "5", "--n", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert result["n"] == 1 and result["elbo_se"] is None and result["iwae_se"] is None


def test_unknown_device_is_a_usage_error(trained_run, env):
    assert_one_line_error(vae("sample", "--ckpt", str(trained_run), "--device", "tpu", env=env), 2,
                          "device must be one of auto, cpu, cuda, mps")
