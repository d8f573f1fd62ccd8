"""The benchmark command runs and its two methods agree (its speed is printed, never asserted)."""

from __future__ import annotations

from vlmloc.bench import bench_heads, main


def test_bench_heads_reports_both_methods_and_they_agree():
    r = bench_heads("toy-llava", n_pairs=1, batch_size=8)
    assert r["heads"] == 64 and r["pairs"] == 1
    assert r["batched_heads_per_s"] > 0 and r["loop_heads_per_s"] > 0
    assert r["max_abs_diff"] < 1e-4  # the batched sweep is exact: float noise only


def test_bench_command_prints_one_row_per_model(capsys):
    assert main(["heads", "--models", "toy-internvl", "--pairs", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| toy-")]
    assert len(rows) == 1 and rows[0].startswith("| toy-internvl | 64 | 1 |")
