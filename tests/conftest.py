"""Shared fixtures: tiny datasets in the real on-disk formats, and a real `vae` subprocess runner.

Nothing here needs the network or the real MNIST: IDX files are written in torchvision's layout
(ROOT/MNIST/raw/*-ubyte), so torchvision's own MNIST loader reads them.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

TINY = ["model.hidden=[32]", "model.latent_dim=4", "trainer.batch_size=32", "trainer.epochs=1",
        "trainer.log_every=2", "trainer.eval_batch_size=64"]


def write_idx_images(path: Path, images: np.ndarray) -> None:
    """IDX3 (magic 2051): big-endian count, rows, cols, then uint8 pixels."""
    n, h, w = images.shape
    path.write_bytes(struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    """IDX1 (magic 2049): big-endian count, then uint8 labels."""
    path.write_bytes(struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


def digit_like(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n 28x28 images with a bright class-dependent stroke on a dark background."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        col = 4 + 2 * int(label)
        images[i, 4:24, col:col + 3] = 255
        images[i] = np.clip(images[i] + rng.integers(0, 30, size=(28, 28)), 0, 255)
    return images, labels


def make_mnist_root(root: Path, folder: str = "MNIST", n_train: int = 256, n_test: int = 64) -> Path:
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = digit_like(n, seed)
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A VAECLI_DATA root holding tiny MNIST and Fashion-MNIST in IDX format."""
    root = tmp_path_factory.mktemp("data")
    make_mnist_root(root, "MNIST")
    make_mnist_root(root, "FashionMNIST")
    return root


@pytest.fixture
def env(data_root) -> dict:
    e = dict(os.environ)
    e["VAECLI_DATA"] = str(data_root)
    e["PYTHONUNBUFFERED"] = "1"
    return e


def vae(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    """Run the real CLI (python -m vaecli) in a subprocess."""
    return subprocess.run([sys.executable, "-m", "vaecli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def one_json(result) -> dict:
    """stdout must be exactly one JSON object and nothing else."""
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


def assert_one_line_error(result, code: int, *needles: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, data_root) -> Path:
    """One tiny model trained on the tiny MNIST by the real CLI, shared by the command tests."""
    work = tmp_path_factory.mktemp("work")
    e = dict(os.environ, VAECLI_DATA=str(data_root))
    result = vae("train", *TINY, "--run-dir", str(work / "runs" / "tiny"), "--json", cwd=work, env=e)
    assert result.returncode == 0, result.stderr
    return work / "runs" / "tiny"
