"""The wheel ships every file of the package that git tracks, and nothing else.

A wheel built from a clean clone once lacked ``pushserver/status.html`` (package-data named
only static/ and templates/), so an installed status page failed while every test passed on
the editable install. This builds a wheel from a copy of exactly the tracked files, as a
clean clone would, and compares its ``pushserver/`` with ``git ls-files pushserver/``.
``PUSHSERVER_TEST_WHEEL=dist/django_pushserver-....whl`` checks that wheel instead (one CI
built). The server-level tests run against an installed wheel in ``nox -s tests_wheel``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.project.helpers import copy_tracked, tracked_files

ROOT = Path(__file__).resolve().parent.parent


def present(name: str) -> bool:
    return (ROOT / name).is_file()  # a tracked file deleted in the work tree is not shipped


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    given = os.environ.get("PUSHSERVER_TEST_WHEEL")
    if given:
        return Path(given)
    source = copy_tracked(ROOT, tmp_path_factory.mktemp("clean-clone"))
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = out.glob("django_pushserver-*.whl")
    return built


def test_the_wheel_ships_every_tracked_package_file(wheel):
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name for name in archive.namelist() if name.startswith("pushserver/")}
    tracked = {name for name in tracked_files(ROOT, "pushserver") if present(name)}
    assert tracked - shipped == set(), "tracked but missing from the wheel"
    assert shipped - tracked == set(), "in the wheel but not tracked by git"
    # What made the installed status page fail, and PEP 561's marker.
    assert {"pushserver/status.html", "pushserver/py.typed"} <= shipped


def test_the_wheel_declares_the_supported_versions(wheel):
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        lines = archive.read(metadata).decode().splitlines()
    assert "Requires-Python: <3.14,>=3.11" in lines
    requires = [line for line in lines if line.startswith("Requires-Dist: django")]
    assert requires == ["Requires-Dist: django<6.2,>=5.2"]
    classifiers = {line.split(": ", 1)[1] for line in lines if line.startswith("Classifier: ")}
    for version in ("3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {version}" in classifiers
    for version in ("5.2", "6.0", "6.1"):
        assert f"Framework :: Django :: {version}" in classifiers
