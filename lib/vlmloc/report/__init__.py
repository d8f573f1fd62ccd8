"""Tables (ours beside the paper's) and one-sentence findings, one module per chapter.

- :mod:`.common`: display and the small statistics every report shares;
- :mod:`.ch01`: baselines and the control set; :mod:`.ch02`: ablation, padding and shuffling;
- :mod:`.ch03`: InternVL's thumbnail and tiles ablated apart, overall and by size;
  :mod:`.ch04`: position probes per site, their peaks and the corners;
  :mod:`.ch05`: attention knockout per layer window, against the paper's range;
- :mod:`.ch06`: mediation maps, sparsity, overlap, controls, and the cost on the real models;
  :mod:`.ch07`: head ablation and the recognition-then-localization verdict;
- :mod:`.summary`: the results page across models and chapters.

Everything takes plain records and summaries (what :mod:`vlmloc.evaluate` and the experiments
produce), so the tables are testable without a model. Every paper number comes from
:mod:`vlmloc.paper`; the findings are computed from the numbers, never hand-written.
"""
