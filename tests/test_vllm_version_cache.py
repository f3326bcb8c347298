"""``vllm --version`` is asked once per executable and modification time, kept in the
state_dir, and keyed into the release whose tables apply."""

from __future__ import annotations

import os
from pathlib import Path

from gpumgr.engines.vllm_version import VllmVersions


def _fake_vllm(tmp_path: Path, version: str) -> tuple[Path, Path]:
    calls = tmp_path / "calls"
    exe = tmp_path / "bin" / "vllm"
    exe.parent.mkdir(exist_ok=True)
    exe.write_text(f"#!/bin/sh\necho x >> {calls}\necho 'INFO noise'\necho {version}\n")
    exe.chmod(0o755)
    return exe, calls


def _calls(calls: Path) -> int:
    return len(calls.read_text().splitlines()) if calls.exists() else 0


def test_the_answer_is_cached_by_path_and_mtime_across_instances(tmp_path: Path) -> None:
    exe, calls = _fake_vllm(tmp_path, "0.34.0")
    cache = tmp_path / "state" / "vllm-versions.json"
    first = VllmVersions(cache).answer([str(exe)], os.environ)
    assert (first.version, first.cached, _calls(calls)) == ("0.34.0", False, 1)
    second = VllmVersions(cache).answer([str(exe)], os.environ)  # a restarted daemon
    assert (second.version, second.cached, _calls(calls)) == ("0.34.0", True, 1)
    assert second.release.extensible_kv_cache and second.release.flags.version == "0.34.0"


def test_an_upgrade_that_rewrites_the_executable_is_asked_again(tmp_path: Path) -> None:
    exe, calls = _fake_vllm(tmp_path, "0.33.0")
    versions = VllmVersions(tmp_path / "v.json")
    assert versions.answer([str(exe)], os.environ).version == "0.33.0"
    exe, _ = _fake_vllm(tmp_path, "0.35.1")
    st = exe.stat()
    os.utime(exe, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    answer = versions.answer([str(exe)], os.environ)
    assert answer.version == "0.35.1" and _calls(calls) == 2
    assert answer.release.newer_than_known and answer.release.flags.version == "0.34.0"


def test_a_missing_or_failing_executable_is_an_answer_not_an_exception(tmp_path: Path) -> None:
    versions = VllmVersions(None)
    assert not versions.answer([str(tmp_path / "nope")], os.environ).found
    bad = tmp_path / "bad"
    bad.write_text("#!/bin/sh\necho boom >&2\nexit 3\n")
    bad.chmod(0o755)
    answer = versions.answer([str(bad)], os.environ)
    assert answer.found and answer.version is None and answer.error == "exit 3: boom"
    assert answer.release.flags.version == "0.33.0"  # unknown: the default release
