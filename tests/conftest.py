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


def pytest_configure(config):
    """The tests' vae processes share cores through a registry of their own (sharing.py), so vae
    processes running elsewhere on the machine do not change the tests' thread counts. The JSON
    check is on."""
    import tempfile

    os.environ.setdefault("VAECLI_REGISTRY", tempfile.mkdtemp(prefix="vaecli-test-registry-"))
    # every --json object the tests see is checked against its declaration (cli/json_keys.py), the
    # source of the generated JSON reference: an undeclared key fails the command
    os.environ.setdefault("VAECLI_CHECK_JSON", "1")

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
    """A VAECLI_DATA root holding tiny MNIST, Fashion-MNIST and Kuzushiji-MNIST in IDX format."""
    root = tmp_path_factory.mktemp("data")
    make_mnist_root(root, "MNIST")
    make_mnist_root(root, "FashionMNIST")
    make_mnist_root(root, "KMNIST")
    return root


# -- the other torchvision datasets, tiny, in their real on-disk formats ---------------------------


def write_fake_svhn(root: Path, n: int = 12) -> Path:
    """SVHN's .mat files (X: 32x32x3xN uint8, y: N x 1 with 10 for the digit 0), read by scipy."""
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        savemat(root / f"{split}_32x32.mat", {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                                              "y": rng.integers(1, 11, (n, 1)).astype(np.uint8)})
    return root


def write_fake_omniglot(root: Path) -> Path:
    """omniglot-py/images_{background,evaluation}/ALPHABET/CHARACTER/*.png: 105x105 strokes on white."""
    from PIL import Image, ImageDraw

    for part, alphabets in (("images_background", 2), ("images_evaluation", 1)):
        for a in range(alphabets):
            for c in range(2):
                folder = root / "omniglot-py" / part / f"Alphabet_{a}" / f"character{c + 1:02d}"
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(3):
                    image = Image.new("L", (105, 105), 255)
                    ImageDraw.Draw(image).line((10 + 20 * c, 10, 90, 30 + 20 * i), fill=0, width=6)
                    image.save(folder / f"{c:04d}_{i:02d}.png")
    return root


def write_fake_celeba(root: Path, n: int = 9) -> Path:
    """celeba/img_align_celeba/*.jpg (178x218) and the five annotation files, in CelebA's layout."""
    from PIL import Image

    base = root / "celeba"
    (base / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    for i, name in enumerate(names):
        Image.new("RGB", (178, 218), (20 * i, 100, 200)).save(base / "img_align_celeba" / name)
    split = [0, 0, 0, 0, 0, 1, 2, 2, 2][:n]  # train, valid, test
    (base / "list_eval_partition.txt").write_text("".join(f"{f} {s}\n" for f, s in zip(names, split)))
    (base / "identity_CelebA.txt").write_text("".join(f"{f} {i}\n" for i, f in enumerate(names)))
    (base / "list_attr_celeba.txt").write_text(f"{n}\nSmiling Young\n" + "".join(f"{f} 1 -1\n" for f in names))
    (base / "list_bbox_celeba.txt").write_text(f"{n}\nimage_id x_1 y_1 width height\n"
                                               + "".join(f"{f} 1 2 3 4\n" for f in names))
    marks = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
    (base / "list_landmarks_align_celeba.txt").write_text(f"{n}\n{marks}\n" + "".join(f"{f}" + " 1" * 10 + "\n"
                                                                                      for f in names))
    return root


@pytest.fixture
def fake_archives_pass_md5(monkeypatch):
    """Tiny fake archives cannot match the official md5 sums: torchvision's integrity checks
    accept any file that exists (and Omniglot's, whose zips we do not write, its folder);
    everything else is torchvision's own loading."""
    import torchvision.datasets.celeba as celeba
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.omniglot as omniglot
    import torchvision.datasets.svhn as svhn
    import torchvision.datasets.utils as utils

    exists = lambda fpath, md5=None: os.path.isfile(fpath)  # noqa: E731
    for module in (cifar, svhn, celeba, utils):
        monkeypatch.setattr(module, "check_integrity", exists)
    monkeypatch.setattr(omniglot, "check_integrity", lambda fpath, md5=None: os.path.isdir(str(fpath)[:-len(".zip")]))


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


SMALL_SHAPES = ["dataset=shapes", "dataset.scales=1", "dataset.rotations=2", "dataset.positions=4",
                "model.hidden=[16]", "trainer.sample_every=0"]


def whole_and_resumed(tmp_path: Path, overrides: list[str]) -> tuple[dict, dict]:
    """The weights (model.safetensors) of a 2-epoch run on tiny offline shapes, and of the same
    run stopped after epoch 1 and resumed: equal, tensor for tensor, when resume is bit-exact."""
    from safetensors.torch import load_file

    from vaecli.config import load_config, resume_config
    from vaecli.training.trainer import fit

    common = SMALL_SHAPES + overrides
    fit(load_config(common + ["trainer.epochs=2"]), tmp_path / "whole")
    fit(load_config(common + ["trainer.epochs=1"]), tmp_path / "split")
    fit(resume_config(tmp_path / "split", ["trainer.epochs=2"]), tmp_path / "split", resume=True)
    return load_file(str(tmp_path / "whole/model.safetensors")), load_file(str(tmp_path / "split/model.safetensors"))



def write_fake_dsprites(root: Path, size: int = 16) -> Path:
    """DeepMind's dSprites .npz layout (imgs uint8 {0, 1} (N, H, W), latents_classes and
    latents_values (N, 6), a pickled metadata dict) on a tiny complete factor grid: colour 1 x shape 3
    x scale 2 x orientation 2 x x 2 x y 2; each sprite a square (shape 0), a bar (1) or a cross (2)."""
    grids = np.meshgrid(*[np.arange(n) for n in (1, 3, 2, 2, 2, 2)], indexing="ij")
    classes = np.stack([g.reshape(-1) for g in grids], axis=1).astype(np.int64)
    imgs = np.zeros((len(classes), size, size), dtype=np.uint8)
    for i, (_, shape, scale, orient, x, y) in enumerate(classes):
        half = 2 + scale
        cx, cy = 5 + 6 * x, 5 + 6 * y
        box = np.zeros((size, size), dtype=bool)
        box[cy - half:cy + half, cx - half:cx + half] = True
        if shape == 1:
            box[:, :cx - (1 if orient else half)] = False
        if shape == 2:
            box[cy - half + 1:cy + half - 1, cx - half + 1:cx + half - 1] = bool(orient)
        imgs[i] = box
    values = classes.astype(np.float64) * np.array([0, 1, 0.1, 0.3, 1 / 31, 1 / 31]) + np.array([1, 1, 0.5, 0, 0, 0])
    metadata = np.array({"latents_names": ("color", "shape", "scale", "orientation", "posX", "posY")}, dtype=object)
    folder = root / "dsprites"
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz", imgs=imgs, latents_classes=classes,
                        latents_values=values, metadata=metadata)
    return root


