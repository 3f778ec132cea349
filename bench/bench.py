"""make bench: vaecli against the textbook loop and the machine's sgemm ceiling, in one run.

Prints, all measured here and now:
  1. training images/s of the 784-400-20 MLP VAE on MNIST (batch 128): vaecli and the textbook
     loop (bench/textbook.py), and their ratio;
  2. the sgemm ceiling (a large fp32 matmul) and vaecli's training FLOP/s as a fraction of it
     (training ~ 3 x the forward FLOPs);
     the same with trainer.compile=true (whole run, and its last epoch after compiling), and
     with trainer.precision=bf16;
  3. eval-iwae with k=5000 on the 784-200-200-50 model: images/s, samples/s, fraction of ceiling,
     in fp32 and with the networks in bf16 (against the bf16 GEMM ceiling);
  4. peak memory (RSS), and `vae --help` wall time.
MNIST comes from $VAECLI_DATA, else a copy of ../shared/data/MNIST/raw made under bench/.data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def mnist_root() -> str:
    if os.environ.get("VAECLI_DATA"):
        return os.environ["VAECLI_DATA"]
    shared = HERE.parent.parent / "shared" / "data" / "MNIST" / "raw"
    local = HERE / ".data"
    if not (local / "MNIST" / "raw").is_dir():
        if not shared.is_dir():
            sys.exit("bench: MNIST not found: set VAECLI_DATA to a folder holding MNIST/raw/*.gz")
        shutil.copytree(shared, local / "MNIST" / "raw")  # torchvision extracts in place
    return str(local)


def sgemm_gflops(n: int = 4096, reps: int = 8, dtype: torch.dtype = torch.float32) -> float:
    """A large square GEMM: the machine's ceiling in `dtype` (fp32: sgemm; bf16: AMX where present)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def cpu_flags() -> str:
    """The CPU's vector and matrix extensions that matter to torch's kernels."""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
    return " ".join(f for f in wanted if f in flags) or "none of avx2/avx512/amx"


def mlp_macs(sizes: list[int]) -> int:
    return sum(i * o for i, o in zip(sizes[:-1], sizes[1:]))


def vaecli_train(root: str, epochs: int, *overrides: str) -> dict:
    """fit()'s summary plus `steady_img_per_s`: the last epoch alone (after any compiling)."""
    from vaecli.config import load_config
    from vaecli.training.trainer import fit
    import tempfile

    os.environ["VAECLI_DATA"] = root
    with tempfile.TemporaryDirectory() as tmp:
        composed = load_config(["dataset=mnist", f"trainer.epochs={epochs}", "trainer.sample_every=0",
                                "trainer.checkpoint_every=0", f"dataset.root={root}", *overrides])
        summary = fit(composed, Path(tmp) / "run").to_dict()
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    # img_per_s in metrics.jsonl is cumulative: recover the seconds at each line, take the last epoch
    train = [(r["step"], r["step"] * 128 / r["img_per_s"]) for r in rows if r["split"] == "train"]
    last = [t for t in train if t[0] > (epochs - 1) * train[-1][0] / epochs]
    (s0, t0), (s1, t1) = last[0], last[-1]
    summary["steady_img_per_s"] = (s1 - s0) * 128 / (t1 - t0)
    return summary


def vaecli_iwae(k: int, n: int, precision: str = "fp32") -> dict:
    """eval-iwae's path on the 784-200-200-50 model with the networks in `precision`, without
    its precision check (which depends on trained weights; see bench/RESULTS.md)."""
    from vaecli.data import ImageSet
    from vaecli.evaluation.evaluate import PrecisionCheck, image_bounds
    from vaecli.models import build, from_flat

    torch.manual_seed(0)
    model = build(from_flat("mlp", (1, 28, 28), latent_dim=50, hidden=[200, 200], activation="tanh", levels=2))
    images = (torch.rand(n, 1, 28, 28) > 0.5).to(torch.uint8) * 255  # speed does not depend on content
    start = time.perf_counter()
    image_bounds(model, ImageSet(images, levels=2), [k], batch_size=64, precision=PrecisionCheck(precision, "bench"))
    seconds = time.perf_counter() - start
    return {"n": n, "seconds": seconds, "samples_per_s": n * k / seconds}


