"""Samples above latent traversals, one panel per run (docs/results/beyond-gaussian.md's posterior-collapse picture).

    python bench/collapse_figure.py --out docs/img/collapse.png RUN:TRAVERSE_PNG[=LABEL] ...

Each panel shows the first two rows of the run's last training sample grid (RUN/samples/, drawn
from the prior) above TRAVERSE_PNG (`vae traverse --ckpt RUN --dims 3 --steps 8 --image test:3`),
scaled to the same width; panels two to a row, at half size.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def panel(run_dir: Path, traverse: Path, label: str, columns: int = 8):
    from PIL import Image, ImageDraw, ImageFont

    grid = Image.open(sorted((run_dir / "samples").glob("*.png"))[-1]).convert("L")
    cell = grid.width // columns  # a zoomed image and its padding
    samples = grid.crop((0, 0, grid.width, 2 * cell + grid.width - columns * cell))
    sweep = Image.open(traverse).convert("L")
    sweep = sweep.resize((samples.width, round(sweep.height * samples.width / sweep.width)))
    band, gap = 44, 12
    out = Image.new("L", (samples.width, band + samples.height + gap + sweep.height), 255)
    try:
        font = ImageFont.truetype("DejaVuSans.ttf", 26)
    except OSError:
        font = ImageFont.load_default()
    ImageDraw.Draw(out).text((8, 8), label, fill=0, font=font)
    out.paste(samples, (0, band))
    out.paste(sweep, (0, band + samples.height + gap))
    return out.resize((out.width // 2, out.height // 2))


def main() -> None:
    from PIL import Image

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="RUN:TRAVERSE_PNG[=LABEL]")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    panels = []
    for entry in args.runs:
        paths, _, label = entry.partition("=")
        run_dir, _, traverse = paths.partition(":")
        panels.append(panel(Path(run_dir), Path(traverse), label or Path(run_dir).name))
    cols, gap = 2, 16
    w, h = max(p.width for p in panels), max(p.height for p in panels)
    rows = (len(panels) + cols - 1) // cols
    sheet = Image.new("L", (cols * w + (cols - 1) * gap, rows * (h + gap)), 255)
    for i, p in enumerate(panels):
        sheet.paste(p, ((i % cols) * (w + gap), (i // cols) * (h + gap)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"{args.out}: {sheet.width}x{sheet.height}")


if __name__ == "__main__":
    main()
