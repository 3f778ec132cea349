"""Experiment management: sweeps (vae train -m), the runs table (vae runs), the TensorBoard
logger and shell completion, each through the real CLI in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import TINY, assert_one_line_error, one_json, vae
from vaecli.experiments import sweep

SWEEP = [*TINY, "trainer.epochs=2"]


def finished_runs(result: dict) -> dict[str, dict]:
    return {row["name"]: row for row in result["runs"]}


# -- sweeps ----------------------------------------------------------------------------------------


@pytest.mark.slow  # subprocess-heavy (6-24 s): the fast suite stays near 5 minutes on 2 cores
def test_sweep_trains_every_combination_in_its_own_folder_and_reports_one_table(tmp_path, env):
    sweep_dir = tmp_path / "runs" / "betas"
    result = one_json(vae("train", "-m", "beta=1,4", "seed=0,1", *SWEEP, "--run-dir", str(sweep_dir), "--json",
                          cwd=tmp_path, env=env))
    rows = finished_runs(result)
    assert list(rows) == ["0-beta=1,seed=0", "1-beta=1,seed=1", "2-beta=4,seed=0", "3-beta=4,seed=1"]
    assert result["failed"] == 0 and result["jobs"] == 4
    for name, row in rows.items():
        assert row["state"] == "finished", row
        assert row["epoch"] == row["epochs"] == 2
        assert row["test_elbo"] < 0 and row["test_kl"] >= 0 and row["active_units"] is not None
        config = (sweep_dir / name / "config.yaml").read_text()
        beta, seed = name.split("-", 1)[1].replace("beta=", "").replace("seed=", "").split(",")
        assert f"beta: {float(beta)}" in config and f"seed: {seed}" in config
    # seeds give different models, the same seed with another beta starts from the same weights
    w = {name: load_file(str(sweep_dir / name / "model.safetensors")) for name in rows}
    key = next(iter(w["0-beta=1,seed=0"]))
    assert not (w["0-beta=1,seed=0"][key] == w["1-beta=1,seed=1"][key]).all()
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    assert [job["overrides"][:2] for job in manifest["jobs"]] == [
        ["beta=1", "seed=0"], ["beta=1", "seed=1"], ["beta=4", "seed=0"], ["beta=4", "seed=1"]]

    # the human table names every run and its figures; the sweep's default folder is runs/<time>-sweep
    table = vae("train", "--multirun", "seed=0,1", *SWEEP, cwd=tmp_path, env=env)
    assert table.returncode == 0, table.stderr
    assert "0-seed=0" in table.stdout and "1-seed=1" in table.stdout and "finished" in table.stdout
    assert "sweep [2/2] seed=1" in table.stderr  # the overall progress line
    assert len(list((tmp_path / "runs").glob("*-sweep"))) == 1


def test_sweep_syntax_is_hydras_basic_sweeper():
    jobs = sweep.expand(["seed=range(3)", "beta=4", "likelihood=choice(bernoulli,logistic)"])
    assert [job.overrides for job in jobs[:2]] == [["seed=0", "beta=4", "likelihood=bernoulli"],
                                                   ["seed=0", "beta=4", "likelihood=logistic"]]
    assert len(jobs) == 6 and jobs[5].name == "5-seed=2,likelihood=logistic"
    assert [job.overrides for job in sweep.expand(["model=glob(ml*)"])] == [["model=mlp"]]
    assert sweep.job_name(0, ["dataset.path=/data/x y"]) == "0-dataset.path=_data_x_y"


@pytest.mark.parametrize("args, needle", [
    (["beta=1,4", "nokey=3"], "unknown key 'nokey'"),
    (["beta=1,oops"], "sweep job 1 (beta=oops): invalid value for beta"),
    (["beta=interval(1,4)"], "cannot expand the sweep"),
    (["model=mlp,nomodel"], "unknown model 'nomodel'"),
])
def test_a_bad_sweep_is_refused_before_any_run_starts(tmp_path, env, args, needle):
    result = vae("train", "-m", *args, *SWEEP, cwd=tmp_path, env=env)
    assert_one_line_error(result, 2, needle)
    assert not (tmp_path / "runs").exists()


def test_several_values_without_multirun_say_how_to_sweep(tmp_path, env):
    assert_one_line_error(vae("train", "beta=1,4", *SWEEP, cwd=tmp_path, env=env), 2, "vae train -m beta=1,4")


@pytest.mark.slow  # subprocess-heavy (6-24 s): the fast suite stays near 5 minutes on 2 cores
def test_a_failed_job_is_reported_and_the_others_still_run(tmp_path, env):
    sweep_dir = tmp_path / "lr"
    result = vae("train", "-m", "trainer.lr=1e30,0.001", "trainer.max_bad_steps=2", *SWEEP, "--run-dir",
                 str(sweep_dir), "--json", cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("vae: error: 1 of 2 runs failed")
    rows = finished_runs(json.loads(result.stdout))
    assert rows["0-trainer.lr=1e+30"]["state"] == "crashed"
    assert "training diverged" in rows["0-trainer.lr=1e+30"]["note"]
    assert rows["1-trainer.lr=0.001"]["state"] == "finished"
    # the runs table shows it the same way later
    listed = finished_runs(one_json(vae("runs", str(sweep_dir), "--json", cwd=tmp_path, env=env)))
    assert listed["0-trainer.lr=1e+30"]["state"] == "crashed"


@pytest.mark.slow
def test_ctrl_c_stops_the_sweep_with_a_checkpoint_and_resume_finishes_it_bit_identical(tmp_path, env):
    sweep_dir = tmp_path / "seeds"
    long = [*TINY, "trainer.epochs=40", "trainer.log_every=1000"]
    proc = subprocess.Popen([sys.executable, "-m", "vaecli", "train", "-m", "seed=0,1,2", *long, "--run-dir",
                             str(sweep_dir)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    second = sweep_dir / "1-seed=1"
    deadline = time.time() + 240
    while not (second / "model.safetensors").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err
    assert f"finish the sweep with: vae train --resume {sweep_dir}" in err.strip().splitlines()[-1]
    first_model = (sweep_dir / "0-seed=0" / "model.safetensors").stat().st_mtime_ns
    states = {r["name"]: r["state"] for r in one_json(vae("runs", str(sweep_dir), "--json", env=env))["runs"]}
    assert states == {"0-seed=0": "finished", "1-seed=1": "interrupted", "2-seed=2": "pending"}

    result = one_json(vae("train", "--resume", str(sweep_dir), "--json", cwd=tmp_path, env=env, timeout=600))
    assert {r["state"] for r in result["runs"]} == {"finished"}
    assert (sweep_dir / "0-seed=0" / "model.safetensors").stat().st_mtime_ns == first_model  # not retrained
    # the interrupted job, resumed, equals the same run trained without a break
    one_json(vae("train", "seed=1", *long, "--run-dir", str(tmp_path / "plain"), "--json", cwd=tmp_path, env=env))
    resumed, plain = load_file(str(second / "model.safetensors")), load_file(str(tmp_path / "plain" / "model.safetensors"))
    assert resumed.keys() == plain.keys()
    assert all((resumed[k] == plain[k]).all() for k in plain)


# -- the runs table --------------------------------------------------------------------------------


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.slow  # subprocess-heavy (6-24 s): the fast suite stays near 5 minutes on 2 cores
def test_runs_table_shows_every_state_and_survives_broken_folders(tmp_path, env, trained_run):
    root = tmp_path / "runs"
    finished = _copy_run(trained_run, root / "a-finished")
    evaluated = one_json(vae("eval-iwae", "--ckpt", str(finished), "--k", "3", "--n", "16", "--json", env=env))
    killed = _copy_run(trained_run, root / "b-killed")
    status = json.loads((killed / "status.json").read_text())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (killed / "status.json").write_text(json.dumps({**status, "state": "running", "pid": dead.pid}))
    live = _copy_run(trained_run, root / "c-running")
    (live / "status.json").write_text(json.dumps({**status, "state": "running", "pid": os.getpid()}))
    half = root / "d-half-written"
    half.mkdir()
    (half / "config.yaml").write_text("dataset: {name: mni")  # cut short by a crash
    (half / "metrics.jsonl").write_text('{"step": 1, "split": "test", "elbo": -9')
    (half / "status.json").write_text("{")
    (root / "not-a-run").mkdir()
    older = _copy_run(trained_run, root / "e-older")  # from before status.json and summary.json
    (older / "status.json").unlink()
    (older / "summary.json").unlink()

    result = one_json(vae("runs", str(root), "--json", cwd=tmp_path, env=env))
    rows = finished_runs(result)
    assert set(rows) == {"a-finished", "b-killed", "c-running", "d-half-written", "e-older"}
    assert rows["e-older"]["state"] == "finished" and rows["e-older"]["test_elbo"] is not None
    assert {"model.hidden=[32]", "model.latent_dim=4", "trainer.batch_size=32"} <= set(rows["e-older"]["overrides"])
    assert rows["a-finished"]["state"] == "finished"
    assert rows["a-finished"]["iwae"]["bound"] == pytest.approx(evaluated["iwae"])
    assert rows["a-finished"]["iwae"]["k"] == 3 and rows["a-finished"]["iwae"]["n"] == 16
    assert rows["a-finished"]["dataset"] == "mnist" and rows["a-finished"]["model"] == "mlp"
    assert "model.hidden=[32]" in rows["a-finished"]["overrides"]
    assert rows["b-killed"]["state"] == "crashed" and "gone" in rows["b-killed"]["note"]
    assert rows["c-running"]["state"] == "running"
    assert rows["d-half-written"]["state"] == "broken"
    assert "config.yaml unreadable" in rows["d-half-written"]["note"]

    table = vae("runs", cwd=tmp_path, env=env)  # ./runs by default, as a table
    assert table.returncode == 0, table.stderr
    for needle in ("a-finished", "IWAE", "crashed", "running", "broken"):
        assert needle in table.stdout


@pytest.mark.slow  # subprocess-heavy (6-24 s): the fast suite stays near 5 minutes on 2 cores
def test_runs_sort_and_bad_input(tmp_path, env, trained_run):
    root = tmp_path / "runs"
    result = vae("train", "-m", "trainer.epochs=1,3", *TINY[:-3], "--run-dir", str(root / "sw"), "--json",
                 cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    rows = one_json(vae("runs", str(root), "--sort", "elbo", "--json", env=env))["runs"]
    elbos = [r["test_elbo"] for r in rows]
    assert elbos == sorted(elbos, reverse=True) and len(rows) == 2
    assert_one_line_error(vae("runs", str(root), "--sort", "loss", env=env), 2, "--sort must be one of")
    assert_one_line_error(vae("runs", str(tmp_path / "nowhere"), env=env), 2, "no runs folder")
    (tmp_path / "empty").mkdir()
    empty = vae("runs", str(tmp_path / "empty"), env=env)
    assert empty.returncode == 0 and "no runs under" in empty.stdout


# -- TensorBoard -----------------------------------------------------------------------------------


def _scalars(folder: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


@pytest.mark.slow  # ~8 s: a killed subprocess run and its resume
def test_tensorboard_logs_the_metrics_and_a_killed_run_resumes_without_duplicate_steps(tmp_path, env):
    pytest.importorskip("tensorboard")
    run_dir = tmp_path / "tb"
    args = [*TINY[:2], "trainer.batch_size=32", "trainer.log_every=2", "trainer.logger=tensorboard"]
    proc = subprocess.Popen([sys.executable, "-m", "vaecli", "train", *args, "trainer.epochs=500", "--run-dir",
                             str(run_dir)], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:  # a checkpoint, and lines logged after it
        lines = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []
        if (run_dir / "model.safetensors").exists() and len(lines) > 40:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    result = one_json(vae("train", "--resume", str(run_dir), "trainer.epochs=30", "--json", env=env))
    events = _scalars(run_dir / "tensorboard")
    logged = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]
    train = [r for r in logged if r["split"] == "train"]
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [r["step"] for r in train]  # each step once, in order, to the end
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in train], rel=1e-6)
    test = events.Scalars("test/elbo")
    assert [e.step for e in test] == [r["step"] for r in logged if r["split"] == "test"]
    assert test[-1].value == pytest.approx(result["test_elbo"], rel=1e-6)
    assert {"test/kl", "test/active_units", "test/kl_dim/z0", "train/img_per_s"} <= set(events.Tags()["scalars"])
    assert len(events.Images("samples")) == 30  # one grid per epoch


def test_tensorboard_missing_is_one_line_naming_the_install_command(tmp_path, env):
    shim = tmp_path / "shim" / "tensorboard"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('tensorboard is hidden by this test')\n")
    hidden = dict(env, PYTHONPATH=os.pathsep.join([str(shim.parent), env.get("PYTHONPATH", "")]))
    result = vae("train", *TINY, "trainer.logger=tensorboard", cwd=tmp_path, env=hidden)
    assert_one_line_error(result, 2, "pip install 'vaecli[tensorboard]'")
    assert not (tmp_path / "runs").exists()


# -- shell completion ------------------------------------------------------------------------------


def complete_bash(words: str, cwd: Path, env: dict) -> list[str]:
    """What bash's completion function gets: COMP_WORDS split at '=' as bash does, COMP_CWORD."""
    parts = words.replace("=", " = ").split() + ([""] if words.endswith(" ") else [])
    e = dict(env, _VAE_COMPLETE="complete_bash", COMP_WORDS=" ".join(parts), COMP_CWORD=str(len(parts) - 1))
    result = subprocess.run([sys.executable, "-m", "vaecli"], env=e, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def complete_zsh(words: str, cwd: Path, env: dict) -> str:
    e = dict(env, _VAE_COMPLETE="complete_zsh", _TYPER_COMPLETE_ARGS=words)
    result = subprocess.run([sys.executable, "-m", "vaecli"], env=e, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_completion_offers_config_keys_group_options_and_run_folders(tmp_path, env, trained_run):
    _copy_run(trained_run, tmp_path / "runs" / "first")
    assert complete_bash("vae train mod", tmp_path, env) == ["model=", "model."]
    assert "trainer." in complete_bash("vae train ", tmp_path, env)
    assert "trainer.epochs=" in complete_bash("vae train trainer.ep", tmp_path, env)
    assert complete_bash("vae train model=", tmp_path, env) == ["ae", "autoencoder_kl", "conv", "hvae", "ladder", "mlp", "resnet", "vqvae"]
    assert complete_bash("vae train model=la", tmp_path, env) == ["ladder"]  # the part after '=' (bash's word)
    assert complete_bash("vae train trainer.logger=t", tmp_path, env) == ["tensorboard"]
    assert complete_bash("vae sample --ckpt ", tmp_path, env) == ["runs/first"]
    assert complete_bash("vae train --resume runs/f", tmp_path, env) == ["runs/first"]
    assert '"model=ladder"' in complete_zsh("vae train model=l", tmp_path, env)
    assert '"dataset=shapes"' in complete_zsh("vae train dataset=sh", tmp_path, env)
    assert "runs/first" in complete_zsh("vae runs r", tmp_path, env)
    # Typer detects the shell: from the parent process (shellingham, when installed) or $SHELL
    script = subprocess.run(["bash", "-c", f"'{sys.executable}' -m vaecli --show-completion; exit $?"],  # no exec
                            env=dict(env, SHELL="/bin/bash"), capture_output=True, text=True)
    assert script.returncode == 0 and "_VAE_COMPLETE=complete_bash" in script.stdout, script.stderr


# -- torchrun --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_sweep_under_torchrun_runs_each_job_on_every_rank(tmp_path, env):
    sweep_dir = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "vaecli", "train", "-m", "seed=0,1", "model=ae", *TINY[:2], "trainer.batch_size=16",
               "trainer.epochs=1", "--run-dir", str(sweep_dir), "--json"]
    result = subprocess.run(command, env=dict(env, OMP_NUM_THREADS="1"), cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    summary = one_json(result)  # rank 0 alone prints
    assert [r["state"] for r in summary["runs"]] == ["finished", "finished"]
    for row in summary["runs"]:
        saved = json.loads((Path(row["path"]) / "summary.json").read_text())
        assert saved["processes"] == 2 and saved["step"] == 8  # 256 tiny images, 2 x 16 per step
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["0-seed=0", "1-seed=1", "sweep.json"]


# -- sharing the CPU -------------------------------------------------------------------------------


@pytest.mark.slow
def test_threads_are_set_by_trainer_threads_and_auto_respects_the_environment(tmp_path, env):
    clean = {k: v for k, v in env.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    clean["VAECLI_REGISTRY"] = str(tmp_path / "registry")  # no other test's vae process counts as a sharer
    one = one_json(vae("train", *TINY, "trainer.threads=1", "--run-dir", str(tmp_path / "one"), "--json", env=clean))
    assert one["threads"] == 1
    auto = one_json(vae("train", *TINY, "--run-dir", str(tmp_path / "auto"), "--json", env=clean))
    assert auto["threads"] == len(os.sched_getaffinity(0))  # one per available core
    told = one_json(vae("train", *TINY, "--run-dir", str(tmp_path / "told"), "--json",
                        env=dict(clean, OMP_NUM_THREADS="1")))  # torchrun's setting wins over auto
    assert told["threads"] == 1
    assert_one_line_error(vae("train", *TINY, "trainer.threads=-1", env=clean), 2, "trainer.threads")
    result = one_json(vae("eval-iwae", "--ckpt", str(tmp_path / "one"), "--k", "2", "--n", "4", "--threads", "1",
                          "--json", env=clean))
    assert result["n"] == 4


