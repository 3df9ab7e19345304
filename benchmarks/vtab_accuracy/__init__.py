# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The code of benchmarks/accuracy.py (accuracy under the VTAB-1k protocol), one module per concern:

* ``protocol``: the datasets, methods, ablations and stages, and each mode's settings (``MODES``).
* ``sampling``: the VTAB-1k subsets (800 train + 200 val, a test subset) sampled by the documented rule and written
  as image folders for the example's ``--dataset``.
* ``plan``: the runs each stage needs (the learning-rate selection first), each run's directory and command line, and
  running them (done runs are reused).
* ``summary``: the record: every run's numbers, the tables over seeds, the findings, the run times.
* ``page``: docs/benchmarks_accuracy.{md,json,png} and docs/benchmarks_insertion_sweep.png, written from the record.

benchmarks/accuracy.py is the command line; it and these modules import by name with benchmarks/ on ``sys.path``
(``import _runs``, ``from vtab_accuracy import ...``), as every benchmarks/ script has it when run.
"""
