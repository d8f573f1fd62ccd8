"""One experiment module per chapter, on one shared runner.

- :mod:`.base`: the resumable runner (conditions, records, Loc/Cls with SE, timings, seeds);
- :mod:`.ch01_baselines`: the unedited model, chapter 1;
- :mod:`.ch02_containerization`: token ablation, padding and shuffling, chapter 2.

A chapter's module holds what runs; its tables and findings are in :mod:`vlmloc.report`, its
figures in :mod:`vlmloc.plots`, its story in ``notebooks/``. The chapter registry
(:mod:`vlmloc.chapters`) names each chapter's module.
"""
