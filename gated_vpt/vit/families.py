# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The registry of supported ViT families: one `BackboneFamily` record each, keyed by `config.model_type`.

It is the single source of truth for "supported models": `find_prompt_site` (`gated_vpt.vit.backbones`) reads it, and
docs/supported_models.md is generated from it. Adding a family is adding a record here (see docs/architecture.md).
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .attention import is_relative_position_bias
from .family import (
    NO_PATCH_GRID,
    BackboneFamily,
    _always,
    _cls_and_distillation,
    _cls_and_registers,
    _no_prefix,
    _one_cls,
    _without_mean_pooling,
)
from .tokens import pad_bias_for_prompts

# ----------------------------------------------------------------------------------------------------------------
# Family-specific encoder hooks
# ----------------------------------------------------------------------------------------------------------------


def _is_windowed_relative_position_bias(module: nn.Module) -> bool:
    """BEiT / Data2Vec-vision `*RelativePositionBias`: `forward(window_size, interpolate_pos_encoding, dim_size)`
    returns a `[1, H, T, T]` bias for the prompt-free sequence of `T = window_h * window_w + 1` tokens (CLS first)."""
    return is_relative_position_bias(module) and hasattr(module, "generate_relative_position_index")


def _pad_relative_position_biases(encoder: nn.Module, num_prefix_tokens: int) -> list[RemovableHandle]:
    """Give prompt tokens zero relative position bias in BEiT-style models.

    The blocks (per-block bias) and the encoder (shared bias) call the bias module with `dim_size` = the length of the
    sequence they hold, which includes the prompt slots between the first and the last prompted block. The module
    builds the bias from the window size, i.e. for the prompt-free `T = wh * ww + 1` tokens, and with
    `interpolate_pos_encoding=True` resizes it bilinearly to `dim_size x dim_size` (for the prompt-free sequence that
    resize is the identity). With prompts present, the pre-hook turns that resize off (so the prompt-free bias is
    exactly the base model's) and the forward hook inserts zero rows and columns for the prompt slots. Without
    prompts (`dim_size == T`) both hooks do nothing. Stateless: everything is read from the call's arguments.
    """

    def bound_arguments(module: nn.Module, args: tuple, kwargs: dict) -> Optional[inspect.BoundArguments]:
        try:
            bound = inspect.signature(module.forward).bind(*args, **kwargs)
        except TypeError:
            return None
        bound.apply_defaults()
        window, dim_size = bound.arguments.get("window_size"), bound.arguments.get("dim_size")
        if window is None or not isinstance(dim_size, (int, torch.SymInt)):
            return None
        free_len = int(window[0]) * int(window[1]) + 1
        return bound if dim_size > free_len else None

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> Optional[tuple[tuple, dict]]:
        bound = bound_arguments(module, args, kwargs)
        if bound is None:
            return None
        bound.arguments["interpolate_pos_encoding"] = False
        return bound.args, bound.kwargs

    def post_hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        bound = bound_arguments(module, args, kwargs)
        if bound is None or not torch.is_tensor(output):
            return None
        window, dim_size = bound.arguments["window_size"], bound.arguments["dim_size"]
        free_len = int(window[0]) * int(window[1]) + 1
        return pad_bias_for_prompts(output, free_len, num_prefix_tokens, dim_size - free_len)

    handles = []
    for module in encoder.modules():
        if _is_windowed_relative_position_bias(module):
            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            handles.append(module.register_forward_hook(post_hook, with_kwargs=True))
    return handles


