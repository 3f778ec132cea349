"""Figures drawn with matplotlib (the de-facto standard; its Agg backend writes PNGs headless,
on CI and servers, with no display). Image grids go through torchvision in data/images.py."""

from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return Path(path)


def metrics_figure(records: list[dict], out: Path, title: str = "") -> Path:
    """Loss, ELBO, KL (train and test) and active units (test) against the training step."""
    plt = _pyplot()
    train = [r for r in records if r.get("split") == "train"]
    test = [r for r in records if r.get("split") == "test"]
    panels = [("loss", "loss (nats)"), ("elbo", "ELBO (nats)"), ("kl", "KL (nats)"), ("active_units", "active units")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (key, label) in zip(axes, panels):
        for rows, name, style in ((train, "train", "-"), (test, "test", "o-")):
            points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points), style, label=name, markersize=3)
        ax.set_xlabel("step")
        ax.set_title(label)
        if ax.has_data():
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    if title:
        fig.suptitle(title)
    return _save(fig, out)


def scatter_figure(points, labels, out: Path, title: str, xlabel: str, ylabel: str) -> Path:
    """2-D points (N, 2) coloured by integer labels (or one colour when labels is None)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5.5))
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=3, alpha=0.6)
    else:
        sc = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=3, alpha=0.7)
        handles, names = sc.legend_elements(num=sorted(set(int(v) for v in labels)))
        ax.legend(handles, names, title="label", fontsize=7, loc="best", markerscale=0.8)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return _save(fig, out)


def score_histogram(sets: list[tuple[str, list[float]]], out: Path, title: str, xlabel: str) -> Path:
    """Overlaid histograms of per-image scores, one per set, on shared bins (density, so sets of
    different sizes compare)."""
    import numpy as np

    plt = _pyplot()
    values = np.concatenate([np.asarray(v, dtype=float) for _, v in sets])
    low, high = np.percentile(values, [0.5, 99.5]) if len(values) > 1 else (values.min() - 1, values.max() + 1)
    bins = np.linspace(low, high if high > low else low + 1, 60)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, v in sets:
        ax.hist(np.clip(v, bins[0], bins[-1]), bins=bins, density=True, alpha=0.5, label=f"{name} (n={len(v)})")
    ax.set(title=title, xlabel=xlabel, ylabel="density")
    ax.legend(fontsize=8)
    return _save(fig, out)
