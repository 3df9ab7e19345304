"""Tiny-config models of every supported family, built from configs (nothing is downloaded).

`TINY_BACKBONES` maps a family id to a factory `(head: bool = True, attn_implementation: str | None = None) -> model`:
with `head=True` an image classifier with `num_labels=NUM_LABELS` and a `classifier` head, else the bare encoder.
`attn_implementation="eager"` gives models that return attention maps (the default is transformers' own, SDPA).
Every model is in eval mode, has width `HIDDEN`, `DEPTH` blocks, patch size 8 and image size `IMAGE_SIZE`.

Two families have no image classifier in transformers (ViTMAE, DINOv3); for them `head=True` gives a linear probe on
the CLS token of the bare encoder (`TinyViTMAEForImageClassification`, `TinyDINOv3ViTForImageClassification`), the way
a user would put a head on them. Relative position bias tables of BEiT / Data2Vec start at zero in transformers; here
they are random so that tests see a wrong bias.

ViTMAE shuffles the patches with random noise even with `mask_ratio=0`; the ViTMAE encoders here get a fixed,
identity-order `noise` (a forward pre-hook, only when the caller passes none) so that two forwards are comparable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput

IMAGE_SIZE = 32
PATCH_SIZE = 8
NUM_LABELS = 3
HIDDEN = 32
DEPTH = 4
HEADS = 4

_COMMON = dict(
    image_size=IMAGE_SIZE,
    patch_size=PATCH_SIZE,
    hidden_size=HIDDEN,
    num_hidden_layers=DEPTH,
    num_attention_heads=HEADS,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def _instantiate(model_cls: type, config: Any, attn_implementation: Optional[str]) -> nn.Module:
    # Seeded, so that every call of a factory gives the same weights. `_from_config` is the way to pick the attention
    # implementation of every (sub-)model before it is built (Data2Vec picks its attention class in `__init__`).
    torch.manual_seed(0)
    if attn_implementation is None:
        model = model_cls(config)
    else:
        model = model_cls._from_config(config, attn_implementation=attn_implementation)
    return model.eval()


def _build(config_cls, model_cls, head_cls, head: bool, attn_implementation: Optional[str] = None, **overrides):
    config = config_cls(**{**_COMMON, **overrides}, num_labels=NUM_LABELS)
    return _instantiate(head_cls if head else model_cls, config, attn_implementation)


def _randomize(model: nn.Module, suffix: str, std: float = 0.5) -> None:
    """Give parameters that transformers initialises to zero (bias tables, ...) random values."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(suffix):
                param.copy_(torch.randn(param.shape, generator=generator) * std)


# ----------------------------------------------------------------------------------------------------------------
# Linear probes for encoders that transformers ships without an image classifier
# ----------------------------------------------------------------------------------------------------------------


