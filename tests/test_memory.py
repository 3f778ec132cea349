"""vaecli's setting of glibc's malloc (runtime/memory.py): a step's freed tensors stay in the heap for
the next step instead of going back to the OS; off under the user's own settings or VAECLI_MALLOC=glibc."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")

# a 64 MiB tensor allocated and freed: with glibc's defaults it is mmapped and unmapped at once;
# tuned, it comes from the heap and stays for the next step (the heap is trimmed past 1 GiB)
PROBE = """
import torch
from vaecli.runtime import memory
def resident():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096
print(memory.tune(), memory.tune() == memory.tune())
before = resident()
x = torch.ones(64 << 20, dtype=torch.uint8)
del x
print((resident() - before) >> 20)
"""


def probe(**env) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "VAECLI_MALLOC")}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env={**clean, **env}, check=True)
    said, kept = out.stdout.strip().splitlines()
    return said, int(kept)


@glibc
def test_tuned_malloc_keeps_a_freed_step_tensor_for_the_next_and_glibc_defaults_do_not():
    said, kept = probe()
    assert said == "tuned True" and kept >= 60  # once per process; the 64 MiB stayed resident
    said, kept = probe(VAECLI_MALLOC="glibc")
    assert said == "off (VAECLI_MALLOC=glibc) True" and kept < 32  # glibc unmapped it (other pages may fault in)


@glibc
def test_the_users_own_malloc_settings_win():
    said, _ = probe(MALLOC_TRIM_THRESHOLD_="0")
    assert said == "off (the environment sets glibc's malloc) True"
    said, _ = probe(GLIBC_TUNABLES="glibc.malloc.mmap_threshold=131072")
    assert said.startswith("off (the environment sets glibc's malloc)")


def test_every_computing_command_tunes_it(monkeypatch):
    from vaecli.runtime import device as devices, memory

    import torch

    calls, threads = [], torch.get_num_threads()
    monkeypatch.setattr(memory, "tune", lambda: calls.append(1) or "tuned")
    try:
        devices.set_threads(threads)
    finally:
        torch.set_num_threads(threads)
    assert calls == [1]
