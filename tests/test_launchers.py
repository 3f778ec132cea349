"""Sweeps through Hydra's own plugins (hydra-joblib-launcher, hydra-submitit-launcher,
hydra-optuna-sweeper), run for real through the CLI on tiny shapes: the same run folders,
sweep.json, table and --resume as the basic sweep; an Optuna search whose best trial is the best
run of its table; and the one-line refusals."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import assert_one_line_error, one_json, vae

TINY = ["dataset=shapes", "dataset.image_size=16", "dataset.rotations=2", "dataset.positions=4", "model.latent_dim=3",
        "model.hidden=[16]", "trainer.epochs=1", "trainer.sample_every=0", "trainer.batch_size=64"]

needs_joblib = pytest.mark.skipif(
    __import__("importlib").util.find_spec("hydra_plugins.hydra_joblib_launcher") is None,
    reason="hydra-joblib-launcher not installed (pip install 'vaecli[launchers]')")


def _names(result):
    return sorted(r["name"] for r in result["runs"])


def _basic_and(tmp_path, env, *plugin):
    basic = one_json(vae("train", "-m", *TINY, "beta=1,4", "--run-dir", str(tmp_path / "basic"), "--json", env=env))
    other = one_json(vae("train", "-m", *TINY, "beta=1,4", *plugin, "--run-dir", str(tmp_path / "plugin"), "--json",
                         env=env))
    return basic, other


@needs_joblib
@pytest.mark.slow  # ~15 s each: two sweeps and a resume in subprocesses
@pytest.mark.parametrize("plugin", [["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
                                    ["hydra/launcher=submitit_local"]],
                         ids=["joblib", "submitit_local"])
def test_a_launcher_sweep_leaves_what_the_basic_sweep_leaves_and_resumes(plugin, tmp_path, env):
    basic, other = _basic_and(tmp_path, env, *plugin)
    assert _names(basic) == _names(other) == ["0-beta=1", "1-beta=4"]
    assert other["failed"] == 0 and {r["state"] for r in other["runs"]} == {"finished"}
    for name in _names(basic):  # the same config, seed and data: the same run
        a = json.loads((tmp_path / "basic" / name / "summary.json").read_text())
        b = json.loads((tmp_path / "plugin" / name / "summary.json").read_text())
        assert a["test_elbo"] == pytest.approx(b["test_elbo"], abs=1e-4)
    manifest = json.loads((tmp_path / "plugin" / "sweep.json").read_text())
    assert [j["name"] for j in manifest["jobs"]] == ["0-beta=1", "1-beta=4"] and plugin[0] in manifest["arguments"]
    listed = one_json(vae("runs", str(tmp_path / "plugin"), "--json", env=env))
    assert _names(listed) == ["0-beta=1", "1-beta=4"]
    # resume: the finished job is skipped, the missing one trained again
    kept = (tmp_path / "plugin" / "0-beta=1" / "model.safetensors").stat().st_mtime_ns
    import shutil

    shutil.rmtree(tmp_path / "plugin" / "1-beta=4")
    again = one_json(vae("train", "--resume", str(tmp_path / "plugin"), "--json", env=env))
    assert {r["state"] for r in again["runs"]} == {"finished"} and _names(again) == ["0-beta=1", "1-beta=4"]
    assert (tmp_path / "plugin" / "0-beta=1" / "model.safetensors").stat().st_mtime_ns == kept


@needs_joblib
@pytest.mark.slow  # ~16 s
def test_ctrl_c_stops_a_joblib_sweep_and_resume_finishes_it(tmp_path, env):
    sweep_dir = tmp_path / "sweep"
    long = [*TINY, "trainer.epochs=60", "trainer.log_every=1000"]
    proc = subprocess.Popen([sys.executable, "-m", "vaecli", "train", "-m", *long, "seed=0,1", "hydra/launcher=joblib",
                             "hydra.launcher.n_jobs=2", "--run-dir", str(sweep_dir)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 240
    while not all((sweep_dir / name / "model.safetensors").exists() for name in ("0-seed=0", "1-seed=1")) \
            and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err
    assert f"vae train --resume {sweep_dir}" in err.strip().splitlines()[-1]
    result = one_json(vae("train", "--resume", str(sweep_dir), "--json", env=env, timeout=600))
    assert {r["state"] for r in result["runs"]} == {"finished"} and result["failed"] == 0


@needs_joblib
@pytest.mark.slow  # ~11 s
def test_an_optuna_search_reports_its_best_trial_and_resumes_its_study(tmp_path, env):
    sweep_dir = tmp_path / "search"
    search = ["beta=interval(0.5,4)", "trainer.lr=tag(log,interval(1e-4,1e-2))", "hydra/sweeper=optuna",
              "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.seed=0"]
    result = one_json(vae("train", "-m", *TINY, *search, "--run-dir", str(sweep_dir), "--json", env=env))
    assert result["jobs"] == 3 and result["failed"] == 0 and (sweep_dir / "optuna.db").is_file()
    best = result["best"]
    rows = {r["name"]: r for r in result["runs"]}
    top = max(rows.values(), key=lambda r: r["test_elbo"])
    assert best["run"] == top["name"] and best["value"] == pytest.approx(top["test_elbo"], abs=1e-3)
    assert best["optimize"] == "test_elbo" and set(best["params"]) == {"beta", "trainer.lr"}
    assert best["complete"] == 3
    again = one_json(vae("train", "--resume", str(sweep_dir), "--json", env=env))  # all 3 done: nothing new
    assert again["best"]["trials"] == 3 and _names(again) == _names(result)


@pytest.mark.parametrize("arguments, code, needle", [
    (["beta=1,4", "hydra/launcher=nope"], 2, "unknown hydra/launcher: 'nope'"),
    (["beta=1,4", "hydra/sweeper=grid"], 2, "unknown hydra/sweeper: 'grid'"),
    (["beta=1,4", "hydra/launcher=ray"], 2, "hydra/launcher=ray needs the"),
    (["nokey=interval(0,1)", "hydra/sweeper=optuna"], 2, "the search space does not compose"),
    (["beta=1,4", "hydra/launcher=joblib", "--optimize", "loss_of_nerve"], 2, "--optimize takes"),
    (["beta=1,4", "hydra/launcher=joblib", "hydra.launcher.n_jobz=2"], 2, "hydra.launcher.n_jobz"),
])
def test_bad_plugin_sweeps_are_one_line_refusals_and_write_nothing(arguments, code, needle, tmp_path, env):
    if "hydra/launcher=ray" in arguments and __import__("importlib").util.find_spec("hydra_plugins.hydra_ray_launcher"):
        pytest.skip("the ray launcher is installed here")
    if any("optuna" in a for a in arguments) and __import__("importlib").util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
        pytest.skip("hydra-optuna-sweeper not installed")
    result = vae("train", "-m", *TINY, *arguments, "--run-dir", str(tmp_path / "sweep"), env=env)
    assert_one_line_error(result, code, needle)
    assert not (tmp_path / "sweep").exists()


@needs_joblib
@pytest.mark.slow  # ~10 s
def test_a_search_can_optimize_the_iwae_bound_measured_after_training(tmp_path, env):
    sweep_dir = tmp_path / "search"
    result = one_json(vae("train", "-m", *TINY, "beta=interval(0.5,2)", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2",
                          "hydra.sweeper.sampler.seed=0", "--optimize", "iwae@8", "--run-dir", str(sweep_dir), "--json",
                          env=env))
    measured = {r["name"]: json.loads((sweep_dir / r["name"] / "optimize_iwae8.json").read_text())["iwae"]
                for r in result["runs"]}
    best = max(measured, key=measured.get)
    assert result["best"]["run"] == best and result["best"]["value"] == pytest.approx(measured[best])
    for r in result["runs"]:  # the bound with 8 samples is at least the ELBO (up to noise)
        assert measured[r["name"]] > r["test_elbo"] - 1.0
