"""Fair CPU sharing: `vae train dataset=mnist` alone and two at once, under each thread policy.

Two torch processes that each use every core spin against each other (OpenMP workers waiting
for a descheduled sibling), and both slow down many times over. This measures, in one run of
this script, training throughput (img/s from the summary) for:
  torch        torch's own behaviour: one intra-op thread per core, OpenMP's default spin-waiting
               (trainer.threads set to the core count, so vaecli does not adjust it)
  threads=1    OMP_NUM_THREADS=1 (what torchrun sets per process)
  short spin   every core, GOMP_SPINCOUNT=1000 (vaecli's policy before 2026-12-02)
  vaecli       `vae` as shipped: trainer.threads=0, each process's share of the cores among the
               vae processes running (sharing.py), OpenMP's default spin
alone and with two processes started together (their mean). MNIST as bench.py finds it. Each
measurement gets a registry folder of its own (VAECLI_REGISTRY), so nothing else running counts.

    python bench/sharing.py [--limit 60000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from bench import mnist_root

CORES = len(os.sched_getaffinity(0))
# policy -> (extra environment, extra overrides)
POLICIES = {
    "torch": ({}, [f"trainer.threads={CORES}"]),
    "threads=1": ({"OMP_NUM_THREADS": "1"}, []),
    "short spin": ({"GOMP_SPINCOUNT": "1000"}, [f"trainer.threads={CORES}"]),
    "vaecli": ({}, []),
}


def start(root: str, run_dir: str, policy: str, limit: int, registry: str) -> subprocess.Popen:
    extra, overrides = POLICIES[policy]
    command = [sys.executable, "-m", "vaecli", "train", "dataset=mnist", "trainer.epochs=1", f"dataset.limit={limit}",
               "trainer.sample_every=0", *overrides, "--run-dir", run_dir, "--json"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return subprocess.Popen(command, env={**env, "VAECLI_DATA": root, "VAECLI_REGISTRY": registry, **extra},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def throughput(proc: subprocess.Popen) -> float:
    out, err = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"bench: training failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
    return json.loads(out)["img_per_s"]


def measure(root: str, policy: str, processes: int, limit: int, work: str) -> float:
    registry = os.path.join(work, "registry")
    procs = [start(root, os.path.join(work, f"r{i}"), policy, limit, registry) for i in range(processes)]
    return statistics.mean(throughput(p) for p in procs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=60000,
                        help="training images per run (seconds of training, so re-balancing, once a second, has its say)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds; the median is reported")
    args = parser.parse_args()
    root = mnist_root()
    print(f"cores: {os.cpu_count()} (available to this process: {len(os.sched_getaffinity(0))}); "
          f"{args.limit} MNIST images, 1 epoch, median of {args.repeat} rounds")
    results: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.repeat):
        for name in POLICIES:
            for processes in (1, 2):
                with tempfile.TemporaryDirectory() as work:
                    results.setdefault((name, processes), []).append(measure(root, name, processes, args.limit, work))
    alone_default = statistics.median(results[("torch", 1)])
    best = max(statistics.median(results[(name, 1)]) for name in POLICIES)
    print(f"{'policy':<11} {'alone img/s':>12} {'two at once, each':>18} {'each vs alone':>14} "
          f"{'alone vs torch':>15} {'each vs best alone':>19}")
    for name in POLICIES:
        alone, shared = (statistics.median(results[(name, p)]) for p in (1, 2))
        print(f"{name:<11} {alone:>12,.0f} {shared:>18,.0f} {shared / alone:>13.2f}x {alone / alone_default:>14.2f}x "
              f"{shared / best:>18.2f}x")


if __name__ == "__main__":
    main()
