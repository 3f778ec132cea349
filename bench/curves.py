"""Test bound against training minutes for one or more runs (docs/results/likelihood.md's curves).

    python bench/curves.py RUN[=LABEL] ... --out docs/img/curve.png

Each run's metrics.jsonl has the test ELBO after every epoch and, on its train lines, the
cumulative images/s of the session; the minutes at a test line are step * batch / images/s of
the train line before it (training time only, evaluation excluded). A run that was resumed
counts from its last session's start, so pass uninterrupted runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def curve(run_dir: Path) -> list[tuple[float, float]]:
    """(minutes of training, test ELBO) after each epoch."""
    import yaml

    batch = yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["batch_size"]
    points, rate = [], None
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["split"] == "train" and record.get("img_per_s"):
            rate = record["img_per_s"]
        elif record["split"] == "test" and rate:
            points.append((record["step"] * batch / rate / 60, record["elbo"]))
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="RUN_DIR or RUN_DIR=label")
    parser.add_argument("--out", required=True)
    parser.add_argument("--floor", type=float, default=None, help="lowest ELBO shown (zooms in on the end)")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for spec in args.runs:
        path, _, label = spec.partition("=")
        points = curve(Path(path))
        ax.plot(*zip(*points), "o-", markersize=2.5, label=label or Path(path).name)
        print(f"{label or path}: {len(points)} epochs, {points[-1][0]:.1f} min, last test ELBO {points[-1][1]:.2f}")
    if args.floor is not None:
        ax.set_ylim(bottom=args.floor)
    ax.set_xlabel("training minutes (2 CPU cores)")
    ax.set_ylabel("test ELBO (nats, single sample)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(args.out, dpi=120, bbox_inches="tight")


if __name__ == "__main__":
    main()
