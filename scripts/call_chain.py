"""Print the library call chain from a chapter notebook's cell to the line that edits the model.

A measure of how far a reader walks from the story to the intervention: the number of function
calls (hops) between the notebook cell and, say, the head patch's slice of ``o_proj``'s input.
The notebook's code cells run in this process (the Colab cell skipped, ``n_samples`` small) until
the target method is first called under ``--through`` (a method name the chain must pass, e.g.
the chapter's main sweep rather than a null check); then the chain is printed and the run stops.

nnsight runs a trace's body beside the model's forward, so the chain is joined from two stacks:
the caller's up to the adapter method that opens the trace, and the trace body's from there.

    python scripts/call_chain.py notebooks/06_mediation.ipynb heads.HeadPatch._patch --through exact
    python scripts/call_chain.py notebooks/05_attention_knockout.ipynb \\
        attention.AttentionKnockout._block --through knockout

Set PYTHONPATH=<checkout>/lib and run from that checkout to measure another commit.
"""

from __future__ import annotations

import argparse
import importlib
import traceback
from typing import Any

import nbformat

#: The adapter methods that open an nnsight trace (where the two stacks meet).
TRACE_ENTRIES = ("forward", "generate")


class _Reached(Exception):
    """Raised inside the model run once the chain is recorded: nothing more needs to run."""


def _frames() -> list[tuple[str, str]]:
    return [(f.filename, f.name) for f in traceback.extract_stack()[:-2]]


def _interventions(args: tuple, kwargs: dict) -> list:
    found = kwargs.get("interventions") or ()
    return list(found) + [x for a in args if isinstance(a, list | tuple) for x in a if hasattr(x, "hooks")]


def instrument(target: str, through: str) -> tuple[dict, Any]:
    """Wrap the adapter's trace entries and the target method; returns the record and the target class."""
    from vlmloc import adapter

    module, cls_name, method = target.rsplit(".", 2)
    cls = getattr(importlib.import_module(f"vlmloc.interventions.{module}"), cls_name)
    seen: dict = {}
    for name in TRACE_ENTRIES:
        original = getattr(adapter.VLM, name)

        def entry(self, *a, _original=original, **k):
            stack = _frames()
            if "outer" not in seen and any(isinstance(iv, cls) for iv in _interventions(a, k)):
                if any(fn == through for _, fn in stack):
                    seen["outer"] = stack
            return _original(self, *a, **k)

        setattr(adapter.VLM, name, entry)
    original_target = getattr(cls, method)

    def reached(self, *a, **k):
        if "outer" in seen:
            seen["inner"] = _frames()
            raise _Reached
        return original_target(self, *a, **k)

    setattr(cls, method, reached)
    return seen, cls


def run_notebook(path: str, n_samples: int, results_dir: str | None) -> None:
    """Execute the notebook's code cells here until the target is reached."""
    nb = nbformat.read(path, as_version=4)
    scope: dict = {"__name__": "__main__"}
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or "google.colab" in cell.source:
            continue
        src = "\n".join(ln for ln in cell.source.splitlines() if not ln.lstrip().startswith(("!", "%")))
        if "parameters" in cell.metadata.get("tags", []):
            src += f"\nn_samples = {n_samples}\n"
            if results_dir:
                src += f"results_dir = {results_dir!r}\n"
        try:
            exec(compile(src, f"<cell {i}>", "exec"), scope)
        except _Reached:
            return
    raise SystemExit("the notebook ran to its end without reaching the target under --through")


def chain(seen: dict, target: str) -> list[str]:
    """The hops: notebook cell, library functions to the trace entry, then the trace body's."""

    def ours(frames):
        return [(f, n) for f, n in frames if f.startswith("<cell") or "vlmloc/" in f]

    outer = ours(seen["outer"])
    start = max(i for i, (f, _) in enumerate(outer) if f.startswith("<cell"))
    inner = ours(seen["inner"])
    entry = max(i for i, (f, n) in enumerate(inner) if n in TRACE_ENTRIES and f.endswith("adapter.py"))
    module, cls_name, method = target.rsplit(".", 2)
    names = [*outer[start:], *inner[entry:], (f"vlmloc/interventions/{module}.py", method)]
    return [f"{f.split('vlmloc/')[-1]}:{n}" for f, n in names]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("notebook")
    p.add_argument("target", help="module.Class.method under vlmloc.interventions")
    p.add_argument("--through", required=True, help="a function name the chain must pass")
    p.add_argument("--n-samples", type=int, default=24)
    p.add_argument("--results-dir", default=None, help="an absolute results folder for the run")
    a = p.parse_args()
    seen, _ = instrument(a.target, a.through)
    run_notebook(a.notebook, a.n_samples, a.results_dir)
    hops = chain(seen, a.target)
    print(f"{len(hops) - 1} hops from the notebook cell to {a.target}:")
    for h in hops:
        print(f"  {h}")


if __name__ == "__main__":
    main()
