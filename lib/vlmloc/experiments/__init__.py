"""One experiment module per chapter, on one shared runner.

- :mod:`.base`: the resumable runner (conditions, records, Loc/Cls with SE, timings, seeds);
- :mod:`.ch01_baselines`: the unedited model, chapter 1;
- :mod:`.ch02_containerization`: token ablation, padding and shuffling, chapter 2;
- :mod:`.ch03_views`: InternVL's thumbnail and tiles ablated apart, chapter 3;
- :mod:`.ch04_position_decoding`: linear row/column probes at every site, chapter 4;
- :mod:`.ch05_attention_knockout`: attention knockout over layer windows, chapter 5;
- :mod:`.ch06_mediation`: causal mediation per head (exact sweep, attribution patching), chapter 6;
- :mod:`.ch07_head_ablation`: the top heads of each task ablated against random heads, chapter 7.

A chapter's module holds what runs; its tables and findings are in :mod:`vlmloc.report`, its
figures in :mod:`vlmloc.plots`, its story in ``notebooks/``. The chapter registry
(:mod:`vlmloc.chapters`) names each chapter's module.
"""