def _vjepa2_prompt_positions(
    args: tuple, kwargs: dict, hidden_states: torch.Tensor, start: int, num_prompts: int
) -> tuple[tuple, dict]:
    """V-JEPA 2's rotary embedding reads each token's (frame, row, column) from its index in `position_mask`; the
    encoder passes None, and the attention then numbers the tokens `0 .. T - 1` as they come. With prompts in the
    sequence that would move every patch after them. So the block gets the index of the prompt-free sequence for
    the patches and index 0, i.e. angle 0 in all three axes, the identity rotation, for the prompts: the patches
    keep their positions and the prompts get none (as in DINOv3)."""
    free_len = hidden_states.shape[1] - num_prompts
    positional = len(args) > 0
    positions = args[0] if positional else kwargs.get("position_mask")
    if positions is None:
        positions = torch.arange(free_len, device=hidden_states.device).expand(hidden_states.shape[0], free_len)
    if not torch.is_tensor(positions) or positions.shape[-1] != free_len:
        return args, kwargs
    prompt_positions = positions.new_zeros((*positions.shape[:-1], num_prompts))
    positions = torch.cat((positions[..., :start], prompt_positions, positions[..., start:]), dim=-1)
    if positional:
        return (positions, *args[1:]), kwargs
    return args, {**kwargs, "position_mask": positions}


# ----------------------------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------------------------

_VIT_STACKS = ("layers", "encoder.layer", "encoder.layers")
_CLIP_STACKS = ("encoder.layers", "vision_model.encoder.layers")


def _clip_style(name: str, model_type: str, example_classes: tuple[str, ...], notes: str) -> BackboneFamily:
    """A CLIP-architecture vision tower: CLS, then patches; `pre_layrnorm` before the blocks."""
    return BackboneFamily(
        name=name,
        model_types=(model_type,),
        stack_paths=_CLIP_STACKS,
        num_prefix_tokens=_one_cls,
        example_classes=example_classes,
        notes=" ".join(t for t in ("The CLIP architecture: prompts go after CLS, after `pre_layrnorm`.", notes) if t),
    )


