"""The declared dependency ranges: the exact set CI last tested (constraints/ci.txt) lies inside them, and so does
what is installed here."""

from __future__ import annotations

import configparser
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def _requirements(section: str, key: str) -> list[Requirement]:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    lines = [line.strip() for line in parser[section][key].splitlines()]
    return [Requirement(line) for line in lines if line and not line.startswith("#")]


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "constraints" / "ci.txt").read_text().splitlines():
        if line and not line.startswith("#") and "==" in line:
            name, pinned = line.split("==")
            pins[name.lower().replace("_", "-")] = Version(pinned)
    return pins


def test_ci_constraints_satisfy_the_declared_ranges():
    pins = _pins()
    requirements = _requirements("options", "install_requires") + _requirements("options.extras_require", "test")
    for requirement in requirements:
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is declared but not pinned in constraints/ci.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (requirement, pins[name])


def test_every_core_dependency_is_bounded_above_except_torch():
    # torch is installed first by the user (CPU or CUDA build of their choice); everything else we wrap or
    # subclass must stay on a tested release when upstream publishes a new one.
    for requirement in _requirements("options", "install_requires"):
        if requirement.name != "torch":
            assert any(spec.operator == "<" for spec in requirement.specifier), requirement


def test_installed_versions_lie_in_the_declared_ranges():
    for requirement in _requirements("options", "install_requires"):
        assert requirement.specifier.contains(Version(version(requirement.name)), prereleases=True), requirement


def test_the_wheel_ships_the_bundled_eurosat_subset(tmp_path):
    """The example's default data comes with the package (package_data), so a user who installs gated-vpt and copies
    examples/image_classification.py alone has it."""
    import subprocess
    import sys
    import zipfile

    import pytest

    pytest.importorskip("setuptools", minversion="70.1")  # builds wheels itself (no `wheel` package needed)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            str(REPO),
            "-w",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("gated_vpt-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        sizes = {info.filename: info.file_size for info in archive.infolist()}
    shipped = REPO / "gated_vpt" / "contrib" / "eurosat_vtab1k.npz"
    assert sizes["gated_vpt/contrib/eurosat_vtab1k.npz"] == shipped.stat().st_size
    assert "gated_vpt/contrib/eurosat.py" in sizes and "gated_vpt/precision.py" in sizes
