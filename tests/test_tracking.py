"""trainer.logger=mlflow and =wandb for real: MLflow against its local SQLite store and against a
tracking server started by the test (SQLite backend), W&B in offline mode (its own .wandb files
read back); after a kill -9 and --resume each holds every logged step of metrics.jsonl exactly
once. Plus the config's logger lists and the unreachable-server refusal."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_one_line_error, one_json, vae

mlflow = pytest.importorskip("mlflow")

TINY = ["dataset=shapes", "dataset.image_size=16", "dataset.rotations=2", "dataset.positions=4", "model.latent_dim=3",
        "model.hidden=[16]", "trainer.sample_every=1", "trainer.batch_size=64", "trainer.log_every=5"]


def _steps(run_dir: Path, split: str) -> list[int]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in lines if r["split"] == split]


def _kill_then_resume(run_dir: Path, args: list[str], env: dict) -> None:
    """Train in a subprocess, SIGKILL it after its first checkpoint and a few more log lines, resume."""
    command = [sys.executable, "-m", "vaecli", "train", *args, "--run-dir", str(run_dir), "--quiet"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        saved = (run_dir / "model.safetensors").exists()
        if saved and (run_dir / "metrics.jsonl").exists() and len(_steps(run_dir, "train")) >= 8:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before the kill: make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = subprocess.run([sys.executable, "-m", "vaecli", "train", "--resume", str(run_dir), "--quiet"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on localhost with a SQLite backend store, stopped at the end."""
    port = _free_port()
    store = tmp_path / "server"
    store.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
                             "--default-artifact-root", (store / "artifacts").as_uri(), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    import urllib.request

    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=1)
            break
        except OSError:
            assert proc.poll() is None, "mlflow server exited"
            time.sleep(0.3)
    else:
        pytest.fail("mlflow server did not start")
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def _mlflow_history(uri: str, run_dir: Path, key: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    run_id = json.loads((run_dir / "tracking.json").read_text())["mlflow"]["run_id"]
    return sorted(m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, key))


@pytest.mark.slow  # ~9 s: two subprocess runs with MLflow
def test_mlflow_local_store_params_metrics_artifacts_and_evals(tmp_path, env):
    run_dir = tmp_path / "runs" / "a"
    summary = one_json(vae("train", *TINY, "trainer.epochs=2", "trainer.logger=[tensorboard,mlflow]", "--run-dir",
                           str(run_dir), "--json", env=env))
    assert (run_dir / "tensorboard").is_dir() and (tmp_path / "runs" / "mlflow.db").is_file()
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run_id = json.loads((run_dir / "tracking.json").read_text())["mlflow"]["run_id"]
    run = client.get_run(run_id)
    assert run.info.run_name == "a" and run.info.status == "FINISHED"
    assert run.data.params["model.latent_dim"] == "3" and run.data.params["dataset.name"] == "shapes"
    assert run.data.metrics["test/elbo"] == pytest.approx(summary["test_elbo"], rel=1e-6)
    assert _mlflow_history(uri, run_dir, "train/loss") == _steps(run_dir, "train")
    assert {a.path for a in client.list_artifacts(run_id)} >= {"model.safetensors", "config.yaml", "samples"}
    one_json(vae("eval-iwae", "--ckpt", str(run_dir), "--k", "5", "--n", "8", "--json", env=env))
    assert "eval/iwae/bound" in client.get_run(run_id).data.metrics


@pytest.mark.slow  # a tracking server and a killed training run (~40 s)
def test_mlflow_server_holds_every_step_once_after_a_kill_and_resume(tmp_path, env, mlflow_server):
    run_dir = tmp_path / "killed"
    served = {**env, "MLFLOW_TRACKING_URI": mlflow_server}
    _kill_then_resume(run_dir, [*TINY, "trainer.epochs=40", "trainer.checkpoint_every_steps=10",
                                "trainer.logger=mlflow"], served)
    assert _mlflow_history(mlflow_server, run_dir, "train/loss") == _steps(run_dir, "train")
    assert _mlflow_history(mlflow_server, run_dir, "test/elbo") == _steps(run_dir, "test")
    from mlflow.tracking import MlflowClient

    runs = MlflowClient(tracking_uri=mlflow_server).search_runs(
        [MlflowClient(tracking_uri=mlflow_server).get_experiment_by_name("vaecli").experiment_id])
    assert [r.info.run_name for r in runs] == ["killed"] and runs[0].info.status == "FINISHED"


@pytest.mark.slow  # subprocess-heavy (6-24 s): the fast suite stays near 5 minutes on 2 cores
def test_an_unreachable_mlflow_server_stops_before_the_run_folder_exists(tmp_path, env):
    dead = {**env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{_free_port()}"}
    result = vae("train", *TINY, "trainer.epochs=1", "trainer.logger=mlflow", "--run-dir", str(tmp_path / "run"), env=dead)
    assert_one_line_error(result, 1, "cannot reach the MLflow tracking store", "MLFLOW_TRACKING_URI")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # W&B's service process starts twice (~30 s)
def test_wandb_offline_holds_every_step_once_after_a_kill_and_resume(tmp_path, env):
    pytest.importorskip("wandb")
    offline = {**env, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    run_dir = tmp_path / "killed"
    _kill_then_resume(run_dir, [*TINY, "trainer.epochs=40", "trainer.checkpoint_every_steps=10",
                                "trainer.logger=wandb"], offline)
    from vaecli.training.tracking import wandb_history

    history = wandb_history(run_dir)
    train = [step for step, key in history if key == "train/loss"]
    test = [step for step, key in history if key == "test/elbo"]
    assert len(list(run_dir.glob("wandb/offline-run-*"))) == 2  # the killed session and the resumed one
    assert sorted(train) == _steps(run_dir, "train") and sorted(test) == _steps(run_dir, "test")
    # an evaluation of the run lands in its W&B summary (the run reopened offline)
    one_json(vae("eval-iwae", "--ckpt", str(run_dir), "--k", "5", "--n", "8", "--json", env=offline))
    from vaecli.training.tracking import wandb_summaries

    assert "eval/iwae/bound" in wandb_summaries(run_dir)


def test_logger_lists_compose_and_unknown_loggers_are_refused():
    from vaecli.config import load_config, loggers
    from vaecli.errors import UsageError

    assert loggers(load_config(["trainer.logger=[tensorboard,mlflow]"]).cfg.trainer) == ["tensorboard", "mlflow"]
    assert loggers(load_config(["trainer.logger=wandb"]).cfg.trainer) == ["wandb"]
    assert loggers(load_config([]).cfg.trainer) == []
    for bad in ("trainer.logger=comet", "trainer.logger=[tensorboard,neptune]"):
        with pytest.raises(UsageError, match="trainer.logger must be one of"):
            load_config([bad])
