"""No test asserts on wall-clock time: it fails on a busy machine and passes on a broken speed-up.

A speed-up is tested by counting the work it avoids (forwards run, processor calls, cache hits),
never by timing it. This test reads every test module and fails on an ``assert`` that orders
(``<``, ``<=``, ``>``, ``>=``) something measured by a clock: a call such as
``time.perf_counter()``, a name assigned from one (also through other names, ``dt = t1 - t0``),
or a name, attribute or key that says it holds a duration (``elapsed``, ``seconds``, ``t_fast``,
``summary["timings_s"]``). Comparisons for equality are left alone (no one asserts a time equal).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
#: Clock functions, called as ``time.X()``, ``X()`` or through any module alias.
CLOCKS = {
    "perf_counter",
    "perf_counter_ns",
    "time",
    "time_ns",
    "monotonic",
    "monotonic_ns",
    "process_time",
    "process_time_ns",
    "default_timer",
    "timeit",
}
#: Names, attributes and string keys that hold a duration.
DURATION = re.compile(r"(elapsed|duration|seconds|secs?$|_s$|^t_|^dt$|wall|runtime|timings?|per_s$)", re.I)
ORDER = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)


def _is_clock_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
    return name in CLOCKS


def _mentions_time(node: ast.AST, timed: set[str]) -> bool:
    """Does the expression read a clock, a name assigned from one, or a duration-like name or key?"""
    for sub in ast.walk(node):
        if _is_clock_call(sub):
            return True
        if isinstance(sub, ast.Name) and (sub.id in timed or DURATION.search(sub.id)):
            return True
        if isinstance(sub, ast.Attribute) and DURATION.search(sub.attr):
            return True
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and DURATION.search(sub.value):
            return True
    return False


def _timed_names(scope: ast.AST) -> set[str]:
    """Names assigned in ``scope`` (a function or module) from a clock reading, to a fixed point."""
    assigns = []
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign):
            assigns.append((node.targets, node.value))
        elif isinstance(node, ast.AugAssign | ast.AnnAssign) and node.value is not None:
            assigns.append(([node.target], node.value))
    timed: set[str] = set()
    while True:
        new = {
            t.id
            for targets, value in assigns
            if _mentions_time(value, timed)
            for target in targets
            for t in ast.walk(target)
            if isinstance(t, ast.Name) and t.id not in timed
        }
        if not new:
            return timed
        timed |= new


def _orders_time(node: ast.Assert, timed: set[str]) -> bool:
    """Is some comparison in the assert an ordering of a time (and not against the constant 0)?

    ``elapsed > 0`` only says a time was recorded; no machine's speed can fail it.
    """
    for cmp in (n for n in ast.walk(node.test) if isinstance(n, ast.Compare)):
        operands = [cmp.left, *cmp.comparators]
        for op, a, b in zip(cmp.ops, operands[:-1], operands[1:], strict=True):
            zero = any(isinstance(x, ast.Constant) and x.value == 0 for x in (a, b))
            if isinstance(op, ORDER) and not zero and (_mentions_time(a, timed) or _mentions_time(b, timed)):
                return True
    return False


def timing_asserts(source: str, filename: str = "<test>") -> list[str]:
    """``"file:line: source"`` of every assert in ``source`` that orders a time.

    A name counts as a time when the function it is in (or the module, at module level) assigns
    it from a clock reading, so ``dt = t1 - t0`` in one test does not taint ``dt`` in another.
    """
    tree = ast.parse(source, filename)
    scopes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))]
    found = {}
    for scope in scopes:
        if isinstance(scope, ast.Module):  # module level: what runs outside functions and classes
            defs = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
            body = [stmt for stmt in scope.body if not isinstance(stmt, defs)]
        else:
            body = [scope]
        timed = _timed_names(ast.Module(body=body, type_ignores=[]))
        for stmt in body:
            for node in ast.walk(stmt):
                if isinstance(node, ast.Assert) and _orders_time(node, timed):
                    found[node.lineno] = f"{filename}:{node.lineno}: {ast.get_source_segment(source, node)}"
    return [found[k] for k in sorted(found)]


def test_the_scanner_catches_timing_asserts():
    """The check can fail: each of these is a timing assert, and the counting asserts are not."""
    caught = [
        "import time\nt0 = time.perf_counter()\nrun()\nassert time.perf_counter() - t0 < 5.0\n",
        "from time import perf_counter\nstart = perf_counter()\nrun()\ndt = perf_counter() - start\nassert dt < 1\n",
        "t_fast = bench(fast)\nt_slow = bench(slow)\nassert t_fast < 0.5 * t_slow\n",
        "assert summary['timings_s']['knockout'] < 60\n",
        "assert (\n    result.elapsed\n    <= 2\n)\n",
    ]
    for src in caught:
        assert len(timing_asserts(src)) == 1, src
    fine = [
        "assert calls == [2, 2, 2]\n",
        "assert forwards < 3 * len(samples)\n",
        "assert len(summary['timings_s']) == 3\n",
        "t0 = time.perf_counter()\nrun()\nassert cache.hits > 0\n",
    ]
    for src in fine:
        assert timing_asserts(src) == [], src


def test_no_test_asserts_on_wall_clock_time():
    found = [
        hit
        for path in sorted(TESTS.glob("*.py"))
        for hit in timing_asserts(path.read_text(encoding="utf-8"), path.name)
    ]
    assert not found, "count the work instead of timing it:\n" + "\n".join(found)
