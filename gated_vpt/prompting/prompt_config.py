# Copyright 2026 The gated-vpt authors. Licensed under the Apache License, Version 2.0.
"""Fields and checks shared by every prompt-tuning config of this package.

Every check runs in `__post_init__`, i.e. when the config is built or read from `adapter_config.json`, so a bad
value is reported before any model is touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Union

from peft.config import PeftConfig

from ..messages import short_repr
from ..values import is_finite, is_int, is_real
from ..vit.backbone_record import backbone_record_problem

# A hostile or mistyped adapter_config.json must not make us allocate gigabytes: ViTs see at most a few thousand
# tokens, and the papers use at most a few hundred prompts.
MAX_NUM_PROMPTS = 4096
# Data-driven initialisations (SPT, ICML 2024; VIPAMIN, NeurIPS 2025): the prompts are placeholders until
# `gated_vpt.initialize_prompts` sets them from a pass over training images.
DATA_DRIVEN_PROMPT_INITS = ("spt-sample", "spt-mean", "spt-max", "vipamin")
PROMPT_INITS = ("xavier", "normal", *DATA_DRIVEN_PROMPT_INITS)
MAX_INIT_RECORD_ENTRIES = 16
# Recorded for the model card only; bounds a hostile file's value like every other field.
MAX_NUM_LABELS = 1_000_000
# Scalar fields become float32 parameters: a larger magnitude cannot even be stored.
FLOAT32_MAX = 3.4028234663852886e38
# Attention temperatures divide the queries: below this the logits overflow (a temperature that rounds to 0 in float32
# gives inf, then NaN). The default range starts at 0.01.
MIN_TEMPERATURE = 1e-4
# The largest magnitudes a trained adapter value can have, by kind. No training produces more (prompts start at
# |x| < 0.1, data-driven prompts copy token values, which reach a few thousand in large ViTs; gate logits saturate
# the sigmoid long before 100), while values near float32's limit overflow LayerNorm and attention to NaN: a value
# beyond these is damage. tests/test_reliability.py checks outputs stay finite with every value at its bound.
MAX_PROMPT_MAGNITUDE = 1e4
MAX_SCALAR_MAGNITUDE = 1e2


# Where error messages about block names point the user instead.
BLOCKS_BY_INDEX_HINT = (
    "choose the prompted blocks by index with `layers_to_transform`, e.g. `layers_to_transform=[4, 5, 6]`"
)


class ConfigError(ValueError):
    """A config field holds a value outside its allowed range."""


def _require(condition: bool, field_name: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ConfigError(f"`{field_name}` must be {allowed}; got {short_repr(value)}.")


def _is_init_record(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and len(value) <= MAX_INIT_RECORD_ENTRIES
        and all(isinstance(k, str) and len(k) <= 64 for k in value)
        and all(is_finite(v) or isinstance(v, bool) or (isinstance(v, str) and len(v) <= 200) for v in value.values())
    )


@dataclass
class VipaminConfig:
    """The settings of VIPAMIN's data-driven initialisation (`prompt_init="vipamin"`; Park & Chung, NeurIPS 2025;
    docs/prompt_init.md), the sub-config of a prompt config as PEFT's `EvaConfig` is of `LoraConfig`. The paper tunes
    `top_k` and `orthogonal_weight` per task on the validation split (grids {2, 8, 32, 128} and {0, 0.5, 1}).

    Args:
        top_k: Matching: each prompt starts as the mean of the k batch-mean patch tokens whose keys are most similar
            to its random init's key (clipped to the number of patch tokens; the record says what was used).
        orthogonal_weight: lambda in [0, 1]: the share of the orthogonalising module's prompt (whose value is
            orthogonal to every row of the block's attention output) in the final init; 0 = matching only.
        average_heads: Compare keys averaged over heads, as the official code does (the paper does not say);
            False compares the concatenated keys.
        code_compat: Map the projected values back through the pseudo-inverse of the *stored* value weight, as the
            official code does (its value is then not orthogonal to the attention output); False (the paper's
            intent) uses the pseudo-inverse of the value map itself.
    """

    top_k: int = field(default=32, metadata={"help": "Matching: patch tokens each prompt is the mean of."})
    orthogonal_weight: float = field(
        default=0.5, metadata={"help": "lambda in [0, 1]: the orthogonalising module's share of the init."}
    )
    average_heads: bool = field(default=True, metadata={"help": "Compare head-averaged keys (official code)."})
    code_compat: bool = field(
        default=False, metadata={"help": "Map back through the stored value weight's pseudo-inverse (official code)."}
    )

    def __post_init__(self) -> None:
        _require(
            is_int(self.top_k) and 1 <= self.top_k <= 1_000_000,
            "vipamin_config.top_k",
            self.top_k,
            "an integer in [1, 1000000]",
        )
        _require(
            is_real(self.orthogonal_weight) and 0.0 <= self.orthogonal_weight <= 1.0,
            "vipamin_config.orthogonal_weight",
            self.orthogonal_weight,
            "a number in [0, 1]",
        )
        self.orthogonal_weight = float(self.orthogonal_weight)
        for name in ("average_heads", "code_compat"):
            _require(
                isinstance(getattr(self, name), bool), f"vipamin_config.{name}", getattr(self, name), "True or False"
            )


def _vipamin_config(value: Any, prompt_init: str) -> Optional[VipaminConfig]:
    """`vipamin_config` as given (a `VipaminConfig`, or the dict a saved adapter_config.json holds), checked."""
    if value is None:
        return VipaminConfig() if prompt_init == "vipamin" else None
    if prompt_init != "vipamin":
        raise ConfigError(
            f'`vipamin_config` is set, but `prompt_init` is {short_repr(prompt_init)}: set `prompt_init="vipamin"` '
            "to use it, or leave `vipamin_config` None."
        )
    if isinstance(value, VipaminConfig):
        return value
    known = [f.name for f in fields(VipaminConfig)]
    _require(
        isinstance(value, dict) and all(isinstance(k, str) and k in known for k in value),
        "vipamin_config",
        value,
        f"None, a VipaminConfig, or a dict with keys among {known}",
    )
    return VipaminConfig(**value)


@dataclass
class PromptConfigBase(PeftConfig):
    """Fields common to `GatedPromptConfig` and `CDCPromptConfig`.

    Args:
        num_prompts: Number of prompt tokens N_p inserted after the prefix tokens (CLS, distillation, registers).
        prompt_dropout: Dropout probability applied to the inserted prompt tokens during training (VPT uses 0.1).
        prompt_init: `"xavier"` (VPT's uniform(-v, v), v = sqrt(6 / (3 p^2 + D))), `"normal"` (std 0.02), or a
            data-driven initialisation from SPT (Wang et al., ICML 2024), set by `gated_vpt.initialize_prompts(model,
            batches)` before training: `"spt-sample"` (each prompt a patch token drawn at random), `"spt-mean"` /
            `"spt-max"` (each prompt a mean / max of consecutive patch tokens of one image), from the input of the
            block that owns the prompts, in the prompt-free model; or `"vipamin"` (VIPAMIN, Park & Chung, NeurIPS
            2025: prompts matched to the patch tokens their keys resemble, mixed with prompts whose values are
            orthogonal to the block's attention output; see `vipamin_config`) (docs/prompt_init.md).
        vipamin_config: The settings of `prompt_init="vipamin"` (a `VipaminConfig`; its defaults when None). Only
            with that init.
        prompt_init_record: Filled in by `gated_vpt.initialize_prompts`: what the data-driven initialisation did
            (method, images, batches, seed). Leave it None.
        layers_to_transform: Indices of the prompted blocks, a contiguous range (an int selects one block). Prompts
            are inserted at the first of them and removed after the last. `None` prompts every block.
        target_modules: The prompted blocks by module name, a contiguous run of the block stack (full names such as
            `"vit.layers.4"` or a dotted tail such as `"layers.4"`). Usually left None and filled in at
            injection with the names of the wrapped blocks. Prompt adapters wrap whole blocks: a name that is not a
            block (e.g. `"query"`, `"all-linear"`) is refused; `layers_to_transform` chooses blocks by index. When
            both are given they must name the same blocks.
        modules_to_save: Modules of the base model trained and saved in full, e.g. `["classifier"]`.
        backbone: Filled in when the adapter is injected: what the backbone looked like (model type, width, depth,
            patch size, prefix tokens, prompted blocks). Loading the adapter onto a different backbone is refused.
            Leave it None; a record set by hand must be complete and is checked against the model like a saved one.
        base_model_class, base_model_num_labels: Filled in at injection when None: the class of the model the
            adapter was injected into (e.g. `"ViTForImageClassification"`) and, for an image classifier, its
            `num_labels`. A record of how the adapter was trained, used by the model card's loading snippet
            (`from_pretrained(..., num_labels=..., ignore_mismatched_sizes=True)` for a retrained head); it is not
            compared with the model an adapter is loaded onto.
    """

    num_prompts: int = field(default=10, metadata={"help": "Number of prompt tokens."})
    prompt_dropout: float = field(default=0.1, metadata={"help": "Dropout on the inserted prompt tokens."})
    prompt_init: str = field(default="xavier", metadata={"help": f"Prompt initialisation, one of {PROMPT_INITS}."})
    vipamin_config: Optional[VipaminConfig] = field(
        default=None, metadata={"help": "Settings of prompt_init='vipamin' (VipaminConfig); its defaults when None."}
    )
    prompt_init_record: Optional[dict] = field(
        default=None, metadata={"help": "Filled in by gated_vpt.initialize_prompts: what the data-driven init did."}
    )
    layers_to_transform: Optional[Union[list[int], int]] = field(
        default=None, metadata={"help": "Contiguous block indices to prompt; None = all blocks."}
    )
    target_modules: Optional[list[str]] = field(
        default=None,
        metadata={"help": "Prompted blocks by name (else filled in at injection); layers_to_transform: by index."},
    )
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "Modules trained and saved in full, e.g. ['classifier']."}
    )
    backbone: Optional[dict] = field(
        default=None, metadata={"help": "Filled in at injection: the backbone this adapter was trained for."}
    )
    base_model_class: Optional[str] = field(
        default=None, metadata={"help": "Filled in at injection: the class of the model the adapter was trained in."}
    )
    base_model_num_labels: Optional[int] = field(
        default=None, metadata={"help": "Filled in at injection for image classifiers: their num_labels."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(
            self.task_type is None,
            "task_type",
            self.task_type,
            "None (prompt adapters are for vision models: any task type makes PEFT return a text-model class, "
            "e.g. PeftModelForSequenceClassification, whose forward expects `input_ids`)",
        )
        _require(
            is_int(self.num_prompts) and 1 <= self.num_prompts <= MAX_NUM_PROMPTS,
            "num_prompts",
            self.num_prompts,
            f"an integer in [1, {MAX_NUM_PROMPTS}]",
        )
        _require(
            is_real(self.prompt_dropout) and 0.0 <= self.prompt_dropout < 1.0,
            "prompt_dropout",
            self.prompt_dropout,
            "a probability in [0, 1)",
        )
        _require(self.prompt_init in PROMPT_INITS, "prompt_init", self.prompt_init, f"one of {PROMPT_INITS}")
        self.vipamin_config = _vipamin_config(self.vipamin_config, self.prompt_init)
        _require(
            self.prompt_init_record is None or _is_init_record(self.prompt_init_record),
            "prompt_init_record",
            self.prompt_init_record,
            f"None or a dict of at most {MAX_INIT_RECORD_ENTRIES} names to numbers or short strings (it is filled in "
            "by `gated_vpt.initialize_prompts`; leave it None)",
        )
        if self.layers_to_transform is not None:
            layers = [self.layers_to_transform] if is_int(self.layers_to_transform) else self.layers_to_transform
            _require(
                isinstance(layers, (list, tuple)) and len(layers) > 0 and all(is_int(i) and i >= 0 for i in layers),
                "layers_to_transform",
                self.layers_to_transform,
                "None, a non-negative int, or a non-empty list of non-negative ints",
            )
            layers = sorted(set(layers))
            # Distinct sorted integers are contiguous exactly when they span as many values as there are of them; a
            # hostile `[0, 10**9]` must not make us build the range to compare with.
            _require(
                layers[-1] - layers[0] + 1 == len(layers),
                "layers_to_transform",
                self.layers_to_transform,
                "a contiguous range of block indices (prompts travel through every block between the first and last)",
            )
            self.layers_to_transform = layers
        if isinstance(self.target_modules, str):
            raise ConfigError(
                f"`target_modules` must be a list of block names (prompt adapters wrap whole transformer blocks); got "
                f"the string {short_repr(self.target_modules)}. To {BLOCKS_BY_INDEX_HINT}, or pass block module names "
                "such as `['vit.layers.4', 'vit.layers.5']`."
            )
        for name in ("target_modules", "modules_to_save"):
            value = getattr(self, name)
            _require(
                value is None or (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)),
                name,
                value,
                "None or a list of module names",
            )
            if value is not None:
                setattr(self, name, list(value))
        if self.backbone is not None:
            problem = backbone_record_problem(self.backbone)
            if problem is not None:
                raise ConfigError(
                    f"{problem}. `backbone` is filled in by `get_peft_model` (the record of the backbone an adapter "
                    "was trained for, checked when it is loaded): leave it None."
                )
            self.backbone = {**self.backbone, "prompted_blocks": list(self.backbone["prompted_blocks"])}

        _require(
            self.base_model_class is None
            or (isinstance(self.base_model_class, str) and self.base_model_class.isidentifier()),
            "base_model_class",
            self.base_model_class,
            "None or a Python class name",
        )
        _require(
            self.base_model_num_labels is None
            or (is_int(self.base_model_num_labels) and 1 <= self.base_model_num_labels <= MAX_NUM_LABELS),
            "base_model_num_labels",
            self.base_model_num_labels,
            f"None or an integer in [1, {MAX_NUM_LABELS}]",
        )

    def value_bound(self, parameter: str) -> float:
        """The largest magnitude a trained value of the adapter parameter `parameter` (e.g. `gpt_prompts`) has:
        `MAX_PROMPT_MAGNITUDE` for prompt tokens, `MAX_SCALAR_MAGNITUDE` for the rest. Methods whose parameters have
        a configured range (GPT's temperatures) override this."""
        return MAX_PROMPT_MAGNITUDE if parameter.endswith("_prompts") else MAX_SCALAR_MAGNITUDE

    def saved_values_problem(self, bounds: Mapping[str, tuple[float, float]]) -> Optional[str]:
        """What is wrong with the values of a saved adapter of this config, given each of its own tensors' (smallest,
        largest) value by saved name (`modules_to_save` copies excluded); None when nothing is. Checks each value
        against `value_bound`; methods with range-bound parameters add their own rules."""
        for name, (smallest, largest) in bounds.items():
            limit = self.value_bound(name.rsplit(".", 1)[-1])
            peak = max(abs(smallest), abs(largest))
            if peak > limit:
                return (
                    f"`{name}` holds a value of magnitude {peak:.3g}, beyond {limit:g}: no training produces it, and "
                    "it makes the outputs overflow to NaN"
                )
        return None

    @property
    def needs_data_init(self) -> bool:
        """A data-driven `prompt_init` that `gated_vpt.initialize_prompts` has not run yet: the prompts are
        placeholders."""
        return self.prompt_init in DATA_DRIVEN_PROMPT_INITS and self.prompt_init_record is None

    def mixed_batch_layout(self, depth: int) -> tuple:
        """What must match for two adapters' samples to share one forward in a mixed-adapter batch: the prompt
        slots and prompted blocks, and the switches that decide which per-block parameters exist. Values that only
        matter for training (initialisations, dropout) are left out. Subclasses add their switches."""
        return (type(self).__name__, self.num_prompts, self.prompted_range(depth))

    def prompted_range(self, depth: int) -> tuple[int, int]:
        """First and last prompted block for a backbone of `depth` blocks, checked against it."""
        if self.layers_to_transform is None:
            return 0, depth - 1
        first, last = self.layers_to_transform[0], self.layers_to_transform[-1]
        if last >= depth:
            raise ConfigError(
                f"`layers_to_transform` must lie in [0, {depth - 1}] for this backbone of {depth} blocks; "
                f"got {self.layers_to_transform}."
            )
        return first, last


def check_temperature_range(value: Any) -> tuple[float, float]:
    """Validate a `(low, high)` clamp range for attention temperatures; return it as floats."""
    ok = (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(is_finite(v) for v in value)
        and 0.0 < value[0] <= value[1]
        and MIN_TEMPERATURE <= value[0]
        and value[1] <= FLOAT32_MAX
    )
    _require(
        ok,
        "temperature_range",
        value,
        f"a pair (low, high) of finite numbers with 0 < low <= high, low >= {MIN_TEMPERATURE:g} (smaller temperatures "
        f"overflow the attention logits) and high <= {FLOAT32_MAX:.6g}",
    )
    return float(value[0]), float(value[1])


def check_bool(value: Any, field_name: str) -> bool:
    _require(isinstance(value, bool), field_name, value, "True or False")
    return value


def check_finite(value: Any, field_name: str) -> float:
    _require(
        is_finite(value) and abs(value) <= FLOAT32_MAX,
        field_name,
        value,
        f"a finite number within float32 range (|x| <= {FLOAT32_MAX:.6g})",
    )
    return float(value)