def _probe_class(pretrained_cls: type, encoder_cls: type, name: str) -> type:
    """A `*ForImageClassification` for an encoder without one: a linear head on the CLS token."""

    def __init__(self, config) -> None:
        pretrained_cls.__init__(self, config)
        setattr(self, self.base_model_prefix, encoder_cls(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None, return_dict=None, **kwargs):
        outputs = getattr(self, self.base_model_prefix)(pixel_values, **kwargs)
        logits = self.classifier(outputs.last_hidden_state[:, 0])
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        result = ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return result.to_tuple() if return_dict is False else result

    return type(name, (pretrained_cls,), {"__init__": __init__, "forward": forward, "__module__": __name__})


def _mae_identity_noise(module: nn.Module, args: tuple, kwargs: dict) -> Optional[tuple[tuple, dict]]:
    """ViTMAE's embeddings shuffle (and with mask_ratio > 0 drop) patches by argsort(noise); identity-order noise keeps
    the first `len_keep` patches in order and makes the encoder deterministic."""
    if kwargs.get("noise") is not None:
        return None
    pixels = args[0] if args else kwargs["pixel_values"]
    patch = module.config.patch_size
    num_patches = (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch)
    noise = torch.arange(num_patches, dtype=torch.float32, device=pixels.device).expand(pixels.shape[0], -1)
    return args, {**kwargs, "noise": noise}


def _deterministic_mae(model: nn.Module) -> nn.Module:
    from transformers import ViTMAEModel

    for module in model.modules():
        if isinstance(module, ViTMAEModel):
            module.register_forward_pre_hook(_mae_identity_noise, with_kwargs=True)
    return model


def _vit_mae_probe() -> type:
    from transformers import ViTMAEModel, ViTMAEPreTrainedModel

    return _probe_class(ViTMAEPreTrainedModel, ViTMAEModel, "TinyViTMAEForImageClassification")


def _dinov3_probe() -> type:
    from transformers import DINOv3ViTModel, DINOv3ViTPreTrainedModel

    return _probe_class(DINOv3ViTPreTrainedModel, DINOv3ViTModel, "TinyDINOv3ViTForImageClassification")


# ----------------------------------------------------------------------------------------------------------------
# Factories, one per family
# ----------------------------------------------------------------------------------------------------------------


def tiny_vit(head: bool = True, attn_implementation: Optional[str] = None) -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification, ViTModel

    return _build(ViTConfig, ViTModel, ViTForImageClassification, head, attn_implementation, intermediate_size=64)


def tiny_deit(head: bool = True, attn_implementation: Optional[str] = None) -> nn.Module:
    from transformers import DeiTConfig, DeiTForImageClassification, DeiTModel

    return _build(DeiTConfig, DeiTModel, DeiTForImageClassification, head, attn_implementation, intermediate_size=64)


def tiny_deit_with_teacher(attn_implementation: Optional[str] = None) -> nn.Module:
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    return _build(
        DeiTConfig, None, DeiTForImageClassificationWithTeacher, True, attn_implementation, intermediate_size=64
    )


_MAE_DECODER = dict(
    decoder_hidden_size=16, decoder_num_hidden_layers=2, decoder_num_attention_heads=2, decoder_intermediate_size=32
)


def tiny_vit_mae(head: bool = True, attn_implementation: Optional[str] = None) -> nn.Module:
    from transformers import ViTMAEConfig, ViTMAEModel

    model = _build(
        ViTMAEConfig, ViTMAEModel, _vit_mae_probe(), head, attn_implementation, intermediate_size=64, mask_ratio=0.0
    )
    return _deterministic_mae(model)


def tiny_vit_mae_pretraining(mask_ratio: float = 0.75, attn_implementation: Optional[str] = None) -> nn.Module:
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    model = _build(
        ViTMAEConfig,
        None,
        ViTMAEForPreTraining,
        True,
        attn_implementation,
        intermediate_size=64,
        mask_ratio=mask_ratio,
        **_MAE_DECODER,
    )
    return _deterministic_mae(model)


def tiny_dinov2(head: bool = True, attn_implementation: Optional[str] = None) -> nn.Module:
    from transformers import Dinov2Config, Dinov2ForImageClassification, Dinov2Model

    return _build(Dinov2Config, Dinov2Model, Dinov2ForImageClassification, head, attn_implementation, mlp_ratio=2)


def tiny_dinov2_registers(head: bool = True, attn_implementation: Optional[str] = None) -> nn.Module:
    from transformers import (
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersForImageClassification,
        Dinov2WithRegistersModel,
    )

    return _build(
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
        Dinov2WithRegistersForImageClassification,
        head,
        attn_implementation,
        mlp_ratio=2,
        num_register_tokens=2,
    )


def tiny_dinov3(head: bool = True, attn_implementation: Optional[str] = None) -> nn.Module:
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    return _build(
        DINOv3ViTConfig,
        DINOv3ViTModel,
        _dinov3_probe(),
        head,
        attn_implementation,
        intermediate_size=64,
        num_register_tokens=2,
    )


def tiny_beit(head: bool = True, attn_implementation: Optional[str] = None, **overrides: Any) -> nn.Module:
    from transformers import BeitConfig, BeitForImageClassification, BeitModel

    # Absolute position embeddings, a per-block and a shared relative position bias: every position mechanism at once.
    model = _build(
        BeitConfig,
        BeitModel,
        BeitForImageClassification,
        head,
        attn_implementation,
        intermediate_size=64,
        use_absolute_position_embeddings=True,
        use_relative_position_bias=True,
        use_shared_relative_position_bias=True,
        **overrides,
    )
    _randomize(model, "relative_position_bias_table")
    return model


def tiny_data2vec_vision(head: bool = True, attn_implementation: Optional[str] = None, **overrides: Any) -> nn.Module:
    from transformers import Data2VecVisionConfig, Data2VecVisionForImageClassification, Data2VecVisionModel

    model = _build(
        Data2VecVisionConfig,
        Data2VecVisionModel,
        Data2VecVisionForImageClassification,
        head,
        attn_implementation,
        intermediate_size=64,
        use_absolute_position_embeddings=True,
        use_relative_position_bias=True,
        use_shared_relative_position_bias=True,
        **overrides,
    )
    _randomize(model, "relative_position_bias_table")
    return model


def tiny_vit_msn(head: bool = True, attn_implementation: Optional[str] = None) -> nn.Module:
    from transformers import ViTMSNConfig, ViTMSNForImageClassification, ViTMSNModel

    return _build(
        ViTMSNConfig, ViTMSNModel, ViTMSNForImageClassification, head, attn_implementation, intermediate_size=64
    )


def tiny_ijepa(head: bool = True, attn_implementation: Optional[str] = None) -> nn.Module:
    from transformers import IJepaConfig, IJepaForImageClassification, IJepaModel

    return _build(IJepaConfig, IJepaModel, IJepaForImageClassification, head, attn_implementation, intermediate_size=64)


_TOWER = dict(
    image_size=IMAGE_SIZE,
    patch_size=PATCH_SIZE,
    hidden_size=HIDDEN,
    intermediate_size=64,
    num_hidden_layers=DEPTH,
    num_attention_heads=HEADS,
)
_TEXT_TOWER = dict(
    vocab_size=99,
    hidden_size=HIDDEN,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=HEADS,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)


def _dual_tower(config_cls, model_cls, head: bool, attn_implementation: Optional[str], **extra: Any) -> nn.Module:
    config = config_cls(text_config=dict(_TEXT_TOWER), vision_config=dict(_TOWER), num_labels=NUM_LABELS, **extra)
    return _instantiate(model_cls, config, attn_implementation)


def tiny_clip(head: bool = True, attn_implementation: Optional[str] = None) -> nn.Module:
    from transformers import CLIPConfig, CLIPForImageClassification, CLIPVisionConfig, CLIPVisionModel

    if head:
        return _dual_tower(CLIPConfig, CLIPForImageClassification, True, attn_implementation, projection_dim=16)
    return _instantiate(CLIPVisionModel, CLIPVisionConfig(**_TOWER), attn_implementation)


def tiny_clip_model(attn_implementation: Optional[str] = None) -> nn.Module:
    """The full two-tower `CLIPModel` (text tower of 2 blocks)."""
    from transformers import CLIPConfig, CLIPModel

    return _dual_tower(CLIPConfig, CLIPModel, True, attn_implementation, projection_dim=16)


def tiny_siglip(head: bool = True, attn_implementation: Optional[str] = None) -> nn.Module:
    from transformers import SiglipConfig, SiglipForImageClassification, SiglipVisionConfig, SiglipVisionModel

    if head:
        return _dual_tower(SiglipConfig, SiglipForImageClassification, True, attn_implementation)
    return _instantiate(SiglipVisionModel, SiglipVisionConfig(**_TOWER), attn_implementation)


def tiny_metaclip_2_model(attn_implementation: Optional[str] = None) -> nn.Module:
    """The full two-tower `MetaClip2Model`."""
    from transformers import MetaClip2Config, MetaClip2Model

    return _dual_tower(MetaClip2Config, MetaClip2Model, True, attn_implementation, projection_dim=16)


def tiny_aimv2_model(attn_implementation: Optional[str] = None) -> nn.Module:
    """The full two-tower `Aimv2Model`."""
    from transformers import Aimv2Config, Aimv2Model

    return _dual_tower(Aimv2Config, Aimv2Model, True, attn_implementation, projection_dim=16)


def tiny_siglip_model(attn_implementation: Optional[str] = None) -> nn.Module:
    from transformers import SiglipConfig, SiglipModel

    return _dual_tower(SiglipConfig, SiglipModel, True, attn_implementation)


def _transformers_class(name: str) -> type:
    """A class of transformers by its top-level name, or as `module:Class` for one not exported at the top."""
    import importlib

    import transformers

    if ":" in name:
        module, _, cls = name.partition(":")
        return getattr(importlib.import_module(module), cls)
    return getattr(transformers, name)


def _vision_tower(
    vision_cls_name: str, config_cls_name: str, head_cls_name: Optional[str] = None, **overrides: Any
) -> Callable:
    """A factory for a CLIP-style vision tower: the bare tower, or with `head=True` transformers' classifier if it has
    one, else a linear probe on the tower's CLS token (as for ViTMAE)."""

    def factory(head: bool = True, attn_implementation: Optional[str] = None) -> nn.Module:
        vision_cls, config_cls = _transformers_class(vision_cls_name), _transformers_class(config_cls_name)
        config = config_cls(**{**_TOWER, **overrides}, num_labels=NUM_LABELS)
        if not head:
            return _instantiate(vision_cls, config, attn_implementation)
        if head_cls_name is not None:
            return _instantiate(_transformers_class(head_cls_name), config, attn_implementation)
        pretrained = vision_cls.__mro__[1]
        probe = _probe_class(pretrained, vision_cls, f"Tiny{vision_cls.__name__}ForImageClassification")
        return _instantiate(probe, config, attn_implementation)

    return factory


# Vision towers without a CLS token, built by the same factory (their probe reads the first token).
NO_CLS_TOWERS = {
    "aimv2": ("Aimv2VisionModel", "Aimv2VisionConfig", None, "AIMv2 vision tower"),
    "idefics2": (
        "transformers.models.idefics2.modeling_idefics2:Idefics2VisionTransformer",
        "Idefics2VisionConfig",
        None,
        "Idefics2 / Idefics3 vision transformer",
    ),
    "idefics3": ("Idefics3VisionTransformer", "Idefics3VisionConfig", None, "Idefics2 / Idefics3 vision transformer"),
}

# The CLIP-architecture vision towers, each its own family in the registry (same test factory).
CLIP_STYLE_TOWERS = {
    "chinese_clip": ("ChineseCLIPVisionModel", "ChineseCLIPVisionConfig", None, "Chinese-CLIP vision tower"),
    "metaclip_2": ("MetaClip2VisionModel", "MetaClip2VisionConfig", None, "MetaCLIP 2 vision tower"),
    "altclip": ("AltCLIPVisionModel", "AltCLIPVisionConfig", None, "AltCLIP vision tower"),
    "owlvit": ("OwlViTVisionModel", "OwlViTVisionConfig", None, "OWL-ViT vision tower"),
    "owlv2": ("Owlv2VisionModel", "Owlv2VisionConfig", None, "OWLv2 vision tower"),
    "clipseg": ("CLIPSegVisionModel", "CLIPSegVisionConfig", None, "CLIPSeg vision tower"),
    # one frame per clip: the tests' batches of 2-3 images are then 2-3 clips (X-CLIP needs batch % frames == 0)
    "xclip": ("XCLIPVisionModel", "XCLIPVisionConfig", None, "X-CLIP vision tower", {"num_frames": 1}),
    "mlcd": ("MLCDVisionModel", "MLCDVisionConfig", None, "MLCD vision tower"),
}

TINY_BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "vit": tiny_vit,
    "deit": tiny_deit,
    "vit_mae": tiny_vit_mae,
    "dinov2": tiny_dinov2,
    "dinov2_registers": tiny_dinov2_registers,
    "dinov3": tiny_dinov3,
    "beit": tiny_beit,
    "data2vec_vision": tiny_data2vec_vision,
    "vit_msn": tiny_vit_msn,
    "ijepa": tiny_ijepa,
    "clip": tiny_clip,
    "siglip": tiny_siglip,
    **{key: _vision_tower(*spec[:3], **(spec[4] if len(spec) > 4 else {})) for key, spec in CLIP_STYLE_TOWERS.items()},
    **{key: _vision_tower(*spec[:3]) for key, spec in NO_CLS_TOWERS.items()},
}

