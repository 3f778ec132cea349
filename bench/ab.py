"""A/B training speed of two checkouts of vaecli, alternated in one run (for before/after
comparisons of a change): `python bench/ab.py OLD_CHECKOUT NEW_CHECKOUT [--rounds 5]`.
Each measurement is a fresh process training the default MNIST model for 2 epochs; prints the
img/s of every run and the median ratio new/old. MNIST as in bench.py ($VAECLI_DATA)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = """
import json, sys, tempfile
from pathlib import Path
from vaecli.config import load_config
try:
    from vaecli.training.trainer import fit
except ImportError:  # a checkout from before the package was grouped by concept (2026-12-04)
    from vaecli.train import fit
root = sys.argv[1]
with tempfile.TemporaryDirectory() as tmp:
    s = fit(load_config(["dataset=mnist", "trainer.epochs=2", "trainer.sample_every=0",
                         "trainer.checkpoint_every=0", f"dataset.root={root}"]), Path(tmp) / "run")
    s = s if isinstance(s, dict) else s.to_dict()
print(json.dumps({"img_per_s": s["img_per_s"], "test_elbo": s["test_elbo"]}))
"""


def measure(checkout: str, root: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(checkout))
    out = subprocess.run([sys.executable, "-c", CHILD, root], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    root = os.environ.get("VAECLI_DATA") or sys.exit("ab: set VAECLI_DATA to a folder holding MNIST/raw/*.gz")
    runs: dict[str, list[float]] = {"old": [], "new": []}
    for i in range(args.rounds):
        for name in ("old", "new") if i % 2 == 0 else ("new", "old"):
            result = measure(getattr(args, name), root)
            runs[name].append(result["img_per_s"])
            print(f"round {i + 1} {name}: {result['img_per_s']:,.0f} img/s, test ELBO {result['test_elbo']:.4f}")
    old, new = statistics.median(runs["old"]), statistics.median(runs["new"])
    print(f"median old {old:,.0f} img/s, new {new:,.0f} img/s, new/old {new / old:.3f}")


if __name__ == "__main__":
    main()
