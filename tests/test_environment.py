"""pyproject.toml, the lock file constraints.txt and environment.yml must describe one environment.

pyproject.toml says what vlmloc needs (ranges; exact pins only for nnsight and transformers),
constraints.txt is the exact environment CI and ``make venv`` install, and environment.yml lists
pyproject's dependencies at the lock's versions. If one changes, these tests say which line of the
others has to follow.
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
LOCK = "constraints.txt"
#: Pinned exactly in pyproject.toml: a new release of these breaks vlmloc.
EXACT = {"nnsight", "transformers"}
#: Ranges in pyproject.toml, so that an installed torch (Colab's) is kept.
RANGES = {"torch", "torchvision"}


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


@pytest.fixture(scope="module")
def lock() -> dict[str, Version]:
    out: dict[str, Version] = {}
    for n, line in enumerate((ROOT / LOCK).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
        assert m, f"{LOCK} line {n} is not 'name==version': {line!r}"
        name = canonicalize_name(m.group(1))
        assert name not in out, f"{LOCK} lists {m.group(1)} twice"
        out[name] = Version(m.group(2))
    return out


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


def test_pyproject_pins_exactly_only_what_breaks(pyproject):
    reqs = _pyproject_requirements(pyproject)
    exact = {n for n, r in reqs.items() if any(sp.operator == "==" for sp in r.specifier)}
    assert EXACT <= exact, f"pyproject.toml must pin {', '.join(sorted(EXACT - exact))} exactly"
    for name in RANGES:
        assert name not in exact, f"{name} must be a range in pyproject.toml, not a pin (Colab keeps its own)"
        assert reqs[name].specifier, f"{name} needs a stated range in pyproject.toml"


def test_the_lock_satisfies_pyproject_and_agrees_on_exact_pins(pyproject, lock):
    for name, req in _pyproject_requirements(pyproject).items():
        assert name in lock, f"{LOCK} lacks {req.name}; regenerate it from the CI venv (see its header)"
        assert lock[name] in req.specifier, (
            f"{LOCK} has {req.name}=={lock[name]}, outside pyproject.toml's '{req.specifier}'"
        )
    assert "vlmloc" not in lock, f"{LOCK} must not lock vlmloc itself (pip freeze --exclude-editable)"


def test_environment_yml_pins_each_dependency_at_the_lock_version(pyproject, environment, lock):
    expected = _pyproject_requirements(pyproject)
    listed = _by_name(_pip_lines(environment))
    missing = sorted(set(expected) - set(listed))
    assert not missing, f"environment.yml's pip list lacks: {', '.join(str(expected[n]) for n in missing)}"
    for name, req in expected.items():
        got = listed[name]
        want = f"=={lock[name]}"
        assert str(got.specifier) == want, (
            f"{req.name}: environment.yml says '{got.specifier}', {LOCK} '{want}'"
        )
        assert got.extras == req.extras, f"{req.name}: extras differ ({req.extras} vs {got.extras})"
        assert got.marker == req.marker, f"{req.name}: environment markers differ"
    assert f"-c {LOCK}" in _pip_lines(environment), f"environment.yml's pip list should hold `-c {LOCK}`"


def test_make_venv_installs_from_the_lock():
    makefile = (ROOT / "Makefile").read_text()
    assert f'pip install -c {LOCK} -e ".[book,dev]"' in makefile
    assert re.search(rf"^\$\(STAMP\):.*{re.escape(LOCK)}", makefile, re.M), (
        f"the venv stamp must depend on {LOCK}"
    )


def test_this_environment_is_the_locked_one(pyproject, lock):
    """The venv the tests run in was installed from the lock (rerun `make venv` if not)."""
    from importlib.metadata import PackageNotFoundError, version

    wrong = []
    for name in (*EXACT, *RANGES, "numpy", "tokenizers"):
        try:
            got = Version(version(name))
        except PackageNotFoundError:
            wrong.append(f"{name} missing")
            continue
        if got != lock[canonicalize_name(name)]:
            wrong.append(f"{name} {got} (lock: {lock[canonicalize_name(name)]})")
    assert not wrong, f"this environment differs from {LOCK}: {', '.join(wrong)}; run make venv"


def test_colab_install_cells_keep_an_installed_torch():
    import json

    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        src = next(
            "".join(c["source"])
            for c in cells
            if c["cell_type"] == "code" and "IN_COLAB" in "".join(c["source"])
        )
        installs = [line for line in src.splitlines() if "pip install" in line]
        assert any("vlmloc @ git+" in line for line in installs), (
            f"{path.name}: the Colab cell must install vlmloc"
        )
        assert not any(
            re.search(r"\btorch(vision)?\b|-c |--upgrade|-U\b|--force", line) for line in installs
        ), f"{path.name}: the Colab install must not touch torch: {installs}"
        assert "keeps" in src and "torch" in src, (
            f"{path.name}: the Colab cell should say it keeps Colab's torch"
        )


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