# Family id -> (registry family name, prefix tokens of the tiny model). The tiny DINOv2/DINOv3 models have 2 registers.
TINY_FAMILY_FACTS: dict[str, tuple[str, int]] = {
    "vit": ("ViT", 1),
    "deit": ("DeiT", 2),
    "vit_mae": ("ViTMAE", 1),
    "dinov2": ("DINOv2", 1),
    "dinov2_registers": ("DINOv2 with registers", 3),
    "dinov3": ("DINOv3 ViT", 3),
    "beit": ("BEiT", 1),
    "data2vec_vision": ("Data2Vec-vision", 1),
    "vit_msn": ("ViTMSN", 1),
    "ijepa": ("I-JEPA", 0),
    "clip": ("CLIP vision tower", 1),
    "siglip": ("SigLIP vision tower", 0),
    **{key: (spec[3], 1) for key, spec in CLIP_STYLE_TOWERS.items()},
    **{key: (spec[3], 0) for key, spec in NO_CLS_TOWERS.items()},
}


def pixel_values(batch: int = 2, seed: int = 0, size: int = IMAGE_SIZE) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=generator)


# ----------------------------------------------------------------------------------------------------------------
# Families whose inputs or outputs are not the shared tests' images and hidden states
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OtherInputBackbone:
    """A tiny model of a family the image harness above cannot drive: videos (ViViT, V-JEPA 2), or pose heatmaps
    and feature maps with a per-sample expert index (ViTPose). `build(head, attn_implementation)` gives the task
    model (`head=True`) or the bare encoder; `inputs(seed)` a batch of 2; `output(out, head)` the tensor a test
    compares; `prefix` the prefix tokens before the prompts."""

    family: str
    build: Callable[..., nn.Module]
    inputs: Callable[..., dict[str, torch.Tensor]]
    output: Callable[[Any, bool], torch.Tensor]
    prefix: int = 0


