# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""The PEFT / Hub / file boundary: loading and saving our adapters safely. Bad files give a clear error, nothing is
unpickled, a failed load leaves the model exactly as it was, and a save is atomic.

Everything here is off the hot path: it runs when an adapter is loaded or saved, never in `forward`.

Why the checks live here and not (only) in the tuner: PEFT's own flow (`PeftModel.from_pretrained`,
`PeftModel.load_adapter`, transformers' `load_adapter`) builds and injects the adapter modules *first* and reads the
weights file afterwards, and the tuner never sees the file's path. So `gated_vpt.io.patches` wraps those three entry
points for our adapter types only, and they call into this package:

1. `weights_file.check_adapter_files` reads `adapter_config.json` (`config_file`) and `adapter_model.safetensors`
   *before* anything is built: JSON, field names and values, the recorded backbone, the safetensors header, dtypes,
   finiteness (in the dtype the values are loaded in). A pickle weights file (`adapter_model.bin`) is refused
   without being opened. The loaders are then given the folder that was checked, so the file checked is the file
   loaded.
2. While PEFT injects the adapter, the tuner calls `compare.check_pending_weights` right after creating the new
   parameters and before any value is loaded: the file must hold exactly the tensors (names and shapes) of the
   adapter that `adapter_config.json` describes, and every value must survive the cast to the live tensor's dtype.
   So an unexpected tensor can never be written into the frozen backbone.
3. `rollback.preserved_on_error` snapshots the model's structure (children, parameters, buffers, hooks, attributes,
   `requires_grad`, train/eval mode) and restores it if anything fails, so even a failure after injection leaves no
   wrapper, hook or half-loaded adapter behind.

4. `landing.check_landing`, a load pre-hook the tuner puts on the model, sees every state dict that reaches
   `load_state_dict` (these loaders, `set_peft_model_state_dict`, a plain `model.load_state_dict`) before any value
   is copied: shapes, dtypes, finite values, the method's value rules, and, inside one of our loads, that exactly the
   checked tensors land.

Where a file is found (a folder, a Hub repo, or huggingface_hub's local cache when the Hub cannot be asked) is
`locate`: a lookup nothing can answer is refused, never left unchecked. The errors are in `errors`.
`atomic.atomic_save` writes a save into a temporary folder next to the target and switches it in atomically.
`hub` is our `from_pretrained`, the model card's loading section and `push_adapter_to_hub`; `patches` is the one
module that changes PEFT's and transformers' behaviour (for our adapter types only).

May import: this folder, `gated_vpt.messages`, and from the core only what describes an adapter
(`prompting.prompt_config`, `prompting.registration`, `prompting.prompt_layer`, `vit.backbone_record`). Never a
method folder.
"""
