# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The code of benchmarks/accuracy.py, one module per concern: ``protocol`` (datasets, methods, stages, each mode's
settings), ``sampling`` (the VTAB-1k subsets as image folders), ``plan`` (the runs each stage needs, their command
lines, running them), ``summary`` (the record: every run's numbers, the tables, the findings) and ``page`` (the docs
written from the record). They import by name with benchmarks/ on ``sys.path`` (``import _runs``), as every
benchmarks/ script has it when run.
"""
