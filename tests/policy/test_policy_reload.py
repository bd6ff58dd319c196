"""Hot reload: valid changes swap in, invalid ones keep the last good set, deletions and symlink swaps count."""

from __future__ import annotations

import gc
import logging
import os
import shutil
import threading
from pathlib import Path

import pytest
from policy_support import CHECKOUT, PAYMENTS, STRANGER, allowed_calls, decide

from authz_server.policy import PolicyConfig, PolicyError, PolicyReason, PolicySet, PolicySource, source

ORIGINAL = allowed_calls(
    "payments-api",
    f"""
    workload: {PAYMENTS}
    rules:
      - name: charges
        from: [{{id: {CHECKOUT}}}]
        to: [{{methods: [POST], paths: [/v1/charges]}}]
    """,
)
CHANGED = ORIGINAL.replace("[POST]", "[POST, GET]")
BROKEN = ORIGINAL.replace("methods: [POST]", "methods: [post]")


def make_source(*paths: Path) -> tuple[PolicySource, list[PolicySet]]:
    applied: list[PolicySet] = []
    # gc_freeze off: freezing the whole test process's heap is not this test's business (see test_heap_is_frozen).
    policy_source = source(PolicyConfig(paths=tuple(str(p) for p in paths), poll_interval_s=3600, gc_freeze=False))
    policy_source.load()
    policy_source.start(applied.append)
    return policy_source, applied


def test_valid_change_is_swapped_in_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "payments.yaml").write_text(ORIGINAL)
    policy_source, applied = make_source(tmp_path)
    first = policy_source.current
    assert first is not None
    assert not decide(first, CHECKOUT, "GET", "/v1/charges").allowed
    (tmp_path / "payments.yaml").write_text(CHANGED)
    with caplog.at_level(logging.INFO, logger="authz_server.policy"):
        assert policy_source.poll()
    assert len(applied) == 1 and applied[0].version != first.version
    assert decide(applied[0], CHECKOUT, "GET", "/v1/charges").allowed
    assert f"{first.version} -> {applied[0].version}: changed AllowedCalls payments/payments-api" in caplog.text
    status = policy_source.status()
    assert status["version"] == applied[0].version and status["reloads"] == "1" and status["state"] == "ok"
    assert (status["documents"], status["rules"]) == ("1", "1")
    # Nothing changed: no new set.
    assert not policy_source.poll()
    policy_source.close()


def test_invalid_change_keeps_the_last_good_set(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "payments.yaml").write_text(ORIGINAL)
    policy_source, applied = make_source(tmp_path)
    good = policy_source.current
    assert good is not None
    (tmp_path / "payments.yaml").write_text(BROKEN)
    with caplog.at_level(logging.ERROR, logger="authz_server.policy"):
        assert not policy_source.poll()
    assert applied == [] and policy_source.current is good
    status = policy_source.status()
    assert status["reload_failures"] == "1" and status["state"] == "degraded"
    assert "payments.yaml:11" in status["last_error"] and "'post'" in status["last_error"]
    assert f"change rejected, still serving {good.version}" in caplog.text
    # Fixing the file clears the error; going back to the same content changes no version.
    (tmp_path / "payments.yaml").write_text(ORIGINAL)
    assert not policy_source.poll()
    assert policy_source.status()["state"] == "ok"
    policy_source.close()


def test_deleted_file_removes_its_declarations(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "payments.yaml").write_text(ORIGINAL)
    other = ORIGINAL.replace("payments-api\n", "other\n", 1).replace(CHECKOUT, STRANGER)
    policy_source, applied = make_source(tmp_path)
    (tmp_path / "other.yaml").write_text(other)
    with caplog.at_level(logging.INFO, logger="authz_server.policy"):
        assert policy_source.poll()
    assert "added AllowedCalls payments/other" in caplog.text
    assert decide(applied[-1], STRANGER, "POST", "/v1/charges").allowed
    (tmp_path / "other.yaml").unlink()
    with caplog.at_level(logging.INFO, logger="authz_server.policy"):
        assert policy_source.poll()
    assert "removed AllowedCalls payments/other" in caplog.text
    assert not decide(applied[-1], STRANGER, "POST", "/v1/charges").allowed
    assert decide(applied[-1], CHECKOUT, "POST", "/v1/charges").allowed
    (tmp_path / "payments.yaml").unlink()
    assert policy_source.poll()
    assert decide(applied[-1], CHECKOUT, "POST", "/v1/charges").reason is PolicyReason.NO_POLICY
    policy_source.close()


def test_configured_file_deleted_is_an_error_and_keeps_serving(tmp_path: Path) -> None:
    path = tmp_path / "payments.yaml"
    path.write_text(ORIGINAL)
    policy_source, applied = make_source(path)
    path.unlink()
    assert not policy_source.poll()
    assert applied == []
    assert "no such file or directory" in policy_source.status()["last_error"]
    policy_source.close()


