"""Sharing the CPU between vae processes (sharing.py): the registry, its decisions (process counts
-> thread counts), re-balancing, and real `vae` processes counting each other."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import TINY, one_json, vae

from vaecli.runtime import sharing
from vaecli.runtime.sharing import CoreShare, fair_threads


@pytest.mark.parametrize("cores, processes, threads", [(2, 1, 2), (2, 2, 1), (2, 3, 1), (8, 3, 2), (8, 2, 4),
                                                       (1, 1, 1), (16, 1, 16), (4, 0, 4)])
def test_each_process_gets_an_equal_share_of_the_cores_and_at_least_one_thread(cores, processes, threads):
    assert fair_threads(cores, processes) == threads


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def register(folder, pid: int, cores, started: str | None = None) -> None:
    started = sharing._start_time(pid) if started is None else started
    (folder / str(pid)).write_text(f"{pid};{started or ''};{','.join(map(str, sorted(cores)))}")


def test_the_registry_counts_live_processes_on_shared_cores_only(tmp_path):
    me = CoreShare(tmp_path)
    me.join(adjust=False)
    assert (tmp_path / str(os.getpid())).is_file() and me.sharing() == 1
    peer, gone = sleeper(), sleeper()
    gone.kill()
    gone.wait()
    try:
        register(tmp_path, peer.pid, me.cores)
        assert me.sharing() == 2
        register(tmp_path, gone.pid, me.cores)  # killed without leaving: ignored, and its file removed
        assert me.sharing() == 2 and not (tmp_path / str(gone.pid)).exists()
        register(tmp_path, peer.pid, me.cores, started="1")  # the pid now belongs to another process
        assert me.sharing() == 1
        register(tmp_path, peer.pid, {max(me.cores) + 1000})  # pinned to other cores: no competition
        assert me.sharing() == 1
        (tmp_path / "12345").write_text("half-writ")  # a file being written: ignored
        assert me.sharing() == 1
        zombie = sleeper()
        register(tmp_path, zombie.pid, me.cores)
        assert me.sharing() == 2
        zombie.kill()  # exited but not yet reaped by its parent (us): it computes nothing
        for _ in range(100):
            if sharing._zombie(zombie.pid):
                break
            time.sleep(0.02)
        assert sharing._zombie(zombie.pid) and me.sharing() == 1
        zombie.wait()
    finally:
        peer.kill()
        peer.wait()
        me.leave()
    assert not (tmp_path / str(os.getpid())).exists()


def test_a_process_takes_its_share_and_takes_the_cores_back_when_the_other_ends(tmp_path):
    before = torch.get_num_threads()
    me = CoreShare(tmp_path, interval=0.0)
    me.cores = {0, 1}  # as on a 2-core machine, whatever this one has
    peer = sleeper()
    try:
        me.join()
        assert torch.get_num_threads() == 2
        register(tmp_path, peer.pid, me.cores)
        me.tick()
        assert torch.get_num_threads() == 1
        peer.kill()
        peer.wait()
        me.tick()
        assert torch.get_num_threads() == 2
        fixed = CoreShare(tmp_path, interval=0.0)
        fixed.join(adjust=False)  # trainer.threads=N: counted by others, never adjusted
        torch.set_num_threads(3)
        fixed.tick()
        assert torch.get_num_threads() == 3 and me.sharing() == 1  # same pid, one file
    finally:
        peer.kill()
        me.leave()
        torch.set_num_threads(before)


def test_an_interval_limits_how_often_the_registry_is_read(tmp_path, monkeypatch):
    me = CoreShare(tmp_path, interval=60.0)
    me.join()
    reads = []
    monkeypatch.setattr(me, "threads", lambda: reads.append(1) or torch.get_num_threads())
    for _ in range(100):
        me.tick()
    assert reads == []  # join looked; the next look is a minute away


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to share")
def test_a_vae_process_counts_another_and_gets_its_cores_back_after_a_kill(tmp_path, env):
    cores = len(os.sched_getaffinity(0))
    registry = tmp_path / "registry"
    e = dict({k: v for k, v in env.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
             VAECLI_REGISTRY=str(registry))
    helper = subprocess.Popen([sys.executable, "-c", "import time; from vaecli.runtime import sharing; "
                               "sharing.share().join(adjust=False); print('joined', flush=True); time.sleep(120)"],
                              env=e, stdout=subprocess.PIPE, text=True)
    try:
        assert helper.stdout.readline().strip() == "joined"
        shared = one_json(vae("train", *TINY, "--run-dir", str(tmp_path / "a"), "--json", env=e))
        assert shared["threads"] == fair_threads(cores, 2)
    finally:
        helper.send_signal(signal.SIGKILL)  # no chance to leave the registry
        helper.wait()
    alone = one_json(vae("train", *TINY, "--run-dir", str(tmp_path / "b"), "--json", env=e))
    assert alone["threads"] == cores and sorted(p.name for p in registry.iterdir()) == []
