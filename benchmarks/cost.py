"""Training-step and inference cost of prompt tuning against its physical floor, and against LoRA / full FT.

The *floor* for prompt tuning is the frozen backbone's own forward plus the input-gradient backward on a
sequence that already carries the same number of extra tokens: here, the plain transformers model with N_p
trainable tokens concatenated after CLS by a forward pre-hook on block 0 (no gates, no temperatures, no
wrappers). Every method is timed in the same process, interleaved round by round, so that the ratios to the
floor hold on a noisy machine; each reported time is the median over rounds.

Also measured: activation memory (bytes of tensors saved for backward, via saved-tensor hooks: deterministic,
the part of training memory that prompt tuning changes) and inference latency (eval, no_grad).

    python benchmarks/cost.py                      # CPU mode: ViT-S and ViT-B at 112 px, batch 8
    python benchmarks/cost.py --mode gpu           # GPU mode: 224 px, batch 64, bf16 autocast
    python benchmarks/cost.py --render-only        # rewrite the .md / .png from the .json

Writes docs/benchmarks_cost.md, docs/benchmarks_cost.json and docs/benchmarks_cost.png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import torch
from _runs import cpu_name  # benchmarks/_runs.py
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import ViTConfig, ViTForImageClassification

import gated_vpt

DOCS = Path(__file__).resolve().parents[1] / "docs"
SIZES = {"ViT-S": dict(hidden_size=384, num_attention_heads=6, intermediate_size=1536),
         "ViT-B": dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072)}
PROMPT_METHODS = ("gpt", "vpt-deep", "cdc-no-ar", "cdc")  # gated_vpt.PRESETS names
TARGETS = {"gpt": 1.10, "cdc": 1.20}
INFERENCE_TARGET = 1.05


def backbone(size: str, image_size: int) -> ViTForImageClassification:
    config = ViTConfig(image_size=image_size, patch_size=16, num_hidden_layers=12, num_labels=10,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **SIZES[size])
    torch.manual_seed(0)
    return ViTForImageClassification(config)


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


def build(method: str, size: str, image_size: int, num_prompts: int) -> nn.Module:
    model = backbone(size, image_size)
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


def activation_bytes(model: nn.Module, batch: dict, autocast: Callable) -> int:
    """Bytes of the tensors autograd saves for backward in one training forward (parameters excluded)."""
    params = {p.data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        ptr = tensor.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast():
        loss = model(**batch).loss
    loss.backward()
    for param in model.parameters():
        param.grad = None
    return sum(seen.values())


def timed(fn: Callable, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def compare(methods: list[str], size: str, image_size: int, batch_size: int, num_prompts: int, rounds: int,
            device: torch.device, autocast: Callable) -> dict[str, dict]:
    models = {m: build(m, size, image_size, num_prompts).to(device).train() for m in methods}
    batch = {"pixel_values": torch.randn(batch_size, 3, image_size, image_size, device=device),
             "labels": torch.randint(0, 10, (batch_size,), device=device)}
    for model in models.values():  # warm-up
        train_step(model, batch, autocast)
        infer(model.eval(), batch, autocast)
        model.train()
    train_times = {m: [] for m in methods}
    infer_times = {m: [] for m in methods}
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
            "activation_bytes": activation_bytes(model, batch, autocast),
            "peak_train_bytes": peak_train_bytes(model, batch, autocast, device),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        }
    if "floor" in results:
        for method in results:
            results[method]["train_ratio_to_floor"] = results[method]["train_step_s"] / results["floor"]["train_step_s"]
            results[method]["infer_ratio_to_floor"] = results[method]["infer_s"] / results["floor"]["infer_s"]
    return results


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--out", default=str(DOCS / "benchmarks_cost"))
    parser.add_argument("--render-only", action="store_true", help="Re-render the .md / .png from the .json.")
    args = parser.parse_args()
    if args.render_only:
        out = Path(args.out)
        report = json.loads(out.with_suffix(".json").read_text())
        out.with_suffix(".md").write_text(render(report))
        plot(report, out.with_suffix(".png"))
        return

    gpu = args.mode == "gpu"
    device = torch.device("cuda" if gpu else "cpu")
    image_size, batch_size = (224, 64) if gpu else (112, 8)
    # A CPU step of ViT-S takes ~0.3 s and varies by a few % from round to round: 15 rounds make the medians stable.
    rounds = args.rounds or (20 if gpu else 15)
    if gpu:
        def autocast():
            return torch.autocast("cuda", dtype=torch.bfloat16)
    else:
        import contextlib

        autocast = contextlib.nullcontext
    settings = {"mode": args.mode, "image_size": image_size, "patch_size": 16, "batch_size": batch_size,
                "rounds": rounds, "machine": machine(), "gated_vpt": gated_vpt.__version__,
                "date": datetime.date.today().isoformat(),
                "command": f"python benchmarks/cost.py --mode {args.mode}"
                + (f" --rounds {args.rounds}" if args.rounds else "")}

    methods = ["floor", "gpt", "cdc", "cdc-no-ar", "vpt-deep", "lora", "full"]
    main_table = {size: compare(methods, size, image_size, batch_size, 10, rounds, device, autocast) for size in SIZES}

    prompts_sweep = {}
    for num_prompts in (1, 10, 50, 100, 200):
        prompts_sweep[num_prompts] = compare(["floor", "gpt", "cdc"], "ViT-S", image_size, batch_size, num_prompts,
                                             max(5, rounds // 2), device, autocast)
    batch_sweep = {}
    for bs in ((1, 4, 16) if not gpu else (16, 64, 256)):
        batch_sweep[bs] = compare(["floor", "gpt"], "ViT-S", image_size, bs, 10, max(5, rounds // 2), device, autocast)

    report = {"settings": settings, "num_prompts_10": main_table, "num_prompts_sweep": prompts_sweep,
              "batch_size_sweep": batch_sweep}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(render(report))
    plot(report, out.with_suffix(".png"))
    print(out.with_suffix(".md").read_text())


def target_mark(method: str, result: dict, inference: bool = False) -> str:
    if method not in TARGETS:
        return ""
    if inference:
        return " ✓" if result["infer_ratio_to_floor"] <= INFERENCE_TARGET else " ✗"
    return " ✓" if result["train_ratio_to_floor"] <= TARGETS[method] else " ✗"


def render(report: dict) -> str:
    s = report["settings"]
    lines = [
        "# Cost of prompt tuning: measured",
        "",
        f"Produced by `{s['command']}` on **{s['machine']}**, {s.get('date', 'date not recorded')} "
        f"({s['mode']} mode: {s['image_size']} px, patch "
        f"{s['patch_size']}, batch {s['batch_size']}, median of {s['rounds']} interleaved rounds, random-init "
        "ViT-S/16 and ViT-B/16 of 12 blocks — cost does not depend on the weights). Ratios are to the *floor*: the "
        "frozen backbone's forward + input-gradient backward on a sequence that already carries the same extra "
        "tokens. Targets: GPT training step ≤ 1.10×, CDC ≤ 1.20×, inference ≤ 1.05×. Activation memory is the "
        "bytes autograd saves for backward in one step.",
        "",
    ]
    for size, results in report["num_prompts_10"].items():
        peak = any(r.get("peak_train_bytes") for r in results.values())
        lines += [f"## {size}, 10 prompts", "",
                  "| method | train step (s) | ratio to floor | images/s | inference (s) | inference ratio | "
                  "activation MB |" + (" peak training MB |" if peak else "") + " trainable params |",
                  "|---|---|---|---|---|---|---|" + ("---|" if peak else "") + "---|"]
        for method, r in results.items():
            lines.append(
                f"| {method} | {r['train_step_s']:.4f} | {r['train_ratio_to_floor']:.3f}{target_mark(method, r)} | "
                f"{r['train_images_per_s']:.1f} | {r['infer_s']:.4f} | "
                f"{r['infer_ratio_to_floor']:.3f}{target_mark(method, r, inference=True)} | "
                f"{r['activation_bytes'] / 2**20:.1f} |"
                + (f" {r['peak_train_bytes'] / 2**20:.0f} |" if peak else "")
                + f" {r['trainable_params']:,} |")
        lines.append("")
    lines += ["✓ / ✗: within / above the target (GPT, CDC only; the others are references).", ""]
    lines += ["## Number of prompts (ViT-S)", "",
              f"Median of {max(5, s['rounds'] // 2)} rounds per row (fewer than above, so noisier: on this machine "
              "repeated runs move a ratio by several percent; compare the 10-prompt row with the table above).", "",
              "| prompts | floor step (s) | GPT ratio | CDC ratio | GPT inference ratio | CDC inference ratio |",
              "|---|---|---|---|---|---|"]
    for n, r in report["num_prompts_sweep"].items():
        lines.append(f"| {n} | {r['floor']['train_step_s']:.4f} | {r['gpt']['train_ratio_to_floor']:.3f} | "
                     f"{r['cdc']['train_ratio_to_floor']:.3f} | {r['gpt']['infer_ratio_to_floor']:.3f} | "
                     f"{r['cdc']['infer_ratio_to_floor']:.3f} |")
    lines += ["", "## Batch size (ViT-S, 10 prompts)", "",
              "| batch | floor images/s | GPT images/s | GPT ratio |", "|---|---|---|---|"]
    for bs, r in report["batch_size_sweep"].items():
        lines.append(f"| {bs} | {r['floor']['train_images_per_s']:.1f} | {r['gpt']['train_images_per_s']:.1f} | "
                     f"{r['gpt']['train_ratio_to_floor']:.3f} |")
    lines.append("")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = report["num_prompts_sweep"]
    prompts = [int(n) for n in sweep]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for method in ("floor", "gpt", "cdc"):
        axes[0].plot(prompts, [sweep[n][method]["train_step_s"] for n in sweep], marker="o", label=method)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("number of prompts")
    axes[0].set_ylabel("training step (s)")
    axes[0].set_title("ViT-S: cost vs number of prompts")
    axes[0].legend()
    for method in ("gpt", "cdc"):
        axes[1].plot(prompts, [sweep[n][method]["train_ratio_to_floor"] for n in sweep], marker="o", label=method)
    axes[1].axhline(TARGETS["gpt"], color="C1", ls="--", lw=0.8)
    axes[1].axhline(TARGETS["cdc"], color="C2", ls="--", lw=0.8)
    axes[1].set_xscale("log")
    axes[1].set_xlabel("number of prompts")
    axes[1].set_ylabel("ratio to floor")
    axes[1].set_title("training step / floor (dashed: targets)")
    axes[1].legend()
    fig.suptitle(report["settings"]["machine"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