HF_FAMILIES: tuple[BackboneFamily, ...] = (
    BackboneFamily(
        name="ViT",
        model_types=("vit",),
        stack_paths=_VIT_STACKS,
        num_prefix_tokens=_one_cls,
        example_classes=("ViTModel", "ViTForImageClassification"),
        prefix_only_heads=(("ViTForImageClassification", _always),),
    ),
    BackboneFamily(
        name="DeiT",
        model_types=("deit",),
        stack_paths=_VIT_STACKS,
        num_prefix_tokens=_cls_and_distillation,
        example_classes=("DeiTModel", "DeiTForImageClassification", "DeiTForImageClassificationWithTeacher"),
        prefix_only_heads=(
            ("DeiTForImageClassification", _always),
            ("DeiTForImageClassificationWithTeacher", _always),
        ),
        prefix_tokens_text="2 (CLS, distillation)",
        notes="Prompts go after the distillation token; both heads of the teacher variant see their usual tokens.",
    ),
    BackboneFamily(
        name="ViTMAE",
        patch_grid=NO_PATCH_GRID,
        model_types=("vit_mae",),
        stack_paths=_VIT_STACKS,
        num_prefix_tokens=_one_cls,
        example_classes=("ViTMAEModel", "ViTMAEForPreTraining"),
        notes=(
            "Set `mask_ratio=0` to fine-tune (the embeddings still shuffle the patches unless a fixed `noise` is "
            "passed). With masking the encoder sees `[CLS; kept patches]` and prompts go after CLS. Only the encoder "
            "is prompted: the decoder of `ViTMAEForPreTraining` gets a prompt-free latent. transformers has no ViTMAE "
            "classifier: put a head on `ViTMAEModel`, or load MAE weights into `ViTForImageClassification`."
        ),
    ),
    BackboneFamily(
        name="DINOv2",
        model_types=("dinov2",),
        stack_paths=("encoder.layer", "encoder.layers", "layers"),
        num_prefix_tokens=_one_cls,
        example_classes=("Dinov2Model", "Dinov2ForImageClassification", "Dinov2Backbone"),
    ),
    BackboneFamily(
        name="DINOv2 with registers",
        model_types=("dinov2_with_registers",),
        stack_paths=("encoder.layer", "encoder.layers", "layers"),
        num_prefix_tokens=_cls_and_registers,
        example_classes=("Dinov2WithRegistersModel", "Dinov2WithRegistersForImageClassification"),
        prefix_tokens_text="1 + num_register_tokens (CLS, registers)",
        notes="Prompts go after the register tokens.",
    ),
    BackboneFamily(
        name="DINOv3 ViT",
        model_types=("dinov3_vit",),
        stack_paths=("model.layer", "layer", "layers"),
        num_prefix_tokens=_cls_and_registers,
        example_classes=("DINOv3ViTModel", "DINOv3ViTBackbone"),
        prefix_tokens_text="1 + num_register_tokens (CLS, registers)",
        notes=(
            "RoPE is applied to the last `num_patches` tokens of the sequence, so prompts (like CLS and registers) "
            "get no rotary embedding. transformers has no DINOv3 classifier: put a head on `DINOv3ViTModel`."
        ),
    ),
    BackboneFamily(
        name="BEiT",
        model_types=("beit",),
        stack_paths=_VIT_STACKS,
        num_prefix_tokens=_one_cls,
        example_classes=("BeitModel", "BeitForImageClassification"),
        prefix_only_heads=(("BeitForImageClassification", _without_mean_pooling),),
        encoder_hooks=(_pad_relative_position_biases,),
        notes="Per-block and shared relative position biases are padded: prompts get zero bias.",
    ),
    BackboneFamily(
        name="Data2Vec-vision",
        model_types=("data2vec-vision",),
        stack_paths=("encoder.layer", "encoder.layers", "layers"),
        num_prefix_tokens=_one_cls,
        example_classes=("Data2VecVisionModel", "Data2VecVisionForImageClassification"),
        prefix_only_heads=(("Data2VecVisionForImageClassification", _without_mean_pooling),),
        encoder_hooks=(_pad_relative_position_biases,),
        notes="Blocks return tuples. Per-block and shared relative position biases are padded: prompts get zero bias.",
    ),
    BackboneFamily(
        name="ViTMSN",
        model_types=("vit_msn",),
        stack_paths=_VIT_STACKS,
        num_prefix_tokens=_one_cls,
        example_classes=("ViTMSNModel", "ViTMSNForImageClassification"),
        prefix_only_heads=(("ViTMSNForImageClassification", _always),),
    ),
    BackboneFamily(
        name="I-JEPA",
        model_types=("ijepa",),
        stack_paths=_VIT_STACKS,
        num_prefix_tokens=_no_prefix,
        example_classes=("IJepaModel", "IJepaForImageClassification"),
        prefix_tokens_text="0 (no CLS)",
        cls_token_index=None,
        notes="No CLS: prompts go first; pooling is the host head's (mean over patches). CDC's AR is unavailable.",
    ),
    BackboneFamily(
        name="CLIP vision tower",
        model_types=("clip_vision_model",),
        stack_paths=_CLIP_STACKS,
        num_prefix_tokens=_one_cls,
        example_classes=("CLIPVisionModel", "CLIPForImageClassification", "CLIPModel"),
        # the image embedding is the projected, normalised CLS token (CLIPForImageClassification averages patches)
        prefix_only_heads=(("CLIPModel", _always), ("CLIPVisionModelWithProjection", _always)),
        notes=(
            "Prompts are inserted after `pre_layrnorm`. In `CLIPModel` only the vision tower is prompted "
            "(`vision_model.encoder.layers`); the text tower is left as is."
        ),
    ),
    *(
        _clip_style(name, model_type, classes, notes)
        for name, model_type, classes, notes in (
            ("Chinese-CLIP vision tower", "chinese_clip_vision_model", ("ChineseCLIPVisionModel",), ""),
            (
                "MetaCLIP 2 vision tower",
                "metaclip_2_vision_model",
                ("MetaClip2VisionModel", "MetaClip2Model"),
                "In `MetaClip2Model` only the vision tower is prompted.",
            ),
            ("AltCLIP vision tower", "altclip_vision_model", ("AltCLIPVisionModel",), ""),
            ("OWL-ViT vision tower", "owlvit_vision_model", ("OwlViTVisionModel",), ""),
            ("OWLv2 vision tower", "owlv2_vision_model", ("Owlv2VisionModel",), ""),
            (
                "CLIPSeg vision tower",
                "clipseg_vision_model",
                ("CLIPSegVisionModel",),
                "Hidden states (which CLIPSeg's decoder reads) are returned prompt-free.",
            ),
            (
                "X-CLIP vision tower",
                "xclip_vision_model",
                ("XCLIPVisionModel",),
                "Each block appends its cross-frame message token after the sequence and drops it again; prompts sit "
                "after CLS, and CDC's reinforcement never selects the message token.",
            ),
        )
    ),
    BackboneFamily(
        name="MLCD vision tower",
        model_types=("mlcd_vision_model",),
        stack_paths=_CLIP_STACKS,
        num_prefix_tokens=_one_cls,
        example_classes=("MLCDVisionModel",),
        notes=(
            "2-D RoPE over CLS and patches, passed to every block: the prompt slots get the identity rotation, the "
            "other tokens keep theirs."
        ),
    ),
    BackboneFamily(
        name="AIMv2 vision tower",
        model_types=("aimv2_vision_model",),
        stack_paths=_CLIP_STACKS,
        num_prefix_tokens=_no_prefix,
        example_classes=("Aimv2VisionModel", "Aimv2Model"),
        prefix_tokens_text="0 (no CLS)",
        cls_token_index=None,
        notes=(
            "No CLS: prompts go first; pooling is the host head's. CDC's AR is unavailable. In `Aimv2Model` only the "
            "vision tower is prompted."
        ),
    ),
    BackboneFamily(
        name="Idefics2 / Idefics3 vision transformer",
        model_types=("idefics2_vision", "idefics3_vision"),
        stack_paths=_CLIP_STACKS,
        num_prefix_tokens=_no_prefix,
        example_classes=("Idefics2VisionTransformer", "Idefics3VisionTransformer", "Idefics3Model"),
        prefix_tokens_text="0 (no CLS)",
        cls_token_index=None,
        notes=(
            "No CLS: prompts go first. In the vision-language `Idefics3Model` only the vision transformer is "
            "prompted; the connector and the text model get its prompt-free output. With a `patch_attention_mask` "
            "(padded images) the mask reaches the blocks as a "
            "boolean mask under SDPA, and prompts attend exactly the real patches; under eager attention it is "
            "additive and prompts attend every position."
        ),
    ),
    BackboneFamily(
        name="SigLIP2 vision tower (NaFlex)",
        patch_grid=NO_PATCH_GRID,
        model_types=("siglip2_vision_model",),
        stack_paths=_CLIP_STACKS,
        num_prefix_tokens=_no_prefix,
        example_classes=("Siglip2VisionModel", "Siglip2Model"),
        prefix_tokens_text="0 (no CLS)",
        cls_token_index=None,
        notes=(
            "NaFlex: images are patch lists padded to a fixed length with `pixel_attention_mask`. The mask reaches "
            "the blocks as a boolean mask under SDPA (the default): every real patch attends the prompts and the "
            "prompts attend exactly the real patches, never the padding. Under eager attention the mask is additive "
            "and the prompts attend the padding too. No CLS: CDC's AR is unavailable. In `Siglip2Model` only the "
            "vision tower is prompted."
        ),
    ),
    BackboneFamily(
        name="SigLIP vision tower",
        model_types=("siglip_vision_model",),
        stack_paths=("encoder.layers", "vision_model.encoder.layers"),
        num_prefix_tokens=_no_prefix,
        example_classes=("SiglipVisionModel", "SiglipForImageClassification", "SiglipModel"),
        prefix_tokens_text="0 (no CLS)",
        cls_token_index=None,
        notes=(
            "No CLS: prompts go first; pooling is the host head's (attention-pooling head / mean). CDC's AR is "
            "unavailable. In `SiglipModel` only the vision tower is prompted."
        ),
    ),
    BackboneFamily(
        name="ViTPose backbone",
        model_types=("vitpose_backbone",),
        stack_paths=("encoder.layer",),
        num_prefix_tokens=_no_prefix,
        example_classes=("VitPoseBackbone", "VitPoseForPoseEstimation"),
        prefix_tokens_text="0 (no CLS)",
        cls_token_index=None,
        notes=(
            "No CLS (the first position embedding is added to every patch): prompts go first. Feature maps and pose "
            "heatmaps are computed from prompt-free hidden states; `dataset_index` reaches the mixture-of-experts "
            "MLPs as is (prompts pass through each sample's expert). CDC's AR is unavailable."
        ),
    ),
    BackboneFamily(
        name="ViViT",
        patch_grid=NO_PATCH_GRID,
        model_types=("vivit",),
        stack_paths=_VIT_STACKS,
        num_prefix_tokens=_one_cls,
        patch_size=lambda config: config.tubelet_size[1],
        example_classes=("VivitModel", "VivitForVideoClassification"),
        prefix_only_heads=(("VivitForVideoClassification", _always),),
        notes=(
            "Video: tubelet tokens of all frames in one sequence after CLS; prompts go after CLS and are shared by "
            "all frames. VPT's prompt init uses the tubelet's spatial size as the patch size."
        ),
    ),
    BackboneFamily(
        name="V-JEPA 2",
        patch_grid=NO_PATCH_GRID,
        model_types=("vjepa2",),
        stack_paths=("encoder.layer",),
        num_prefix_tokens=_no_prefix,
        example_classes=("VJEPA2Model", "VJEPA2ForVideoClassification"),
        prefix_tokens_text="0 (no CLS)",
        cls_token_index=None,
        block_arguments=_vjepa2_prompt_positions,
        notes=(
            "Video, 3-D RoPE from each token's index: the prompted blocks get the patches' prompt-free indices and "
            "index 0 (the identity rotation) for the prompts. Only the encoder is prompted: the predictor of "
            "`VJEPA2Model` and the attentive pooler of the classifier get prompt-free tokens. No CLS: CDC's AR is "
            "unavailable."
        ),
    ),
    *(
        BackboneFamily(
            name=name,
            model_types=model_types,
            stack_paths=(),
            num_prefix_tokens=_no_prefix,
            example_classes=(example,),
            prefix_tokens_text="—",
            cls_token_index=None,
            refusal=why,
        )
        for name, model_types, example, why in (
            (
                "ViTDet",
                ("vitdet",),
                "VitDetModel",
                "most blocks attend within fixed windows of the 2-D patch grid (and the encoder keeps tokens as a "
                "[B, H, W, C] grid), so extra tokens have no place in a window",
            ),
            (
                "SAM / SAM-HQ / SAM 3 image encoders",
                ("sam_vision_model", "sam_hq_vision_model", "sam3_vit_model"),
                "SamVisionModel",
                "windowed attention on a 2-D token grid with relative position biases per window: prompts cannot "
                "be added to the grid without changing every window",
            ),
            (
                "Hiera",
                ("hiera", "sam2_hiera_det_model"),
                "HieraModel",
                "hierarchical: tokens are pooled between stages and attention runs inside mask units, so the "
                "sequence is not one token list the prompts could join",
            ),
            (
                "Pixtral vision encoder",
                ("pixtral",),
                "PixtralVisionModel",
                "images of a batch are concatenated into one sequence with block-diagonal attention and 2-D RoPE "
                "per image; prompts would have to be inserted and masked per image",
            ),
            (
                "RADIO",
                ("radio",),
                "RadioModel",
                "its packed mode concatenates images of different sizes into one sequence (`cu_seqlens`, "
                "block-diagonal attention), where prompts would have to be inserted per image",
            ),
        )
    ),
)
