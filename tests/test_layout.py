"""workers.count = "auto": one single-threaded worker per core as memory allows, one on a GPU;
CPU quotas and memory limits of the unit's cgroup are honoured."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from whisperd import config, layout


def pair(chosen: layout.Layout) -> tuple[int, int]:
    return chosen.count, chosen.threads


def cfg(**workers) -> config.Config:
    return config.parse({"workers": workers, "model": {"name": "base"}})


def test_auto_runs_one_single_threaded_worker_per_core_when_memory_allows():
    chosen = layout.choose(cfg(), cores=4, total_mb=64_000)
    assert (chosen.count, chosen.threads, chosen.why) == (4, 1, "auto: one per core (4)")


def test_auto_runs_fewer_workers_when_memory_is_short_and_gives_them_the_cores():
    per_worker = layout.worker_mb(cfg())
    chosen = layout.choose(cfg(), cores=8, total_mb=per_worker * 3 / layout.MEMORY_SHARE)
    assert (chosen.count, chosen.threads) == (3, 2)
    assert chosen.why == "auto: memory for 3 (of 8 cores)"
    assert layout.choose(cfg(), cores=8, total_mb=100).count == 1, "never fewer than one"


def test_a_large_model_fits_fewer_workers_than_a_small_one():
    big = config.parse({"model": {"name": "large-v3"}})
    assert layout.worker_mb(big) > 3 * layout.worker_mb(cfg())
    ct2 = config.parse({"model": {"name": "large-v3", "engine": "faster-whisper"}})
    assert layout.worker_mb(ct2) < layout.worker_mb(big), "CTranslate2 keeps its file's size, torch doubles fp16"


def test_auto_on_a_gpu_runs_one_worker_with_every_core():
    assert pair(layout.choose(cfg(), cores=8, total_mb=64_000, gpus=1)) == (1, 8)
    on_cuda = config.parse({"model": {"device": "cuda:1"}})
    assert pair(layout.choose(on_cuda, cores=8, total_mb=64_000, gpus=0)) == (1, 8)
    on_cpu = config.parse({"model": {"device": "cpu"}})
    assert layout.choose(on_cpu, cores=8, total_mb=64_000, gpus=1).count == 8


def test_explicit_count_and_threads_are_kept():
    assert pair(layout.choose(cfg(count=3), cores=8, total_mb=100)) == (3, 2)
    assert pair(layout.choose(cfg(count=2, threads=3), cores=2, total_mb=100)) == (2, 3)


def test_resolve_gives_a_config_with_a_number(monkeypatch):
    monkeypatch.setattr(layout, "cpu_cores", lambda: 2)
    monkeypatch.setattr(layout, "memory_mb", lambda: 64_000.0)
    resolved, chosen = layout.resolve(cfg())
    assert resolved.workers.count == chosen.count == 2 and cfg().workers.count == "auto"


@pytest.fixture
def cgroup(tmp_path, monkeypatch) -> Path:
    """A cgroup v2 tree: root / system.slice / whisperd.service, this process in the last."""
    leaf = tmp_path / "system.slice" / "whisperd.service"
    leaf.mkdir(parents=True)
    monkeypatch.setattr(layout, "CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(layout, "_cgroup_dir", lambda: leaf)
    return leaf


def test_a_cpu_quota_caps_the_cores(cgroup):
    (cgroup / "cpu.max").write_text("max 100000\n")
    assert layout.cpu_cores() == len(os.sched_getaffinity(0))
    (cgroup.parent / "cpu.max").write_text("50000 100000\n")  # CPUQuota=50% on the slice
    assert layout.cpu_cores() == 1


def test_a_memory_limit_caps_the_memory(cgroup):
    host = layout.memory_mb()
    (cgroup / "memory.max").write_text("max\n")
    assert layout.memory_mb() == host
    (cgroup / "memory.max").write_text(f"{3 * 2**30}\n")  # MemoryMax=3G
    assert layout.memory_mb() == 3 * 1024


def test_this_process_cgroup_is_found_and_read():
    """On this machine (cgroup v2 here): the real files parse, and the answers are sane."""
    assert 1 <= layout.cpu_cores() <= len(os.sched_getaffinity(0))
    assert 0 < layout.memory_mb() <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20


def test_check_config_shows_the_layout_it_would_run(tmp_path):
    path = tmp_path / "w.toml"
    path.write_text(f'[storage]\nmedia_root = "{tmp_path}"\n')
    run = subprocess.run(
        [sys.executable, "-m", "whisperd", "check-config", "--config", str(path)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    cores = layout.cpu_cores()
    assert f"OK ({cores} workers × 1 threads here, auto: one per core ({cores})" in run.stdout, run.stdout


def test_no_test_helper_ships_in_the_wheel(tmp_path):
    """The helpers the tests and the bench share (devkit/) stay in the repo: the wheel setup.py builds
    carries whisperd's own modules only, and none of them imports a helper or pytest."""
    repo = Path(__file__).resolve().parent.parent
    src = tmp_path / "src"
    for name in ("whisperd", "devkit", "bench"):
        shutil.copytree(repo / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(repo / name, src / name)
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*build, "-w", str(tmp_path / "out"), str(src)], check=True, capture_output=True, timeout=120)
    (wheel,) = (tmp_path / "out").glob("whisperd-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        sources = {n: z.read(n).decode() for n in names if n.endswith(".py")}
    assert {n.split("/", 1)[0] for n in names} == {"whisperd", wheel.name.split("-py3")[0] + ".dist-info"}, names
    assert "whisperd/testing.py" not in names and "whisperd/testaudio.py" not in names
    for name, text in sources.items():
        assert not re.search(r"^\s*(from|import) (devkit|pytest)\b", text, re.M), f"{name} imports a test helper"
