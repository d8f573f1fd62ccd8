"""The publishing workflow and the repository URL: actionlint passes, the workflow builds with the
README's command and uploads what that command writes, and every Colab badge, install line and
launch button is derived from the one URL in ``_config.yml``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
BOOK = ROOT / ".github" / "workflows" / "book.yml"
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"


def _actionlint() -> str:
    here = Path(sys.executable).parent / "actionlint"  # the dev extra installs it beside python
    found = str(here) if here.is_file() else shutil.which("actionlint")
    if found is None:
        pytest.fail(
            "actionlint is missing; install the dev extra: pip install -c constraints.txt -e '.[dev]'"
        )
    return found


def test_actionlint_passes_on_every_workflow():
    assert WORKFLOWS, "no workflow in .github/workflows"
    run = subprocess.run(
        [_actionlint(), "-color=false", *map(str, WORKFLOWS)], capture_output=True, text=True, cwd=ROOT
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_actionlint_can_fail(tmp_path):
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ github.nope }}\n"
    )
    run = subprocess.run(
        [_actionlint(), "-color=false", str(bad)], capture_output=True, text=True, cwd=tmp_path
    )
    assert run.returncode != 0 and "nope" in run.stdout


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(BOOK.read_text())


def _steps(job: dict) -> list[dict]:
    return job.get("steps", [])


def _uses(job: dict, action: str) -> dict:
    found = [s for s in _steps(job) if s.get("uses", "").split("@")[0] == action]
    assert len(found) == 1, f"expected one {action} step, found {len(found)}"
    return found[0]


def _makefile_var(name: str) -> str:
    text = (ROOT / "Makefile").read_text()
    m = re.search(rf"^{name}\s*:?=\s*(.+)$", text, re.M)
    assert m, f"the Makefile defines no {name}"
    return m.group(1).strip()


def test_push_builds_with_make_book_and_publishes_what_it_writes(workflow):
    triggers = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads `on` as True
    assert triggers["push"]["branches"] == ["main"] and "pull_request" in triggers
    build = workflow["jobs"]["build"]
    assert build["runs-on"].startswith("ubuntu")
    python = _uses(build, "actions/setup-python")["with"]
    assert str(python["python-version"]) == "3.11" and python["cache"] == "pip"
    runs = [s.get("run", "") for s in _steps(build)]
    assert any(re.match(r"make book\b", r) for r in runs), "the build must run the README's `make book`"
    # what `make book` writes: $(BOOK_HTML) = $(BOOK_SRC)/_build/html
    html = _makefile_var("BOOK_HTML").replace("$(BOOK_SRC)", _makefile_var("BOOK_SRC"))
    upload = _uses(build, "actions/upload-pages-artifact")
    assert upload["with"]["path"] == html == "book/_build/html"
    assert "pull_request" in upload["if"] and "!=" in upload["if"]  # never from a pull request
    deploy = workflow["jobs"]["deploy"]
    assert deploy["needs"] == "build" and "pull_request" in deploy["if"] and "!=" in deploy["if"]
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["concurrency"]["group"] == "pages"
    _uses(deploy, "actions/deploy-pages")
    assert workflow["permissions"] == {"contents": "read"}  # nothing else may write


def test_pull_requests_build_and_check_without_deploying(workflow):
    build = workflow["jobs"]["build"]
    check = [s for s in _steps(build) if s.get("run", "").startswith("make check-book")]
    assert len(check) == 1 and check[0]["if"] == "github.event_name == 'pull_request'"
    assert "make check-book" in (ROOT / "Makefile").read_text()


# --------------------------------------------------------------------------- one repository URL


@pytest.fixture(scope="module")
def repo() -> dict:
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    url = cfg["repository"]["url"].rstrip("/")
    m = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+)", url)
    assert m, f"_config.yml's repository.url is not a GitHub repository URL: {url!r}"
    return {
        "url": url,
        "slug": f"{m.group(1)}/{m.group(2)}",
        "branch": cfg["repository"].get("branch", "main"),
        "colab": cfg["launch_buttons"]["colab_url"].rstrip("/"),
        "path_to_book": cfg["repository"].get("path_to_book", ""),
    }


def _colab_url(repo: dict, notebook: str) -> str:
    return f"{repo['colab']}/github/{repo['slug']}/blob/{repo['branch']}/notebooks/{notebook}.ipynb"


def _install(repo: dict) -> str:
    return f"vlmloc @ git+{repo['url']}@{repo['branch']}"


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_notebook_opens_itself_in_colab_and_installs_from_the_repository(notebook, repo):
    cells = json.loads(notebook.read_text())["cells"]
    first = "".join(next(c for c in cells if c["cell_type"] == "markdown")["source"])
    badge = f"[![Open In Colab]({COLAB_BADGE})]({_colab_url(repo, notebook.stem)})"
    assert badge in first, f"{notebook.name}: its first markdown cell lacks {badge}"
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    installs = [
        line for src in code for line in src.splitlines() if "%pip install" in line and "vlmloc" in line
    ]
    assert installs, f"{notebook.name} has no install cell"
    for line in installs:
        assert f'"{_install(repo)}"' in line, (
            f"{notebook.name}: {line.strip()!r} does not install {_install(repo)}"
        )


def test_launch_buttons_open_the_source_notebooks(repo):
    # the staged page notebooks/01_x sits at notebooks/01_x.ipynb of the repository: no prefix
    assert repo["path_to_book"] == "" and repo["colab"] == "https://colab.research.google.com"


DOCS = [ROOT / "README.md", *sorted((ROOT / "book").glob("*.md"))]


def test_every_repository_link_in_the_docs_is_the_configured_one(repo):
    seen = 0
    for page in [*DOCS, *NOTEBOOKS]:
        text = page.read_text()
        for m in re.finditer(r"colab\.research\.google\.com/github/([^)\s\"'\\]+)", text):
            seen += 1
            url = "https://" + m.group(0)
            name = re.fullmatch(r".*/notebooks/(\w+)\.ipynb", url)
            assert name and url == _colab_url(repo, name.group(1)), f"{page.name}: {url}"
        for m in re.finditer(r"git\+(https://[^\s\"'@]+)@([\w.-]+)", text):
            seen += 1
            assert (m.group(1), m.group(2)) == (repo["url"], repo["branch"]), f"{page.name}: {m.group(0)}"
        for m in re.finditer(r"https://github\.com/[\w.-]+/vlmloc\b", text):
            assert m.group(0) == repo["url"], f"{page.name}: {m.group(0)}"
    assert seen > len(NOTEBOOKS)
