"""`workers: 0` sizes itself to the CPUs a pod may use, not the node's core count (RESULTS.md, "Sizing")."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from authz_server.config import Config
from authz_server.transport.workers import available_cpus, cgroup_cpu_limit, worker_count

AFFINITY = len(os.sched_getaffinity(0))


def _v2(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cpu.max").write_text(text)
    return root


def _v1(root: Path, quota: int, period: int) -> Path:
    controller = root / "cpu,cpuacct"
    controller.mkdir(parents=True)
    (controller / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (controller / "cpu.cfs_period_us").write_text(f"{period}\n")
    return root


def test_a_cgroup_v2_limit_is_read(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(_v2(tmp_path, "250000 100000\n")) == 2.5
    assert cgroup_cpu_limit(_v2(tmp_path / "unlimited", "max 100000\n")) is None


def test_a_cgroup_v1_limit_is_read(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(_v1(tmp_path / "limited", 150000, 100000)) == 1.5
    assert cgroup_cpu_limit(_v1(tmp_path / "unlimited", -1, 100000)) is None


def test_no_cgroup_files_means_no_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path) is None
    assert available_cpus(tmp_path) == AFFINITY


@pytest.mark.parametrize(("cpu_max", "expected"), [("50000 100000", 1), ("100000 100000", 1), ("199999 100000", 1)])
def test_a_fractional_limit_rounds_down_to_at_least_one_worker(tmp_path: Path, cpu_max: str, expected: int) -> None:
    assert available_cpus(_v2(tmp_path, cpu_max)) == min(expected, AFFINITY)


def test_the_limit_never_raises_the_count_above_the_affinity_mask(tmp_path: Path) -> None:
    assert available_cpus(_v2(tmp_path, "6400000 100000")) == AFFINITY


def test_an_unreadable_limit_falls_back_to_the_affinity_mask(tmp_path: Path) -> None:
    assert available_cpus(_v2(tmp_path, "garbage")) == AFFINITY


def test_an_explicit_worker_count_wins() -> None:
    assert worker_count(Config(workers=3)) == 3
    assert worker_count(Config(workers=0)) == available_cpus()