def write_fake_shapes3d(root: Path, size: int = 16) -> Path:
    """DeepMind's 3dshapes.h5 layout (images uint8 (N, H, W, 3), labels float64 (N, 6): floor, wall,
    object hue, scale, shape, orientation as values) on a tiny complete grid, 2 values each."""
    import h5py

    axes = [np.array([0.0, 0.1]), np.array([0.0, 0.1]), np.array([0.0, 0.1]), np.array([0.75, 0.75 + 0.5 / 7]),
            np.array([0.0, 1.0]), np.array([-30.0, -30.0 + 60 / 14])]
    grids = np.meshgrid(*[np.arange(2)] * 6, indexing="ij")
    index = np.stack([g.reshape(-1) for g in grids], axis=1)
    labels = np.stack([axes[k][index[:, k]] for k in range(6)], axis=1)
    images = np.zeros((len(index), size, size, 3), dtype=np.uint8)
    for i, (floor, wall, obj, scale, shape, orient) in enumerate(index):
        images[i, size // 2:, :, 0] = 100 + 100 * floor
        images[i, :size // 2, :, 1] = 100 + 100 * wall
        half = 2 + scale
        c = size // 2 + (1 if orient else -1)
        images[i, c - half:c + half, c - half:c + half, 2] = 120 + 100 * obj
        if shape:
            images[i, c - half:c + half, c - half:c + half, 0] = 255
    folder = root / "shapes3d"
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / "3dshapes.h5", "w") as f:
        f.create_dataset("images", data=images)
        f.create_dataset("labels", data=labels)
    return root


def flat_spec_json(spec) -> dict:
    """The flat VAESpec JSON that releases before 2026-12-04 wrote for a model spec (what old
    model files hold): to test the converter on files of every age."""
    b, lik, prior, data = spec.body, spec.likelihood, spec.prior, spec.data
    flat = {"arch": b.arch, "image_shape": list(spec.image_shape), "latent_dim": spec.latent_dim, "hidden": b.hidden,
            "likelihood": lik.name, "sigma": lik.sigma, "prior": prior.name, "kind": spec.kind,
            "activation": b.activation, "num_classes": spec.num_classes, "per_pixel": lik.per_pixel,
            "mixtures": lik.mixtures, "prior_components": prior.components, "levels": data.levels,
            "dequantize": data.dequantize, "logistic_tanh_means": lik.tanh_means, "norm": b.norm}
    if hasattr(spec, "posterior"):
        q = spec.posterior
        flat.update(posterior=q.name, flows=q.flows, flow_hidden=q.hidden, delta=q.delta)
    if hasattr(spec, "decoder"):
        d = spec.decoder
        flat.update(decoder=d.name, ar_layers=d.layers, ar_kernel=d.kernel, ar_channels=d.channels)
    for part in ("quantizer", "categorical"):
        if hasattr(spec, part):
            flat.update(vars(getattr(spec, part)))
    for key in ("latent_dim2", "hidden2", "groups"):
        if hasattr(spec, key):
            flat[key] = getattr(spec, key)
    return flat
