"""Compare two results folders chapter by chapter: every summary JSON equal, runtimes aside.

A restructure must not change what a chapter measures. Run the chapters before and after into
two folders, then::

    python scripts/compare_results.py BEFORE_RESULTS AFTER_RESULTS [--ignore /findings/attribution ...]

It prints each ``<model>/<chapter>.json`` as equal or the paths whose values differ, and exits
non-zero if any differs or is missing on one side. Wall-clock values (``runtime_s`` and any
``seconds``, ``timings_s``) are left out of the comparison, and paths inside the results folders
are compared relative to them; ``--ignore PATH`` leaves out more, e.g. a finding
sentence that quotes a run time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

#: Keys whose values are wall-clock times: they differ from run to run.
TIMING_KEYS = {"runtime_s", "seconds", "timings_s"}


def differences(a: object, b: object, path: str = "", ignore: frozenset[str] = frozenset()) -> list[str]:
    """Paths at which ``a`` and ``b`` differ (timing keys and ``ignore`` paths skipped)."""
    if path in ignore:
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}/{k}: only on one side" for k in sorted(set(a) ^ set(b), key=str)]
        for k in sorted(set(a) & set(b), key=str):
            if k not in TIMING_KEYS:
                out += differences(a[k], b[k], f"{path}/{k}", ignore)
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} vs {len(b)} items"]
        return [
            d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in differences(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [f"{path}: {str(a)[:60]} != {str(b)[:60]}"]


def relative_to(doc: object, root: Path) -> object:
    """``doc`` with the results folder's path in its strings written as ``<results>``: a path to a
    results file differs between the two folders and says nothing about what was measured."""
    if isinstance(doc, dict):
        return {k: relative_to(v, root) for k, v in doc.items()}
    if isinstance(doc, list):
        return [relative_to(v, root) for v in doc]
    return doc.replace(str(root), "<results>") if isinstance(doc, str) else doc


def main(before: str, after: str, ignore: frozenset[str] = frozenset()) -> int:
    files = {p.relative_to(before) for p in Path(before).glob("*/*.json")}
    files |= {p.relative_to(after) for p in Path(after).glob("*/*.json")}
    bad = 0
    for rel in sorted(files):
        a, b = Path(before) / rel, Path(after) / rel
        if not (a.exists() and b.exists()):
            print(f"MISSING {rel} ({'after' if a.exists() else 'before'})")
            bad += 1
            continue
        docs = [
            relative_to(json.loads(f.read_text()), Path(root).resolve())
            for f, root in ((a, before), (b, after))
        ]
        diff = differences(*docs, ignore=ignore)
        print(f"{'equal' if not diff else 'DIFFERS'} {rel}")
        for d in diff[:20]:
            print("   ", d)
        bad += bool(diff)
    print(f"{len(files) - bad} of {len(files)} equal")
    return 1 if bad else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument(
        "--ignore", nargs="*", default=[], help="JSON paths to leave out, e.g. /findings/attribution"
    )
    a = parser.parse_args()
    raise SystemExit(main(a.before, a.after, frozenset(a.ignore)))