def _vitpose(head: bool = True, attn_implementation: Optional[str] = None) -> nn.Module:
    from transformers import VitPoseBackbone, VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation

    backbone = dict(
        image_size=[IMAGE_SIZE, IMAGE_SIZE],
        patch_size=[PATCH_SIZE, PATCH_SIZE],
        hidden_size=HIDDEN,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        mlp_ratio=2,
        num_experts=2,  # the mixture-of-experts MLP: each sample goes through the expert of its `dataset_index`
        part_features=8,
        out_indices=[2, DEPTH],
        initializer_range=0.2,
    )
    if head:
        config = VitPoseConfig(backbone_config=VitPoseBackboneConfig(**backbone), initializer_range=0.2)
        return _instantiate(VitPoseForPoseEstimation, config, attn_implementation)
    return _instantiate(VitPoseBackbone, VitPoseBackboneConfig(**backbone), attn_implementation)


def _vivit(head: bool = True, attn_implementation: Optional[str] = None) -> nn.Module:
    from transformers import VivitConfig, VivitForVideoClassification, VivitModel

    config = VivitConfig(
        image_size=IMAGE_SIZE,
        num_frames=4,
        tubelet_size=[2, PATCH_SIZE, PATCH_SIZE],
        hidden_size=HIDDEN,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        intermediate_size=64,
        num_labels=NUM_LABELS,
    )
    return _instantiate(VivitForVideoClassification if head else VivitModel, config, attn_implementation)


