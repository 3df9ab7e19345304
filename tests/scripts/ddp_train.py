"""Worker for tests/test_distributed.py: train a tiny prompt-tuned ViT under torchrun (DDP, gloo) or in one process.

    python -m torch.distributed.run --nproc_per_node 2 tests/scripts/ddp_train.py OUT_DIR [--method NAME]
    python tests/scripts/ddp_train.py OUT_DIR --single [--method NAME]

NAME is a row of the method case table (tests/methods.py).

Both see the same global batch each step (DDP: split across the ranks), so after N SGD steps the adapters must
match. Each rank writes its trainable parameters to OUT_DIR/rank{r}.safetensors.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from methods import METHOD_CASES, method_config  # noqa: E402
from peft import get_peft_model  # noqa: E402
from tiny_models import tiny_vit  # noqa: E402

import gated_vpt  # noqa: E402,F401

GLOBAL_BATCH, STEPS = 8, 4


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--method", default="gpt", choices=sorted(METHOD_CASES))
    parser.add_argument("--single", action="store_true")
    args = parser.parse_args()

    distributed = not args.single
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)

    torch.manual_seed(0)
    base = tiny_vit()
    # the case's `visible` values: every per-block parameter matters from the first step
    config = method_config(
        args.method, base, visible=True, num_prompts=4, prompt_dropout=0.0, modules_to_save=["classifier"]
    )
    torch.manual_seed(1)
    model = get_peft_model(base, config).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    if distributed:
        # DDP's default find_unused_parameters=False: it fails if any trainable parameter gets no gradient
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(trainable, lr=0.5, momentum=0.9)

    data = torch.Generator().manual_seed(2)
    for _ in range(STEPS):
        images = torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=data)
        labels = torch.randint(0, 3, (GLOBAL_BATCH,), generator=data)
        share = GLOBAL_BATCH // world
        local = slice(rank * share, (rank + 1) * share)
        loss = model(pixel_values=images[local], labels=labels[local]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    unwrapped = model.module if distributed else model
    state = {n: p.detach().contiguous() for n, p in unwrapped.named_parameters() if p.requires_grad}
    os.makedirs(args.out_dir, exist_ok=True)
    save_file(state, os.path.join(args.out_dir, f"rank{rank}.safetensors"))
    if distributed:
        # Without the barrier a rank that finishes first can exit while its peer is still in gloo's teardown,
        # which then waits forever.
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
