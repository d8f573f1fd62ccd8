"""environment.yml and pyproject.toml must describe the same pinned environment.

Both files are hand-written. If one gains a dependency or changes a pin, this test says which
line of the other has to follow.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LAMA_PIN = "simple-lama-inpainting==0.1.2"


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def _conda_deps(environment: dict) -> list[str]:
    return [d for d in environment["dependencies"] if isinstance(d, str)]


def _pip_lines(environment: dict) -> list[str]:
    sections = [d["pip"] for d in environment["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, "environment.yml needs exactly one `pip:` section"
    return sections[0]


def _by_name(lines: list[str]) -> dict[str, Requirement]:
    reqs: dict[str, Requirement] = {}
    for line in lines:
        if line.startswith("-"):  # pip options such as `-e .`
            continue
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name not in reqs, f"{req.name} is listed twice"
        reqs[name] = req
    return reqs


def _pyproject_requirements(pyproject: dict) -> dict[str, Requirement]:
    project = pyproject["project"]
    lines = list(project["dependencies"])
    extras = project.get("optional-dependencies", {})
    for extra in ("book", "dev"):
        assert extra in extras, f"pyproject.toml has no [{extra}] extra"
        lines += extras[extra]
    return _by_name(lines)


def test_every_pyproject_dependency_is_pinned_identically_in_environment_yml(pyproject, environment):
    expected = _pyproject_requirements(pyproject)
    listed = _by_name(_pip_lines(environment))
    missing = sorted(set(expected) - set(listed))
    assert not missing, f"environment.yml's pip list lacks: {', '.join(str(expected[n]) for n in missing)}"
    for name, req in expected.items():
        got = listed[name]
        assert got.specifier == req.specifier, (
            f"{req.name}: pyproject.toml says '{req.specifier}', environment.yml says '{got.specifier}'"
        )
        assert got.extras == req.extras, f"{req.name}: extras differ ({req.extras} vs {got.extras})"
        assert got.marker == req.marker, f"{req.name}: environment markers differ"


def test_environment_yml_lists_nothing_that_pyproject_lacks(pyproject, environment):
    extra = sorted(set(_by_name(_pip_lines(environment))) - set(_pyproject_requirements(pyproject)))
    assert not extra, f"environment.yml pins packages that pyproject.toml does not declare: {extra}"


def test_environment_yml_installs_the_package_itself(environment):
    assert "-e ." in _pip_lines(environment), "environment.yml should end its pip list with `-e .`"


def test_python_version_agrees(pyproject, environment):
    pythons = [d for d in _conda_deps(environment) if re.match(r"python\b", d)]
    assert len(pythons) == 1, f"environment.yml should pin python exactly once, found {pythons}"
    version = re.fullmatch(r"python\s*=+\s*(\d+\.\d+)(?:\.\*)?", pythons[0])
    assert version, f"cannot read the python pin {pythons[0]!r}; write e.g. python=3.11"
    py = version.group(1)
    requires = Requirement(f"python{pyproject['project']['requires-python']}").specifier
    assert Version(py) in requires, f"python={py} is outside requires-python {requires}"
    target = pyproject["tool"]["ruff"]["target-version"]
    assert target == "py" + py.replace(".", ""), f"ruff target-version {target} does not match python={py}"
    makefile = (ROOT / "Makefile").read_text()
    assert f"python{py}" in makefile, f"the Makefile should create the venv with python{py}"
    assert "pip" in _conda_deps(environment), "environment.yml needs `pip` for its pip section"


def test_simple_lama_is_documented_as_no_deps_install(environment):
    """simple-lama-inpainting pins numpy<2 and pillow<10; it is installed separately with --no-deps."""
    text = (ROOT / "environment.yml").read_text()
    assert f"pip install --no-deps {LAMA_PIN}" in text, (
        f"environment.yml should say, in a comment, to run `pip install --no-deps {LAMA_PIN}`"
    )
    assert "simple-lama-inpainting" not in _by_name(_pip_lines(environment)), (
        "simple-lama-inpainting must not be in the pip list (its dependency pins would be resolved)"
    )
    makefile = (ROOT / "Makefile").read_text()
    assert "--no-deps" in makefile and LAMA_PIN in makefile, (
        f"the Makefile's venv target should install {LAMA_PIN} with --no-deps"
    )
