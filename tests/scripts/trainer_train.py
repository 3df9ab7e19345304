"""Worker for tests/test_distributed.py: train a tiny GPT-prompted ViT with the HF `Trainer`, in one process or under a
distributed launcher (the Trainer wraps the model in DDP itself; CPU, gloo).

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 tests/scripts/trainer_train.py OUT_DIR
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/scripts/trainer_train.py OUT_DIR
    python tests/scripts/trainer_train.py OUT_DIR

The per-device batch is GLOBAL_BATCH // world size and the sampler is sequential, so every launch sees the same global
batch at each step (rank r takes the r-th slice of it). DDP runs with `find_unused_parameters=False`, so a trainable
parameter without a gradient would fail the run. Writes OUT_DIR/rank{r}.safetensors (each rank's trainable parameters
after training), OUT_DIR/rank{r}.json (how the run was set up), and from rank 0 OUT_DIR/init.safetensors (the
trainable parameters before training) and the adapter (`save_pretrained`) in OUT_DIR/adapter.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from peft import get_peft_model  # noqa: E402
from tiny_models import IMAGE_SIZE, NUM_LABELS, tiny_vit  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402

import gated_vpt  # noqa: E402

GLOBAL_BATCH, STEPS = 8, 4


class SyntheticImages(torch.utils.data.Dataset):
    """Fixed random images and labels, the same in every process."""

    def __init__(self, size: int) -> None:
        generator = torch.Generator().manual_seed(2)
        self.pixel_values = torch.randn(size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        self.labels = torch.randint(0, NUM_LABELS, (size,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.pixel_values[index], "labels": self.labels[index]}


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def main() -> None:
    out_dir = Path(sys.argv[1])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    assert GLOBAL_BATCH % world == 0, world

    torch.manual_seed(0)
    base = tiny_vit()
    config = gated_vpt.GatedPromptConfig(num_prompts=4, prompt_dropout=0.0, modules_to_save=["classifier"])
    torch.manual_seed(1)
    model = get_peft_model(base, config)
    init = trainable_state(model)

    args = TrainingArguments(
        output_dir=str(out_dir / "trainer"),
        per_device_train_batch_size=GLOBAL_BATCH // world,
        max_steps=STEPS,
        # AdamW moves every parameter with a gradient by about the learning rate, the gate logits (gradients ~1e-4 at
        # their -5 prior) included, so that the comparison below covers every tensor
        optim="adamw_torch",
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        # DDP's own default: a trainable parameter that gets no gradient in a step fails the next step
        ddp_find_unused_parameters=False,
        # gloo explicitly (accelerate would pick MPI where torch has it); not in one process, where accelerate 1.15
        # takes a backend as a request for torch.distributed and fails ("process group has not been initialized")
        ddp_backend="gloo" if world > 1 else None,
        use_cpu=True,
        remove_unused_columns=False,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=SyntheticImages(GLOBAL_BATCH * STEPS))
    trainer.train()

    rank = trainer.args.process_index
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(trainable_state(model), str(out_dir / f"rank{rank}.safetensors"))
    wrapped = trainer.model_wrapped
    facts = {
        "world_size": trainer.args.world_size,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "backend": dist.get_backend() if dist.is_initialized() else None,
        "wrapper": type(wrapped).__name__,
        "find_unused_parameters": getattr(wrapped, "find_unused_parameters", None),
        "global_step": trainer.state.global_step,
        "per_device_batch": args.per_device_train_batch_size,
    }
    (out_dir / f"rank{rank}.json").write_text(json.dumps(facts))
    if trainer.is_world_process_zero():
        save_file(init, str(out_dir / "init.safetensors"))
        model.save_pretrained(str(out_dir / "adapter"))
    if dist.is_initialized():
        # As in ddp_train.py: a rank that exits while its peer is still in gloo's teardown can leave it waiting.
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
