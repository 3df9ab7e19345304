import sys
from pathlib import Path

import pytest
import torch

# Tiny models are dominated by per-op overhead: one intra-op thread is faster, and much faster on a busy machine.
torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).parent))
# The segmentation example is imported by name (`semantic_segmentation`), as a user would put examples/ on the path;
# after tests/, so that no example module can shadow a test helper. (The image-classification example is loaded from
# its file by tests/test_example.py.)
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "examples"))

from methods import METHOD_CASES  # noqa: E402
from tiny_models import TINY_BACKBONES  # noqa: E402

# One family per distinct code path, for the slow training-path tests (optimisation loops, compile, checkpointing):
# 1 CLS (ViT), CLS + distillation (DeiT), registers (DINOv2), RoPE on patches (DINOv3), tuple outputs + relative
# position bias (BEiT), pre-norm + composite config (CLIP), no prefix token (SigLIP). Cheap tests run on all.
REPRESENTATIVE_BACKBONES = ("vit", "deit", "dinov2_registers", "dinov3", "beit", "clip", "siglip")


@pytest.fixture(params=sorted(TINY_BACKBONES))
def backbone_name(request):
    return request.param


@pytest.fixture(params=REPRESENTATIVE_BACKBONES)
def representative_backbone(request):
    return request.param


@pytest.fixture(params=sorted(METHOD_CASES))
def method(request):
    """Every prompt method of the case table (tests/methods.py)."""
    return request.param


def pytest_collection_modifyitems(config, items):
    """Methods whose case says `all_families=False` meet the representative backbones only in the tests parametrised
    over backbones (see `MethodCase.all_families`); the rest are deselected, and counted as such."""
    kept, dropped = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        case = METHOD_CASES.get(params.get("method")) if isinstance(params.get("method"), str) else None
        backbone = params.get("backbone_name", params.get("family_id"))
        narrowed = case is not None and not case.all_families and backbone in TINY_BACKBONES
        (dropped if narrowed and backbone not in REPRESENTATIVE_BACKBONES else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
