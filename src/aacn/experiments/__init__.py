"""aacn.experiments: the study on top of single runs.

* :mod:`aacn.experiments.presets` — the runs of Table 1, Table 2 and the paper's CIFAR-100 protocol at the
  ``smoke`` / ``fast`` / ``full`` scales (tables of rows and of per-family scale settings, and pure functions
  returning ``(label, RunConfig)`` pairs);
* :mod:`aacn.experiments.labels` — row names of runs ("AA-WRN-28-10"), shared by presets and reports;
* :mod:`aacn.experiments.reproduce` — ``aacn reproduce``: train them one by one (keep finished, resume
  started, refuse folders holding other settings), then report;
* :mod:`aacn.experiments.report` — ``aacn report``: markdown / CSV tables (mean ± std over seeds) and learning
  curves, read from run directories only, through :mod:`aacn.experiments.rows` (run records read, checked and
  grouped into rows) and :mod:`aacn.experiments.tables` (rows as markdown, CSV, marks and notes);
* :mod:`aacn.experiments.effects` — paired effects of attention between rows, with intervals and verdicts;
* :mod:`aacn.experiments.publish` — ``aacn report --publish results docs/RESULTS.md``: the published results
  page, generated from the records under ``results/``;
* :mod:`aacn.experiments.sweep` — ``aacn sweep``: a grid over model options and training fields;
* :mod:`aacn.experiments.commands` — the CLI verbs above (and ``attention-maps``).

Submodules are imported on use, so ``import aacn.experiments`` stays cheap.
"""
