"""scripts/install.sh into a temporary root with fake useradd/usermod/getent/systemctl; the unit."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

INSTALL = REPO_ROOT / "scripts" / "install.sh"
UNIT = REPO_ROOT / "systemd" / "gpumgr.service"


def _shim(bindir: Path, name: str, body: str) -> None:
    path = bindir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def shims(tmp_path: Path) -> tuple[Path, Path]:
    bindir = tmp_path / "shims"
    bindir.mkdir()
    calls = tmp_path / "calls.log"
    for name in ("useradd", "usermod", "systemctl"):
        _shim(bindir, name, f'echo "{name} $*" >> "{calls}"\n')
    # no gpumgr user yet; the host has a video group but no render group
    _shim(bindir, "getent", 'case "$1 $2" in "group video") echo "video:x:44:"; exit 0;; esac\nexit 2\n')
    # the virtualenv: a gpumgr that runs this checkout's package (no network in tests)
    _shim(bindir, "fake-bootstrap",
          f'mkdir -p "$1/bin"\nprintf \'#!/bin/sh\\nPYTHONPATH={REPO_ROOT}/daemon exec '
          f'{sys.executable} -m gpumgr.cli "$@"\\n\' > "$1/bin/gpumgr"\nchmod +x "$1/bin/gpumgr"\n'
          f'echo "bootstrap $1" >> "{calls}"\n')
    return bindir, calls


def _run(root: Path, shims: tuple[Path, Path], *args: str) -> subprocess.CompletedProcess[str]:
    bindir, _ = shims
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}",
           "GPUMGR_BOOTSTRAP": str(bindir / "fake-bootstrap"), "HOME": str(root)}
    env.pop("GPUMGR_CONFIG_DIR", None)
    return subprocess.run(["bash", str(INSTALL), "--root", str(root), *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def _host_calls(shims: tuple[Path, Path]) -> list[str]:
    """What the recording stubs of useradd, usermod and systemctl saw (bootstrap aside)."""
    log = shims[1]
    lines = log.read_text().splitlines() if log.exists() else []
    return [x for x in lines if not x.startswith("bootstrap ")]


def _outside(root: Path, before: set[Path], tmp: Path) -> set[Path]:
    """Paths under ``tmp`` created since ``before``, other than under ``root`` and the log."""
    now = {p for p in tmp.rglob("*")}
    return {p for p in now - before
            if root not in p.parents and p != root and p.name != "calls.log"}


@pytest.mark.slow  # install.sh three times: validate, doctor, systemctl shims
def test_install_reinstall_and_uninstall_under_root_touch_nothing_outside_it(
    tmp_path: Path, shims: tuple[Path, Path],
) -> None:
    root = tmp_path / "root"
    before = set(tmp_path.rglob("*"))
    first = _run(root, shims)
    assert first.returncode == 0, first.stdout + first.stderr
    assert _host_calls(shims) == [], "with --root no host command runs"
    assert "would run: useradd --system" in first.stdout
    assert "would run: usermod -aG video gpumgr" in first.stdout
    assert "render" not in first.stdout, "no render group on this host: not asked for"
    assert "would run: systemctl daemon-reload" in first.stdout
    assert _outside(root, before, tmp_path) == set()
    etc = root / "etc" / "gpumgr"
    assert {p.name for p in etc.glob("*.yaml")} == {"providers.yaml", "model-mappings.yaml", "gpumgr.yaml"}
    assert stat.S_IMODE((etc / "credentials").stat().st_mode) == 0o700
    assert (root / "etc/systemd/system/gpumgr.service").read_text() == UNIT.read_text()
    link = root / "usr/local/bin/gpumgr"
    assert link.is_symlink() and os.readlink(link) == str(root / "opt/gpumgr/.venv/bin/gpumgr")
    assert (root / "opt/gpumgr/daemon/gpumgr/__init__.py").exists()
    assert "gpumgr validate:" in first.stdout and "ok: " in first.stdout
    assert "Next steps" in first.stdout
    manifest = (root / "var/lib/gpumgr/install.manifest").read_text().splitlines()
    assert f"tree {root}/opt/gpumgr" in manifest
    assert f"file {root}/etc/systemd/system/gpumgr.service" in manifest
    assert f"link {link}" in manifest
    assert f"config {etc}/providers.yaml" in manifest

    # an operator edits the configuration; a re-install (upgrade) keeps it
    (etc / "providers.yaml").write_text((etc / "providers.yaml").read_text() + "# mine\n")
    second = _run(root, shims)
    assert second.returncode == 0, second.stderr
    assert (etc / "providers.yaml").read_text().endswith("# mine\n")
    assert f"kept {etc}/providers.yaml" in second.stdout
    assert len(manifest) == len(set(
        (root / "var/lib/gpumgr/install.manifest").read_text().splitlines())), "no duplicates"

    third = _run(root, shims, "--uninstall")
    assert third.returncode == 0, third.stderr
    assert _host_calls(shims) == [], "--uninstall --root never runs systemctl on the host"
    assert "would run: systemctl disable --now gpumgr.service" in third.stdout
    assert not (root / "etc/systemd/system/gpumgr.service").exists()
    assert not link.exists() and not link.is_symlink()
    assert not (root / "opt/gpumgr").exists()
    assert not (root / "var/lib/gpumgr/install.manifest").exists()
    assert (etc / "providers.yaml").read_text().endswith("# mine\n"), "configuration kept"
    assert _outside(root, before, tmp_path) == set()


@pytest.mark.parametrize("theirs", ["usr/local/bin/gpumgr", "etc/systemd/system/gpumgr.service",
                                    "opt/gpumgr/their-file"])
def test_install_stops_before_replacing_a_file_gpumgr_did_not_install(
    tmp_path: Path, shims: tuple[Path, Path], theirs: str,
) -> None:
    root = tmp_path / "root"
    path = root / theirs
    path.parent.mkdir(parents=True)
    path.write_text("#!/bin/sh\necho the operator's own\n")
    refused = _run(root, shims)
    assert refused.returncode == 1
    assert "not installed by gpumgr" in refused.stderr and "--force" in refused.stderr
    assert str(path.parent if theirs.startswith("opt/") else path) in refused.stderr
    assert path.read_text() == "#!/bin/sh\necho the operator's own\n"
    assert not (root / "etc/gpumgr").exists(), "nothing written before the refusal"
    assert not (root / "var/lib/gpumgr/install.manifest").exists()

    forced = _run(root, shims, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "--force: replacing" in forced.stdout
    assert (root / "usr/local/bin/gpumgr").is_symlink()


def test_uninstall_removes_only_what_the_manifest_lists(
    tmp_path: Path, shims: tuple[Path, Path],
) -> None:
    root = tmp_path / "root"
    nothing = _run(root, shims, "--uninstall")
    assert nothing.returncode == 1 and "nothing removed" in nothing.stdout
    assert _run(root, shims).returncode == 0
    # the operator replaces the command with their own after the install: not ours any more
    link = root / "usr/local/bin/gpumgr"
    link.unlink()
    link.write_text("#!/bin/sh\necho mine\n")
    other = root / "usr/local/bin/other-tool"
    other.write_text("#!/bin/sh\n")
    done = _run(root, shims, "--uninstall")
    assert done.returncode == 0, done.stderr
    assert link.read_text() == "#!/bin/sh\necho mine\n", "a listed link that is now a file stays"
    assert other.exists()
    assert not (root / "opt/gpumgr").exists()
    assert _host_calls(shims) == []


def test_install_refuses_to_run_unprivileged_without_root(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root")
    done = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 2 and "run as root" in done.stderr


def test_bootstrap_with_an_empty_argument_installs_no_extras(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "pip.log"
    _shim(venv / "bin", "python", f'echo "$*" >> "{log}"\n')
    env = {**os.environ, "GPUMGR_VENV": str(venv)}
    for extras, expected in (("", f"-m pip install --quiet -e {REPO_ROOT}"),
                             (None, f"-m pip install --quiet -e {REPO_ROOT}[test]")):
        (venv / ".gpumgr-installed").unlink(missing_ok=True)
        log.unlink(missing_ok=True)
        args = ["bash", str(REPO_ROOT / "scripts/bootstrap.sh")] + ([] if extras is None else [extras])
        subprocess.run(args, env=env, check=True, capture_output=True, timeout=30)
        assert log.read_text().splitlines()[-1] == expected


# -- the unit ------------------------------------------------------------------------------------


def _directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_unit_needs_no_render_group_and_loads_credentials() -> None:
    d = _directives()
    assert "SupplementaryGroups" not in d and "Group" not in d
    assert d["User"] == ["gpumgr"]
    assert d["LoadCredential"] == ["gpumgr:/etc/gpumgr/credentials"]


def test_every_linked_document_exists() -> None:
    """Documentation= of the unit, docs/… and DESIGN.md §N named by code, unit and API."""
    missing: list[str] = []
    for url in _directives()["Documentation"]:
        path = REPO_ROOT / url.removeprefix("file:///opt/gpumgr/")
        if not path.exists():
            missing.append(url)
    for src in [UNIT, *(REPO_ROOT / "daemon").rglob("*.py"), *(REPO_ROOT / "scripts").glob("*")]:
        if src.is_dir():
            continue
        text = src.read_text(errors="replace")
        for ref in re.findall(r"docs/[A-Za-z0-9_-]+\.md", text):
            if not (REPO_ROOT / ref).exists():
                missing.append(f"{src.name}: {ref}")
        design = REPO_ROOT / "DESIGN.md"
        for section in re.findall(r"DESIGN\.md §(\d+)", text):
            if not design.exists() or f"\n## {section}. " not in design.read_text():
                missing.append(f"{src.name}: DESIGN.md §{section}")
    assert not missing, missing


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed (apt-get install systemd provides it)")
def test_systemd_analyze_verify_passes(tmp_path: Path) -> None:
    # verify insists that ExecStart exists: point it at a binary that does, nothing else changes
    unit = tmp_path / "gpumgr.service"
    unit.write_text(UNIT.read_text().replace("/opt/gpumgr/.venv/bin/gpumgr", "/bin/true"))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0 and "gpumgr.service" not in done.stderr, done.stderr
    broken = tmp_path / "broken.service"
    broken.write_text(unit.read_text().replace("Type=notify", "Type=notifyy"))
    bad = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert "notifyy" in bad.stderr, "verify must be able to fail"
