"""Training, run folders and checkpoints: round trips, resume, and bad checkpoint files."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vaecli.runtime import checkpoint
from vaecli import data, load
from vaecli.config import load_config, resume_config
from vaecli.errors import UsageError
from vaecli.training.trainer import fit

SMALL = ["dataset=shapes", "dataset.scales=2", "dataset.rotations=2", "dataset.positions=6",
         "model.hidden=[32]", "model.latent_dim=4", "trainer.batch_size=32", "trainer.log_every=3"]


def train(run_dir, *extra, resume=False):
    composed = resume_config(run_dir, list(extra)) if resume else load_config(SMALL + list(extra))
    return fit(composed, run_dir, resume=resume).to_dict()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "shapes"
    summary = train(run_dir, "trainer.epochs=2")
    return run_dir, summary


def test_run_folder_has_the_documented_layout(run):
    run_dir, summary = run
    for name in ("config.yaml", "model.safetensors", "trainer.safetensors", "metrics.jsonl"):
        assert (run_dir / name).is_file(), name
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["epoch_001.png", "epoch_002.png"]
    assert not list(run_dir.glob(".*.tmp")), "temp files left behind"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} == {"train", "test"}
    assert all({"step", "epoch", "elbo", "kl", "recon"} <= set(r) for r in records)
    assert summary["step"] == records[-1]["step"] and summary["test_elbo"] == records[-1]["elbo"]
    assert summary["test_elbo"] < 0 and summary["test_kl"] > 0


def test_training_lowers_the_loss(run):
    run_dir, _ = run
    train_records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                     if json.loads(line)["split"] == "train"]
    assert train_records[-1]["loss"] < 0.9 * train_records[0]["loss"]


def test_checkpoint_round_trip_rebuilds_the_model_from_the_file_alone(run, tmp_path):
    run_dir, _ = run
    copy = tmp_path / "elsewhere.safetensors"
    copy.write_bytes((run_dir / "model.safetensors").read_bytes())  # no config.yaml beside it
    loaded = checkpoint.load_model(copy, device="cpu")
    with safe_open(str(run_dir / "model.safetensors"), "pt") as f:
        meta = f.metadata()
        for key in f.keys():
            assert torch.equal(f.get_tensor(key), loaded.model.state_dict()[key])
    assert json.loads(meta["vaecli.model"])["latent_dim"] == 4 and loaded.model.spec.latent_dim == 4
    assert loaded.dataset.name == "shapes" and loaded.step == int(meta["vaecli.step"])
    assert next(loaded.model.parameters()).device.type == "cpu"
    assert load(run_dir).sample(5).shape == (5, 1, 32, 32)  # the public API


def test_no_pickle_in_checkpoints(run):
    run_dir, _ = run
    for name in ("model.safetensors", "trainer.safetensors"):
        blob = (run_dir / name).read_bytes()
        header_len = int.from_bytes(blob[:8], "little")
        json.loads(blob[8:8 + header_len])  # a safetensors header is plain JSON
        assert b"\x80\x04\x95" not in blob[:8 + header_len]  # no pickle protocol-4 frame


def test_resume_continues_step_counter_optimizer_state_and_matches_an_uninterrupted_run(tmp_path):
    straight = tmp_path / "straight"
    train(straight, "trainer.epochs=2")
    split = tmp_path / "split"
    train(split, "trainer.epochs=1")
    state_after_one = checkpoint.load_trainer(split / "trainer.safetensors")
    summary = train(split, "trainer.epochs=2", resume=True)
    resumed_state = checkpoint.load_trainer(split / "trainer.safetensors")
    steps_per_epoch = state_after_one["step"]
    assert summary["step"] == resumed_state["step"] == 2 * steps_per_epoch
    adam_step = resumed_state["optimizer"]["state"][0]["step"]
    assert int(adam_step) == 2 * steps_per_epoch  # Adam's own counter carried over, not restarted
    a = checkpoint.load_model(straight).model.state_dict()
    b = checkpoint.load_model(split).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from an uninterrupted run"
    epochs = [json.loads(line)["epoch"] for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert epochs == sorted(epochs) and max(epochs) == 2


def test_resume_refuses_a_model_changing_override(run):
    run_dir, _ = run
    with pytest.raises(UsageError, match="cannot change model.latent_dim when resuming"):
        resume_config(run_dir, ["model.latent_dim=8"])


def test_binarized_mnist_is_binary_dynamic_draws_differ_and_static_is_fixed(data_root):
    cfg = load_config(["dataset=binarized_mnist", f"dataset.root={data_root}"]).cfg
    train_set = data.build(cfg.dataset, "train", seed=0)
    batch = train_set.images[:16]
    a, b = train_set.to_float(batch), train_set.to_float(batch)
    assert set(a.unique().tolist()) <= {0.0, 1.0} and not torch.equal(a, b)
    static_cfg = load_config(["dataset=binarized_mnist", "dataset.binarize=static", f"dataset.root={data_root}"]).cfg
    s = data.build(static_cfg.dataset, "train", seed=0)
    assert torch.equal(s.to_float(s.images[:16]), s.to_float(s.images[:16]))
    assert set(s.to_float(s.images).unique().tolist()) <= {0.0, 1.0}
    t1, t2 = data.build(cfg.dataset, "test", 0), data.build(cfg.dataset, "test", 0)
    assert torch.equal(t1.images, t2.images)  # the test set is binarized once, repeatably


def test_dataset_limit_and_shapes_factors(data_root):
    cfg = load_config(["dataset=mnist", f"dataset.root={data_root}", "dataset.limit=10"]).cfg
    assert len(data.build(cfg.dataset, "train")) == 10 and len(data.build(cfg.dataset, "test")) == 64
    shapes = load_config(["dataset=shapes"]).cfg.dataset
    train_set, test_set = data.build(shapes, "train", 0), data.build(shapes, "test", 0)
    assert len(train_set) + len(test_set) == 3 * 4 * 8 * 8 * 8 and len(test_set) == 614
    assert train_set.factors.shape == (len(train_set), 5) and train_set.factor_names[0] == "shape"
    assert torch.equal(train_set.labels, train_set.factors[:, 0]) and train_set.num_classes == 3
    again = data.build(shapes, "train", 0)
    assert torch.equal(again.images, train_set.images)  # deterministic from the seed
    assert not torch.equal(data.build(shapes, "train", 1).factors, train_set.factors)


def test_offline_missing_dataset_is_a_clear_error(tmp_path):
    from vaecli.errors import VaeError

    cfg = load_config(["dataset=mnist", f"dataset.root={tmp_path}"]).cfg
    with pytest.raises(VaeError) as err:
        data.build(cfg.dataset, "train")
    message = str(err.value)
    assert "MNIST not found under" in message and "MNIST/raw" in message and "dataset=shapes" in message


def test_bad_checkpoint_files_are_usage_errors(run, tmp_path):
    run_dir, _ = run
    good = (run_dir / "model.safetensors").read_bytes()
    cases = {
        "missing.safetensors": None,
        "text.safetensors": b"this is not a checkpoint",
        "truncated.safetensors": good[: len(good) // 2],
    }
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(UsageError):
            checkpoint.load_model(tmp_path / name)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(UsageError, match="not a vaecli checkpoint"):
        checkpoint.load_model(plain)
    future = tmp_path / "future.safetensors"
    save_file({"w": torch.zeros(2)}, str(future), metadata={"vaecli.format": "99", "vaecli.version": "9.0"})
    with pytest.raises(UsageError, match="format '99'"):
        checkpoint.load_model(future)
    with pytest.raises(UsageError, match="holds no model.safetensors"):
        checkpoint.load_model(tmp_path)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "model.safetensors"
    checkpoint.save_tensors(target, {"w": torch.ones(3)}, {"vaecli.format": "1"})
    before = target.read_bytes()

    class Boom(Exception):
        pass

    from vaecli.atomic import atomic_write

    def half_write(tmp):
        tmp.write_bytes(b"partial")
        raise Boom

    with pytest.raises(Boom):
        atomic_write(target, half_write)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_folder_dataset_resizes_skips_corrupt_files_and_rejects_empty_folders(tmp_path, capsys):
    from PIL import Image

    images = tmp_path / "imgs" / "nested"
    images.mkdir(parents=True)
    for i in range(20):
        Image.new("RGB", (30 + 7 * i, 20 + 3 * i), (12 * i, 0, 0)).save(images / f"{i}.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (images / "notes.txt").write_text("ignored")
    cfg = load_config(["dataset=folder", f"dataset.path={tmp_path / 'imgs'}", "dataset.image_size=8",
                       "dataset.channels=1"]).cfg.dataset
    train_set, test_set = data.build(cfg, "train"), data.build(cfg, "test")
    assert train_set.images.shape[1:] == (1, 8, 8) and train_set.images.dtype == torch.uint8
    assert len(train_set) + len(test_set) == 20  # 21 image files, the broken one skipped
    assert "skipped 1 unreadable file" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    for path, message in ((tmp_path / "empty", "no PNG/JPEG images"), (tmp_path / "missing", "does not exist")):
        bad = load_config(["dataset=folder", f"dataset.path={path}"]).cfg.dataset
        with pytest.raises(UsageError, match=message):
            data.build(bad, "train")