def _vjepa2(head: bool = True, attn_implementation: Optional[str] = None) -> nn.Module:
    from transformers import VJEPA2Config, VJEPA2ForVideoClassification, VJEPA2Model

    config = VJEPA2Config(
        crop_size=IMAGE_SIZE,
        frames_per_clip=4,
        tubelet_size=2,
        patch_size=PATCH_SIZE,
        hidden_size=HIDDEN,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        mlp_ratio=2,
        pred_hidden_size=16,
        pred_num_hidden_layers=1,
        pred_num_attention_heads=2,
        num_pooler_layers=1,
        num_labels=NUM_LABELS,
        initializer_range=0.2,
    )
    return _instantiate(VJEPA2ForVideoClassification if head else VJEPA2Model, config, attn_implementation)


def _video(seed: int, key: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(2, 4, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)}


def _encoder_output(out: Any, head: bool) -> torch.Tensor:
    return out.logits if head else out.last_hidden_state


OTHER_INPUT_BACKBONES: dict[str, OtherInputBackbone] = {
    "vitpose": OtherInputBackbone(
        "ViTPose backbone",
        _vitpose,
        lambda seed=0: {"pixel_values": pixel_values(seed=seed), "dataset_index": torch.tensor([0, 1])},
        lambda out, head: out.heatmaps if head else out.feature_maps[-1],
    ),
    "vivit": OtherInputBackbone("ViViT", _vivit, lambda seed=0: _video(seed, "pixel_values"), _encoder_output, 1),
    "vjepa2": OtherInputBackbone(
        "V-JEPA 2", _vjepa2, lambda seed=0: _video(seed, "pixel_values_videos"), _encoder_output
    ),
}
