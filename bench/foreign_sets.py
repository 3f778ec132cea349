"""Foreign image folders for `vae score --against` from the MNIST test digits (docs/results/ood.md,
"Per-image scores"): inverted/, noisy/ (Gaussian noise, sigma 0.3 of the range) and
uniform_noise/, 2,000 PNGs each, seed 0, written into the current folder.

    python bench/foreign_sets.py $VAECLI_DATA
"""

import sys
from pathlib import Path

import numpy as np
import torchvision
from PIL import Image

test = torchvision.datasets.MNIST(sys.argv[1], train=False, download=True)
x = test.data.numpy()[:2000]
rng = np.random.default_rng(0)
for name, images in (("inverted", 255 - x),
                     ("noisy", np.clip(x + rng.normal(0, 0.3 * 255, x.shape), 0, 255).astype(np.uint8)),
                     ("uniform_noise", rng.integers(0, 256, x.shape, dtype=np.uint8))):
    folder = Path(name)
    folder.mkdir(exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:04d}.png")
    print(f"wrote {len(images)} images to {folder}/")
