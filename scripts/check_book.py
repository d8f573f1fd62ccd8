"""Read the built book the way a reader would, and fail on what a reader would notice.

For every page named in ``_toc.yml`` this script

* takes a headless Chromium screenshot into ``build/screenshots/`` and checks it is not blank;
* parses the HTML and reports, one line per problem:
  - markup that was not rendered: code fences, MyST roles such as {cite}`x`, ``:::`` fences,
    ``$$`` or ``\\begin{`` outside math, escaped HTML tags, raw Markdown links or bold;
  - Python tracebacks, error outputs and papermill's "An Exception was encountered" banner;
  - local images or internal links that point at missing files;
  - chapters that ``_toc.yml`` lists but the registry (``vlmloc.chapter_registry.CHAPTERS``) does not, or
    the other way round;
  - on chapter pages (``notebooks/*``): no figure among the notebook outputs, a missing or wrong
    Colab launch link, or no source notebook for that link to open.

Usage (from the repository root, after ``make book-html``)::

    .venv/bin/python scripts/check_book.py [--html book/_build/html] [--no-screenshots]

Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml
from bs4 import BeautifulSoup, Tag

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HTML = ROOT / "book" / "_build" / "html"
DEFAULT_SHOTS = ROOT / "build" / "screenshots"
WINDOW = (1280, 2000)

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    # Let the theme's JavaScript run before the picture is taken; offline CDN requests fail fast.
    "--virtual-time-budget=4000",
]

# Text patterns that mean markup reached the reader unrendered (searched outside code and math).
RAW_MARKUP = [
    (re.compile(r"```"), "a literal ``` code fence"),
    (re.compile(r"\{[a-z][a-z0-9_-]*(?::[a-z0-9_-]+)*\}`"), "an unrendered MyST role such as {cite}`...`"),
    (re.compile(r"(?m)^\s*:::"), "a literal ::: fence"),
    (re.compile(r"\$\$"), "literal $$ outside math"),
    (re.compile(r"\\begin\{"), r"literal \begin{ outside math"),
    (re.compile(r"</?(?:div|span|img|table|tr|td|br|p|a|sup|sub)\b[^>]*>"), "an escaped HTML tag"),
    (re.compile(r"!?\[[^\]\n]*\]\((?:https?://|\.{0,2}/)[^)\s]*\)"), "a raw Markdown link or image"),
    (re.compile(r"\*\*\S[^*\n]*\*\*"), "raw Markdown **bold**"),
]
TRACEBACK_TEXT = ("Traceback (most recent call last)", "An Exception was encountered at")
ERROR_LINE = re.compile(r"^\s*\w*(?:Error|Exception)\b(?::|$)", re.M)


@dataclass
class Page:
    docname: str  # e.g. "notebooks/01_data_and_baselines"
    html: Path
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    screenshot: Path | None = None

    @property
    def is_chapter(self) -> bool:
        return self.docname.startswith("notebooks/")


def toc_docnames(toc_path: Path) -> list[str]:
    """Every file of a jb-book/jb-article ``_toc.yml``, in reading order."""
    toc = yaml.safe_load(toc_path.read_text())
    names = [toc["root"]]

    def walk(entries: list[dict]) -> Iterator[str]:
        for entry in entries or []:
            if "glob" in entry:
                raise SystemExit(f"{toc_path}: 'glob' entries are not supported by this check")
            if "file" in entry:
                yield entry["file"]
            for key in ("parts", "chapters", "sections"):
                yield from walk(entry.get(key, []))

    names += list(walk([{k: v for k, v in toc.items() if k in ("parts", "chapters", "sections")}]))
    return [str(Path(n).with_suffix("")) if Path(n).suffix in {".md", ".ipynb"} else n for n in names]


def colab_url(config_path: Path, docname: str) -> str:
    """The Colab launch URL Jupyter Book should generate for ``docname`` (a notebook page)."""
    cfg = yaml.safe_load(config_path.read_text())
    repo = cfg["repository"]
    slug = urlsplit(repo["url"]).path.strip("/")
    prefix = (repo.get("path_to_book") or "").strip("/")
    path = f"{prefix}/{docname}.ipynb" if prefix else f"{docname}.ipynb"
    return f"https://colab.research.google.com/github/{slug}/blob/{repo.get('branch', 'main')}/{path}"


def prose_text(article: Tag) -> str:
    """Visible text of the page without code, outputs and math (where raw syntax is legitimate)."""
    soup = BeautifulSoup(str(article), "html.parser")
    for node in soup.select(
        "pre, code, kbd, samp, .highlight, .cell_input, .cell_output, .math, math, script, style, .headerlink"
    ):
        node.decompose()
    return soup.get_text("\n")


def local_target(page_html: Path, ref: str) -> Path | None:
    """The file a relative href/src points at, or None for external, data and fragment-only refs."""
    parts = urlsplit(ref)
    if parts.scheme or parts.netloc or not parts.path:
        return None
    return (page_html.parent / unquote(parts.path)).resolve()


def check_html(page: Page, config_path: Path) -> None:
    soup = BeautifulSoup(page.html.read_text(encoding="utf-8"), "html.parser")
    article = soup.select_one("article.bd-article") or soup.find("main") or soup.body
    if article is None:
        page.problems.append("no article/main element: the page did not render")
        return

    if article.find("h1") is None:
        page.problems.append("no <h1> title")
    text = article.get_text(" ", strip=True)
    if len(text) < 200:
        page.problems.append(f"almost no text ({len(text)} characters): the page looks empty")

    prose = prose_text(article)
    for pattern, what in RAW_MARKUP:
        match = pattern.search(prose)
        if match:
            snippet = prose[max(0, match.start() - 40) : match.end() + 40].replace("\n", " ").strip()
            page.problems.append(f"raw markup, {what}: ...{snippet}...")

    full = article.get_text("\n")
    for marker in TRACEBACK_TEXT:
        if marker in full:
            page.problems.append(f"a notebook error is shown to the reader ({marker!r})")
    for node in article.select(".traceback, .output_error, .output.error"):
        first = node.get_text(" ", strip=True)[:120]
        page.problems.append(f"an error output is rendered: {first}")
    for node in article.select(".output.stderr, .output_stderr"):
        body = node.get_text("\n")
        if ERROR_LINE.search(body):
            page.problems.append(f"stderr output contains an error: {body.strip()[:160]!r}")
        else:
            page.notes.append(f"stderr output shown to the reader: {body.strip()[:100]!r}")

    # Images: local files must exist; remote ones (e.g. the Colab badge) need network to show.
    remote = 0
    for img in soup.find_all("img"):
        src = img.get("src", "")
        if src.startswith("data:"):
            continue
        target = local_target(page.html, src)
        if target is None:
            remote += 1
        elif not target.is_file() or target.stat().st_size == 0:
            page.problems.append(f"broken image: {src}")
    if remote:
        page.notes.append(f"{remote} remote image(s) (shown only online)")

    for a in article.find_all("a", href=True):
        target = local_target(page.html, a["href"])
        if target is not None and not target.exists():
            page.problems.append(f"broken internal link: {a['href']}")

    if soup.select_one(".math") is not None:
        mathjax = soup.find("script", src=re.compile("mathjax", re.I))
        if mathjax is not None and urlsplit(mathjax["src"]).scheme:
            page.notes.append("math is typeset by MathJax from a CDN: offline screenshots show TeX source")

    if page.is_chapter:
        figures = [img for img in article.select(".cell_output img") if img.get("src")]
        if not figures:
            page.problems.append("no figure among the notebook outputs (expected at least one <img>)")
        expected = colab_url(config_path, page.docname)
        launch = [a["href"] for a in soup.find_all("a", href=True) if a.get("title") == "Launch on Colab"]
        if not launch:
            page.problems.append("no Colab launch button")
        elif expected not in launch:
            page.problems.append(f"Colab launch button points at {launch[0]}, expected {expected}")
        source = ROOT / f"{page.docname}.ipynb"
        if not source.is_file():
            page.problems.append(
                f"the Colab link opens {source.relative_to(ROOT)}, which is not in the repository"
            )


def find_chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def screenshot(page: Page, chromium: str, out_dir: Path, profile: Path) -> None:
    out = out_dir / (page.docname.replace("/", "__") + ".png")
    out.unlink(missing_ok=True)
    cmd = [
        chromium,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        f"--screenshot={out}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        page.html.resolve().as_uri(),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        page.problems.append("screenshot: Chromium timed out after 120 s")
        return
    if proc.returncode != 0 or not out.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        page.problems.append(f"screenshot failed (rc {proc.returncode}): {' | '.join(tail)}")
        return
    page.screenshot = out
    from PIL import Image, ImageStat

    with Image.open(out) as im:
        stat = ImageStat.Stat(im.convert("L"))
        if im.size != WINDOW:
            page.notes.append(f"screenshot is {im.size[0]}x{im.size[1]}, not {WINDOW[0]}x{WINDOW[1]}")
        if stat.stddev[0] < 2.0:
            page.problems.append(f"screenshot is blank (grey level std {stat.stddev[0]:.2f}): {out}")


def registry_problems(toc_path: Path) -> list[str]:
    """Where ``_toc.yml`` and ``notebooks/`` disagree with the chapter registry (``vlmloc.chapters``)."""
    sys.path.insert(0, str(ROOT / "lib"))
    from vlmloc.chapters import toc_problems

    return toc_problems(toc_path.resolve().parent)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Reader-style check of the built Jupyter Book.")
    parser.add_argument("--html", type=Path, default=DEFAULT_HTML, help="built HTML folder")
    parser.add_argument("--toc", type=Path, default=ROOT / "_toc.yml")
    parser.add_argument("--config", type=Path, default=ROOT / "_config.yml")
    parser.add_argument("--screenshots", type=Path, default=DEFAULT_SHOTS, help="where PNGs go")
    parser.add_argument("--no-screenshots", action="store_true", help="only parse the HTML")
    args = parser.parse_args(argv)

    if not (args.html / "index.html").is_file():
        print(f"FAIL: {args.html / 'index.html'} does not exist; run `make book-html` first.")
        return 1
    registry = registry_problems(args.toc)
    for problem in registry:
        print(f"FAIL: {problem}")

    pages = [Page(name, args.html / f"{name}.html") for name in toc_docnames(args.toc)]
    chromium = None
    if not args.no_screenshots:
        chromium = find_chromium()
        if chromium is None:
            print(
                "FAIL: no chromium found; install it (apt-get install -y chromium) or pass --no-screenshots."
            )
            return 1
        args.screenshots.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="check-book-chromium-") as profile:
        for page in pages:
            if not page.html.is_file():
                page.problems.append(f"{page.html} was not built (is it in _toc.yml and staged?)")
                continue
            check_html(page, args.config)
            if chromium:
                screenshot(page, chromium, args.screenshots, Path(profile))

    failed = 0
    for page in pages:
        status = "FAIL" if page.problems else "ok"
        shot = f"  screenshot: {page.screenshot}" if page.screenshot else ""
        print(f"[{status:>4}] {page.docname}.html{shot}")
        for note in dict.fromkeys(page.notes):
            print(f"         note: {note}")
        for problem in page.problems:
            print(f"         {page.docname}.html: {problem}")
        failed += bool(page.problems)

    print(f"\n{len(pages) - failed}/{len(pages)} pages passed.", end=" ")
    print("Book check FAILED." if failed or registry else "Book check passed.")
    return 1 if failed or registry else 0


if __name__ == "__main__":
    sys.exit(main())
