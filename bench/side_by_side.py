"""One picture of reconstructions side by side: a row of test images, then a row per run
(bench/sharpness.sh; docs/results/sharp.md).

    python bench/side_by_side.py OUT.png RUN [RUN ...] [--n 8] [--zoom 2]
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from vaecli import load
from vaecli.config import resume_config
from vaecli.data import build
from vaecli.data.images import save_grid
from vaecli.evaluation.sample_quality import reference_indices


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--zoom", type=int, default=2)
    args = parser.parse_args()
    cfg = resume_config(args.runs[0], []).cfg
    test = build(replace(cfg.dataset), "test", cfg.seed)
    index = reference_indices(len(test), len(test), "test")[:: max(1, len(test) // args.n)][: args.n]
    x = test.images[index].float() / 255
    rows = [x]
    for run in args.runs:
        model = load(run, device="cpu").eval()
        with torch.no_grad():
            rows.append(model.reconstruct(x).clamp(0, 1))
    save_grid(torch.cat(rows), args.out, nrow=args.n, zoom=args.zoom)
    print(args.out)


if __name__ == "__main__":
    main()