def help_seconds(reps: int = 5) -> float:
    vae = Path(sys.executable).with_name("vae")
    command = [str(vae)] if vae.exists() else [sys.executable, "-m", "vaecli"]
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        subprocess.run([*command, "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="vaecli training epochs (469 steps each)")
    parser.add_argument("--textbook-steps", type=int, default=300)
    parser.add_argument("--iwae-images", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    root = mnist_root()
    from textbook import images_per_second

    ceiling = sgemm_gflops()
    bf16_ceiling = sgemm_gflops(dtype=torch.bfloat16)
    textbook = images_per_second(root, steps=args.textbook_steps)
    summary = vaecli_train(root, args.epochs)
    ours = summary["img_per_s"]
    compiled = vaecli_train(root, args.epochs, "trainer.compile=true")
    bf16 = vaecli_train(root, 1, "trainer.precision=bf16")
    train_flops = 3 * 2 * mlp_macs([784, 400, 40]) + 3 * 2 * mlp_macs([20, 400, 784])
    iwae = vaecli_iwae(5000, args.iwae_images)
    iwae_bf16 = vaecli_iwae(5000, args.iwae_images, "bf16")
    sample_flops = 2 * mlp_macs([50, 200, 200, 784])  # one decoder pass per importance sample
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "cpu_flags": cpu_flags(),
        "sgemm_gflops": ceiling,
        "bf16_gemm_gflops": bf16_ceiling,
        "textbook_img_per_s": textbook,
        "vaecli_img_per_s": ours,
        "speedup_vs_textbook": ours / textbook,
        "vaecli_train_gflops": ours * train_flops / 1e9,
        "vaecli_train_fraction_of_ceiling": ours * train_flops / 1e9 / ceiling,
        "vaecli_steady_img_per_s": summary["steady_img_per_s"],
        "compiled_img_per_s": compiled["img_per_s"],
        "compiled_steady_img_per_s": compiled["steady_img_per_s"],
        "compiled_steady_fraction_of_ceiling": compiled["steady_img_per_s"] * train_flops / 1e9 / ceiling,
        "bf16_img_per_s": bf16["img_per_s"],
        "iwae_k": 5000,
        "iwae_img_per_s": iwae["n"] / iwae["seconds"],
        "iwae_samples_per_s": iwae["samples_per_s"],
        "iwae_gflops": iwae["samples_per_s"] * sample_flops / 1e9,
        "iwae_fraction_of_ceiling": iwae["samples_per_s"] * sample_flops / 1e9 / ceiling,
        "iwae_bf16_samples_per_s": iwae_bf16["samples_per_s"],
        "iwae_bf16_fraction_of_bf16_ceiling": iwae_bf16["samples_per_s"] * sample_flops / 1e9 / bf16_ceiling,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "help_seconds": help_seconds(),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"vaecli bench, {result['date']}, {result['machine']}")
    print(f"  CPU flags                          {result['cpu_flags']}")
    print(f"  sgemm ceiling (4096^3 fp32)        {ceiling:10.1f} GFLOP/s")
    print(f"  bf16 GEMM ceiling (4096^3)         {bf16_ceiling:10.1f} GFLOP/s   ({bf16_ceiling / ceiling:.1f}x fp32)")
    print(f"  textbook loop (MNIST, b=128)       {textbook:10,.0f} img/s")
    print(f"  vaecli train  (MNIST, b=128)       {ours:10,.0f} img/s   = {result['speedup_vs_textbook']:.2f}x textbook"
          f"   ({result['vaecli_train_gflops']:.1f} GFLOP/s = {result['vaecli_train_fraction_of_ceiling']:.0%} of sgemm)")
    print(f"  ... last epoch alone               {result['vaecli_steady_img_per_s']:10,.0f} img/s")
    print(f"  trainer.compile=true               {result['compiled_img_per_s']:10,.0f} img/s   "
          f"(last epoch {result['compiled_steady_img_per_s']:,.0f} img/s = "
          f"{result['compiled_steady_fraction_of_ceiling']:.0%} of sgemm)")
    print(f"  trainer.precision=bf16             {result['bf16_img_per_s']:10,.0f} img/s")
    print(f"  eval-iwae k=5000 (784-200-200-50)  {result['iwae_img_per_s']:10,.1f} img/s   "
          f"({result['iwae_samples_per_s']:,.0f} samples/s, {result['iwae_gflops']:.1f} GFLOP/s = "
          f"{result['iwae_fraction_of_ceiling']:.0%} of sgemm)")
    print(f"  ... networks in bf16              {result['iwae_bf16_samples_per_s'] / 5000:10,.1f} img/s   "
          f"({result['iwae_bf16_samples_per_s']:,.0f} samples/s = "
          f"{result['iwae_bf16_fraction_of_bf16_ceiling']:.0%} of the bf16 ceiling; "
          f"{result['iwae_bf16_samples_per_s'] / result['iwae_samples_per_s']:.2f}x fp32)")
    print(f"  peak RSS                           {result['peak_rss_mib']:10,.0f} MiB")
    print(f"  vae --help                         {result['help_seconds']:10.2f} s")


if __name__ == "__main__":
    main()
