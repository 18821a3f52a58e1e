"""Every install command in the README and the docs works as written, in a fresh virtual
environment, from a copy of the checkout's tracked files (what a clone gives).

``django-pushserver`` on PyPI is the 2014 release 0.3.4, so a command that installs by that
name installs the wrong package: the docs install from the checkout or a wheel built from
it. This collects every shell line and inline command that runs ``pip install`` (or builds
the wheel) and runs it the way the page shows it:

* the lines of one fenced block up to its last install line, in order, with a fresh
  environment "active" (first on ``PATH``; so ``pip`` and ``python3`` are its own), in the
  copy's root directory (the lines after it use what was installed: servers, not installs);
  each inline command on its own;
* a step that starts a server (``runpushserver``) runs ``check`` instead, so the demo's
  install is checked too; ``nox -s ...`` steps are left out (their sessions are CI's).

pip may fetch from the package index. docs/tutorial.md is followed by its own test.

Nine fresh environments take minutes (three to eight on this project's machines), so the
commands run in ``nox -s install_docs`` (and CI), which sets ``PUSHSERVER_TEST_INSTALL_DOCS=1``;
elsewhere they skip, and only the check that no command installs by the PyPI name runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

from tests.project.helpers import copy_tracked

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted(page.name for page in (ROOT / "docs").glob("*.md") if page.name != "tutorial.md")
PAGES = ["README.md", "example/README.md", *(f"docs/{name}" for name in DOCS)]
INSTALLS = re.compile(r"\bpip install\b|-m build\b")
FENCE = re.compile(r"^```(?:sh|bash|console)\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`([^`\n]*\bpip install [^`\n]*)`")


def commands(text: str) -> list[list[str]]:
    """The recipes of one page: each a list of shell steps, run in order."""
    recipes: list[list[str]] = []
    for block in FENCE.findall(text):
        lines = [re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines()]
        lines = [line for line in lines if line]
        installing = [n for n, line in enumerate(lines) if INSTALLS.search(line)]
        if installing:
            upto = lines[: installing[-1] + 1]
            recipes.append([step for line in upto for step in steps(line)])
    for inline in INLINE.findall(FENCE.sub("", text)):
        recipes.append(steps(inline))
    return recipes


def steps(line: str) -> list[str]:
    out = []
    for step in (part.strip() for part in line.split("&&")):
        if step.startswith("nox "):
            continue
        if "runpushserver" in step:
            step = step.split("runpushserver")[0] + "check"
        out.append(step)
    return out


def all_recipes() -> list[tuple[str, list[str]]]:
    found: dict[str, tuple[str, list[str]]] = {}
    for page in PAGES:
        path = ROOT / page
        if path.is_file():
            for recipe in commands(path.read_text(encoding="utf-8")):
                found.setdefault(" && ".join(recipe), (page, recipe))
    return sorted(found.values(), key=lambda item: " && ".join(item[1]))


RECIPES = all_recipes()


def test_the_docs_have_install_commands_and_none_installs_from_pypi_by_name():
    assert len(RECIPES) >= 5  # the scan found them
    for page, recipe in RECIPES:
        for step in recipe:
            assert "django-pushserver" not in step, f"{page}: {step!r} installs PyPI's 0.3.4"


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """The tracked files, as a clone has them."""
    return copy_tracked(ROOT, tmp_path_factory.mktemp("clone"))


@pytest.mark.skipif(
    not os.environ.get("PUSHSERVER_TEST_INSTALL_DOCS"),
    reason="a fresh environment per command, minutes in all: nox -s install_docs (CI runs it)",
)
@pytest.mark.parametrize(
    ("page", "recipe"), RECIPES, ids=[" && ".join(recipe) for _, recipe in RECIPES]
)
def test_install_command_works_as_written(page, recipe, checkout, tmp_path):
    work = tmp_path / "clone"
    shutil.copytree(checkout, work, symlinks=True)
    environment = tmp_path / "env"
    venv.EnvBuilder(with_pip=True, clear=True).create(environment)
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE", "PUSHSERVER_TEST_CONFIG")
    }
    env["VIRTUAL_ENV"] = str(environment)
    env["PATH"] = os.pathsep.join([str(environment / "bin"), env.get("PATH", "")])
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    for step in recipe:
        result = subprocess.run(
            step, shell=True, cwd=work, env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, f"{page}: {step!r} failed:\n{result.stdout}{result.stderr}"
    # Whatever the recipe installed into, pushserver is importable there and not from the
    # copy's source tree only: an installed distribution.
    python = work / ".venv" / "bin" / "python"
    if not python.exists():
        python = environment / "bin" / "python"
    probe = subprocess.run(
        [str(python), "-c",
         "import importlib.metadata as m, pushserver; print(m.version('django-pushserver'))"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    installs_pushserver = any(
        re.search(r"pip install (-e )?['\"]?(\.|dist/)", step) for step in recipe
    )
    if installs_pushserver:
        assert probe.returncode == 0, probe.stderr
        assert probe.stdout.strip() != "0.3.4"