def _configmap_version(mount: Path, name: str, text: str) -> None:
    """What the kubelet does: write a new hidden version directory, then swap the ..data symlink atomically."""
    version = mount / f"..{name}"
    version.mkdir()
    (version / "payments.yaml").write_text(text)
    previous = os.readlink(mount / "..data") if (mount / "..data").is_symlink() else None
    os.symlink(version.name, mount / "..data_tmp")
    os.replace(mount / "..data_tmp", mount / "..data")
    if not (mount / "payments.yaml").is_symlink():
        os.symlink("..data/payments.yaml", mount / "payments.yaml")
    if previous is not None:
        shutil.rmtree(mount / previous)


def test_configmap_symlink_swap(tmp_path: Path) -> None:
    mount = tmp_path / "mount"
    mount.mkdir()
    _configmap_version(mount, "2026_11_24_v1", ORIGINAL)
    policy_source, applied = make_source(mount)
    assert policy_source.status()["documents"] == "1"  # hidden ..dirs are not read twice
    _configmap_version(mount, "2026_11_24_v2", CHANGED)
    assert policy_source.poll()
    assert decide(applied[-1], CHECKOUT, "GET", "/v1/charges").allowed
    _configmap_version(mount, "2026_11_24_v3", BROKEN)
    assert not policy_source.poll()
    assert policy_source.current is applied[-1]
    policy_source.close()


def test_directory_replaced_by_symlink_swap(tmp_path: Path) -> None:
    for name, text in (("a", ORIGINAL), ("b", CHANGED)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "payments.yaml").write_text(text)
    link = tmp_path / "current"
    os.symlink(tmp_path / "a", link)
    policy_source, applied = make_source(link)
    os.symlink(tmp_path / "b", tmp_path / "next")
    os.replace(tmp_path / "next", link)
    assert policy_source.poll()
    assert decide(applied[-1], CHECKOUT, "GET", "/v1/charges").allowed
    policy_source.close()


def test_watcher_thread_applies_changes(tmp_path: Path) -> None:
    (tmp_path / "payments.yaml").write_text(ORIGINAL)
    applied = threading.Event()
    sets: list[PolicySet] = []

    def apply(new: PolicySet) -> None:
        sets.append(new)
        applied.set()

    policy_source = source(PolicyConfig(paths=(str(tmp_path),), poll_interval_s=0.05, gc_freeze=False))
    policy_source.load()
    policy_source.start(apply)
    try:
        (tmp_path / "payments.yaml").write_text(CHANGED)
        assert applied.wait(10)
        assert decide(sets[-1], CHECKOUT, "GET", "/v1/charges").allowed
    finally:
        policy_source.close()


def test_invalid_initial_set_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "payments.yaml").write_text(BROKEN)
    with pytest.raises(PolicyError) as caught:
        source(PolicyConfig(paths=(str(tmp_path),))).load()
    assert "payments.yaml:11" in str(caught.value)


def test_no_paths_means_default_deny(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="authz_server.policy"):
        policy_source = source(PolicyConfig(gc_freeze=False))
        policies = policy_source.load()
    assert "every call is denied" in caplog.text
    assert decide(policies, CHECKOUT, "POST", "/v1/charges").reason is PolicyReason.NO_POLICY
    assert policy_source.status()["documents"] == "0"
    policy_source.start(lambda new: None)
    policy_source.close()


def test_config_validation() -> None:
    assert PolicyConfig(poll_interval_s=0, workload_key="").validate() == [
        "poll_interval_s: must be > 0, got 0",
        "workload_key: must not be empty",
    ]


def test_symlink_loops_and_hidden_entries_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "payments.yaml").write_text(ORIGINAL)
    (tmp_path / "nested").mkdir()
    os.symlink(tmp_path, tmp_path / "nested" / "loop")
    (tmp_path / ".hidden.yaml").write_text("not: [valid")
    (tmp_path / "notes.txt").write_text("not yaml")
    policy_source, _ = make_source(tmp_path)
    assert policy_source.status()["documents"] == "1"
    policy_source.close()


def test_heap_is_frozen_after_a_load(tmp_path: Path) -> None:
    (tmp_path / "payments.yaml").write_text(ORIGINAL)
    gc.unfreeze()
    try:
        source(PolicyConfig(paths=(str(tmp_path),), gc_freeze=False)).load()
        assert gc.get_freeze_count() == 0
        source(PolicyConfig(paths=(str(tmp_path),))).load()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_same_size_edit_within_one_mtime_tick_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "payments.yaml"
    path.write_text(ORIGINAL)
    policy_source, applied = make_source(tmp_path)
    before = os.stat(path)
    path.write_text(ORIGINAL.replace("[POST]", "[PUT] "))  # same size, same inode
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # and, as on a coarse clock, the same mtime
    assert os.stat(path).st_size == before.st_size
    assert policy_source.poll()
    assert decide(applied[-1], CHECKOUT, "PUT", "/v1/charges").allowed
    policy_source.close()
