"""Reliability and security: bad files give a clear error and leave the model exactly as it was, pickles are never
opened, saving is atomic, training touches nothing but the adapter and is reproducible.

The bad inputs are the `CASES` of docs/gen_reliability.py, which also renders them into docs/reliability.md.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import pickle
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from helpers import expect_transformers_adapter_api
from helpers import transformers_adapter_api_refused as transformers_refuses
from peft import LoraConfig, PeftModel, get_peft_model
from tiny_models import TINY_BACKBONES, pixel_values

import gated_vpt
from gated_vpt import GatedPromptConfig
from gated_vpt.io import atomic, config_file, weights_file
from gated_vpt.prompting.prompt_layer import PromptBlock

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = REPO_ROOT / "docs"


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_reliability", DOCS / "gen_reliability.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_reliability"] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


gen = _load_generator()
CASES = gen.CASES
TARGETS = sorted({case.target for case in CASES})


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ----------------------------------------------------------------------------------------------------------------
# Shared, built once: pristine tiny models, good adapters, the damaged folders
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    pristine = {target: TINY_BACKBONES[target]() for target in TARGETS}
    references, expected = {}, {}
    x = pixel_values()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for target in TARGETS:
            references[target] = root / f"_reference_{target}"
            gen.save_reference(references[target], target)
            with torch.no_grad():
                loaded = PeftModel.from_pretrained(copy.deepcopy(pristine[target]), references[target]).eval()
                expected[target] = loaded(x).logits
    return {"root": root, "pristine": pristine, "references": references, "expected": expected, "folders": {}}


def case_folder(world, case) -> Path:
    if case.id not in world["folders"]:
        world["folders"][case.id] = gen.make_case_folder(case, world["root"], world["references"]["vit"])
    return world["folders"][case.id]


def fingerprint(model) -> dict:
    """Everything a failed load could leave behind: module tree and types, hooks, modes, every tensor, requires_grad,
    root attributes, adapter configs, and the outputs (logits and hidden states) on a fixed batch."""
    with torch.no_grad():
        out = model(pixel_values(), output_hidden_states=True)
    modules = [
        (
            name,
            type(m).__name__,
            m.training,
            len(m._forward_hooks),
            len(m._forward_pre_hooks),
            len(m._backward_hooks),
            len(getattr(m, "_forward_hooks_with_kwargs", {})),
        )
        for name, m in model.named_modules()
    ]
    configs = {k: v.to_dict() for k, v in (getattr(model, "peft_config", None) or {}).items()}
    return {
        "modules": modules,
        "n_prompt_blocks": sum(isinstance(m, PromptBlock) for m in model.modules()),
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "attributes": sorted(vars(model)),
        "configs": configs,
        "active": getattr(model, "active_adapter", None) if isinstance(model, PeftModel) else None,
        "logits": out.logits,
        "hidden": tuple(out.hidden_states),
    }


def assert_same(before: dict, after: dict) -> None:
    for key in ("modules", "n_prompt_blocks", "requires_grad", "attributes", "configs", "active"):
        assert after[key] == before[key], key
    assert after["state"].keys() == before["state"].keys()
    for name, tensor in before["state"].items():
        assert torch.equal(after["state"][name], tensor), name
    assert torch.equal(after["logits"], before["logits"])
    assert len(after["hidden"]) == len(before["hidden"])
    assert all(torch.equal(a, b) for a, b in zip(after["hidden"], before["hidden"], strict=True))


# ----------------------------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------------------------

FRESH = ("PeftModel.from_pretrained", "gated_vpt.from_pretrained", "transformers load_adapter")
SECOND = ("PeftModel.load_adapter, second adapter", "transformers load_adapter, second adapter")
SAME_NAME = "PeftModel.load_adapter, same name"
ENTRIES = FRESH + SECOND + (SAME_NAME,)
SLUGS = dict(
    zip(ENTRIES, ("peft", "ours", "transformers", "peft_second", "transformers_second", "peft_same_name"), strict=True)
)


def assert_same_adapter(model, first: str, second: str) -> None:
    """Adapter `second` of `model` holds exactly the tensors of adapter `first` (both loaded from one save)."""
    params = dict(model.named_parameters())
    pairs = [(n, n.replace(f".{first}", f".{second}")) for n in params if f".{first}" in n]
    assert pairs and all(torch.equal(params[a], params[b]) for a, b in pairs)


def set_up(entry: str, world, target: str):
    """(model to compare before / after, load(folder), check it still works afterwards)."""
    base = copy.deepcopy(world["pristine"][target])
    reference = world["references"][target]
    expected = world["expected"][target]
    x = pixel_values()

    def logits(model):
        with torch.no_grad():
            return model(x).logits

    if entry in FRESH:
        load = {
            "PeftModel.from_pretrained": lambda folder: PeftModel.from_pretrained(base, folder),
            "gated_vpt.from_pretrained": lambda folder: gated_vpt.from_pretrained(base, folder),
            "transformers load_adapter": lambda folder: base.load_adapter(str(folder)),
        }[entry]

        def still_works():
            assert torch.equal(logits(PeftModel.from_pretrained(base, reference).eval()), expected)

        return base, load, still_works

    if entry == "transformers load_adapter, second adapter":
        base.load_adapter(str(reference), adapter_name="first")

        def still_works():
            assert torch.equal(logits(base), expected)
            base.load_adapter(str(reference), adapter_name="second")
            # transformers leaves the `modules_to_save` head of a second adapter inactive after loading it (so it
            # does for LoRA too): activate it explicitly (where transformers accepts this peft in `set_adapter`).
            if transformers_refuses():  # transformers >= 5.24 with peft < 0.22 refuses `set_adapter`
                expect_transformers_adapter_api(lambda: base.set_adapter("second"))
                assert_same_adapter(base, "first", "second")
                return
            base.set_adapter("second")
            assert torch.equal(logits(base), expected)
            base.set_adapter("first")
            assert torch.equal(logits(base), expected)

        return base, lambda folder: base.load_adapter(str(folder), adapter_name="second"), still_works

    model = PeftModel.from_pretrained(base, reference).eval()
    name = "second" if entry != SAME_NAME else "default"

    def still_works():
        assert torch.equal(logits(model), expected)
        model.load_adapter(reference, adapter_name=name)
        model.set_adapter(name)
        assert torch.equal(logits(model), expected)

    return model, lambda folder: model.load_adapter(folder, adapter_name=name), still_works


def _params():
    for case in CASES:
        for entry in ENTRIES:
            if entry == SAME_NAME and not case.weights_only_entry:
                continue  # loading into an existing adapter reads only the weights file (PEFT's semantics)
            yield pytest.param(case, entry, id=f"{case.id}-{SLUGS[entry]}")


_first_messages: dict[str, str] = {}


def reference_message(world, case) -> str:
    """What `PeftModel.from_pretrained` says for this case (the table's message); every entry must say the same."""
    if case.id not in _first_messages:
        folder = case_folder(world, case)
        model = copy.deepcopy(world["pristine"][case.target])
        with pytest.raises(Exception) as info:
            PeftModel.from_pretrained(model, folder)
        _first_messages[case.id] = gen.first_sentence(str(info.value))
    return _first_messages[case.id]


@pytest.mark.parametrize(("case", "entry"), list(_params()))
def test_bad_adapter_gives_a_clear_error_and_leaves_the_model_as_it_was(world, case, entry, monkeypatch):
    folder = case_folder(world, case)
    model, load, still_works = set_up(entry, world, case.target)
    before = fingerprint(model)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("something tried to unpickle a file")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    with pytest.raises(Exception) as info:
        load(folder)
    monkeypatch.undo()

    error = info.value
    assert type(error).__name__ == case.error, repr(error)
    # The message names the file (or the folder) first, then the problem and the fix.
    assert str(error).startswith(str(folder)), str(error)
    assert len(str(error).split(". ")) >= 2, "the message gives a problem and a fix"
    assert gen.first_sentence(str(error)) == reference_message(world, case)
    assert not (folder / gen.MARKER_NAME).exists(), "the pickle payload ran"
    assert_same(before, fingerprint(model))
    still_works()


def test_the_documented_table_is_current():
    assert (DOCS / "reliability.md").read_text(encoding="utf-8") == gen.render(), "run: python docs/gen_reliability.py"


def test_error_classes_are_documented_and_exported():
    for case in CASES:
        assert hasattr(gated_vpt, case.error), case.error
    assert issubclass(gated_vpt.AdapterConfigError, gated_vpt.ConfigError)
    assert issubclass(gated_vpt.UnsafeAdapterFileError, gated_vpt.AdapterWeightsError)
    assert issubclass(gated_vpt.AdapterWeightsError, ValueError)


# ----------------------------------------------------------------------------------------------------------------
# Pickles are never opened
# ----------------------------------------------------------------------------------------------------------------


def test_the_malicious_pickle_really_runs_code_when_unpickled(world, tmp_path):
    """Sanity check of the payload: unpickled with `weights_only=False` it does create its marker file."""
    folder = tmp_path / "evil"
    import shutil

    shutil.copytree(world["references"]["vit"], folder)
    gen.malicious_pickle(folder)
    assert not (folder / gen.MARKER_NAME).exists()
    torch.load(folder / "adapter_model.bin", weights_only=False)
    assert (folder / gen.MARKER_NAME).exists()


@pytest.fixture
def pickle_and_safetensors(world, tmp_path):
    """A good adapter folder that also holds a malicious adapter_model.bin."""
    import shutil

    folder = tmp_path / "both"
    shutil.copytree(world["references"]["vit"], folder)
    shutil.copytree(world["references"]["vit"], tmp_path / "evil")
    gen.malicious_pickle(tmp_path / "evil")
    shutil.copy(tmp_path / "evil" / "adapter_model.bin", folder / "adapter_model.bin")
    return folder, tmp_path / "evil" / gen.MARKER_NAME


@pytest.mark.parametrize("entry", ENTRIES)
def test_a_pickle_next_to_the_safetensors_file_is_ignored(world, pickle_and_safetensors, entry, monkeypatch):
    folder, marker = pickle_and_safetensors
    model, load, _ = set_up(entry, world, "vit")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    load(folder)
    assert not marker.exists()


def test_transformers_use_safetensors_false_is_refused(world, pickle_and_safetensors):
    folder, marker = pickle_and_safetensors
    base = copy.deepcopy(world["pristine"]["vit"])
    before = fingerprint(base)
    with pytest.raises(gated_vpt.UnsafeAdapterFileError, match=r"use_safetensors=False.*never loads pickle"):
        base.load_adapter(str(folder), use_safetensors=False)
    assert not marker.exists()
    assert_same(before, fingerprint(base))


def test_other_peft_methods_keep_peft_behaviour(tmp_path):
    """The refusal is scoped to our adapter types: a LoRA adapter saved as a pickle still loads through PEFT."""
    model = get_peft_model(TINY_BACKBONES["vit"](), LoraConfig(target_modules=["q_proj"]))
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "adapter_model.bin").exists()
    PeftModel.from_pretrained(TINY_BACKBONES["vit"](), tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# Failures after the weights were copied are rolled back too
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ("PeftModel.from_pretrained",) + SECOND[:1] + (SAME_NAME,))
def test_a_failure_after_the_values_were_copied_is_rolled_back(world, entry, monkeypatch, tmp_path):
    """E.g. an I/O error or Ctrl-C while PEFT loads the state dict: the partly loaded adapter is removed again, and
    an existing adapter overwritten in place gets its old values back."""
    import peft.peft_model

    other = tmp_path / "other"
    gen.save_reference(other, "vit", seed=7)
    model, load, still_works = set_up(entry, world, "vit")
    before = fingerprint(model)
    original = peft.peft_model.set_peft_model_state_dict

    def load_then_fail(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(peft.peft_model, "set_peft_model_state_dict", load_then_fail)
    with pytest.raises(KeyboardInterrupt):
        load(other)
    monkeypatch.undo()
    assert_same(before, fingerprint(model))
    still_works()


# ----------------------------------------------------------------------------------------------------------------
# Atomic saving
# ----------------------------------------------------------------------------------------------------------------


def _outputs(folder: Path) -> torch.Tensor:
    with torch.no_grad():
        return PeftModel.from_pretrained(TINY_BACKBONES["vit"](), folder).eval()(pixel_values()).logits


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def saved_twice(tmp_path):
    """An adapter folder holding the old adapter (plus an unrelated file), and a model holding a different adapter."""
    folder = tmp_path / "adapter"
    gen.save_reference(folder, "vit", seed=1)
    (folder / "notes.txt").write_text("kept")
    new = gen.trained_adapter("vit", seed=2)
    return folder, new


def _write_half_then(exception):
    def fake_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)  # a partial file, as a crash mid-write would leave
        raise exception

    return fake_save_file


def _stale(tmp_path: Path) -> list[str]:
    return [p.name for p in tmp_path.iterdir() if ".gated-vpt-" in p.name]


@pytest.mark.parametrize(
    "where", ["weights write", "weights write (Ctrl-C)", "config write", "card write", "directory switch"]
)
def test_an_interrupted_save_leaves_the_old_adapter(saved_twice, where, monkeypatch, tmp_path):
    import peft.peft_model
    from peft import PeftConfig

    folder, new = saved_twice
    old_files, old_outputs = _listing(folder), _outputs(folder)
    if where.startswith("weights write"):
        exception = KeyboardInterrupt() if "Ctrl-C" in where else OSError(28, "No space left on device")
        monkeypatch.setattr(peft.peft_model, "safe_save_file", _write_half_then(exception))
    elif where == "config write":
        monkeypatch.setattr(PeftConfig, "save_pretrained", lambda *a, **k: (_ for _ in ()).throw(OSError("disk")))
    elif where == "card write":
        monkeypatch.setattr(gated_vpt.io.hub, "_add_card_section", lambda *a, **k: (_ for _ in ()).throw(OSError("x")))
    else:
        monkeypatch.setattr(atomic, "exchange_directories", lambda *a: (_ for _ in ()).throw(OSError(5, "EIO")))
    with pytest.raises((OSError, KeyboardInterrupt)):
        new.save_pretrained(folder)
    monkeypatch.undo()
    assert _listing(folder) == old_files
    assert torch.equal(_outputs(folder), old_outputs)
    assert _stale(tmp_path) == []


def test_a_save_replaces_the_adapter_and_keeps_other_files(saved_twice, tmp_path):
    folder, new = saved_twice
    os.chmod(folder, 0o750)
    (folder / "sub").mkdir()
    (folder / "sub" / "data.bin").write_bytes(b"123")
    new.save_pretrained(folder)
    assert (folder / "notes.txt").read_text() == "kept"
    assert (folder / "sub" / "data.bin").read_bytes() == b"123"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750
    with torch.no_grad():
        assert torch.equal(_outputs(folder), new(pixel_values()).logits)
    assert (folder / "README.md").read_text().count("## How to load this adapter") == 1
    assert _stale(tmp_path) == []


def test_saving_into_a_new_folder_and_with_several_adapters(tmp_path):
    model = gen.trained_adapter("vit", seed=3)
    model.add_adapter("other", GatedPromptConfig(num_prompts=2, layers_to_transform=[1, 2]))
    target = tmp_path / "new" / "adapter"
    model.save_pretrained(target)
    assert sorted(os.listdir(target)) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "other"]
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE((tmp_path / "new").stat().st_mode)
    model.save_pretrained(target, selected_adapters=["other"])  # keeps the default adapter's files
    assert (target / "adapter_model.safetensors").exists() and (target / "other" / "adapter_config.json").exists()
    loaded = PeftModel.from_pretrained(TINY_BACKBONES["vit"](), target).eval()
    loaded.load_adapter(target / "other", adapter_name="other")


def test_the_fallback_switch_restores_the_old_folder_when_it_fails(saved_twice, monkeypatch, tmp_path):
    """Without an atomic exchange (not Linux, or a file system without RENAME_EXCHANGE) the switch is two renames;
    if the second fails the old folder is moved back."""
    folder, new = saved_twice
    old_files = _listing(folder)

    def unsupported(*args):
        raise atomic.ExchangeUnsupported(38, "no renameat2")

    monkeypatch.setattr(atomic, "exchange_directories", unsupported)
    real_rename, calls = os.rename, []

    def flaky_rename(source, target):
        calls.append((source, target))
        if len(calls) == 2:  # the new folder taking the old one's place
            raise OSError(5, "EIO")
        return real_rename(source, target)

    monkeypatch.setattr(os, "rename", flaky_rename)
    with pytest.raises(OSError):
        new.save_pretrained(folder)
    monkeypatch.setattr(os, "rename", real_rename)
    assert _listing(folder) == old_files
    assert _stale(tmp_path) == []
    new.save_pretrained(folder)  # and the fallback works when nothing fails
    with torch.no_grad():
        assert torch.equal(_outputs(folder), new(pixel_values()).logits)


def test_a_process_killed_mid_save_leaves_the_old_adapter(saved_twice, tmp_path):
    """A real interruption: the saving process dies (os._exit) after writing half of the weights file."""
    folder, _ = saved_twice
    old_files, old_outputs = _listing(folder), _outputs(folder)
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path[:0] = [{str(REPO_ROOT / "tests")!r}, {str(DOCS)!r}]
        import peft.peft_model
        import gen_reliability as gen

        def dies_mid_write(tensors, filename, metadata=None):
            with open(filename, "wb") as file:
                file.write(b"\\0" * 100)
            os._exit(3)

        model = gen.trained_adapter("vit", seed=2)
        peft.peft_model.safe_save_file = dies_mid_write
        model.save_pretrained({str(folder)!r})
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 3, result.stderr
    assert _listing(folder) == old_files
    assert torch.equal(_outputs(folder), old_outputs)
    # A hard kill leaves the unfinished save behind, hidden and ignored by every loader.
    assert all(name.startswith(".adapter.gated-vpt-save-") for name in _stale(tmp_path))


# ----------------------------------------------------------------------------------------------------------------
# Training touches nothing but the adapter, and is reproducible
# ----------------------------------------------------------------------------------------------------------------


def _train(backbone: str, seed: int, steps: int = 5):
    torch.manual_seed(seed)
    base = TINY_BACKBONES[backbone]()
    frozen = {name: tensor.detach().clone() for name, tensor in base.state_dict(keep_vars=True).items()}
    objects = dict(base.state_dict(keep_vars=True))
    model = get_peft_model(base, GatedPromptConfig(num_prompts=4, modules_to_save=["classifier"])).train()
    # Every parameter goes to the optimizer (a common mistake); weight decay would move any frozen one it could.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(4, 3, 32, 32, generator=generator)
        labels = torch.randint(0, 3, (4,), generator=generator)
        loss = model(pixel_values=x, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, frozen, objects


def _raw(tensor: torch.Tensor) -> bytes:
    return tensor.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("backbone", ["vit", "dinov2"])
def test_training_leaves_every_backbone_tensor_byte_identical(backbone):
    model, frozen, objects = _train(backbone, seed=0)
    adapter = {id(p) for p in model.parameters() if p.requires_grad}
    assert adapter, "something was trained"
    for name, tensor in objects.items():
        assert id(tensor) not in adapter, f"{name} of the backbone is trainable"
        assert _raw(tensor) == _raw(frozen[name]), f"{name} changed"
    # The trained head is the adapter's copy; the original head is one of the tensors checked above.
    trained_head = model.base_model.model.classifier.modules_to_save["default"].weight
    assert not torch.equal(trained_head, frozen["classifier.weight"])


def test_the_same_seed_gives_a_bit_identical_adapter(tmp_path):
    first, _, _ = _train("vit", seed=3)
    second, _, _ = _train("vit", seed=3)
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    assert all(_raw(a[k]) == _raw(b[k]) for k in a)
    first.save_pretrained(tmp_path / "a")
    second.save_pretrained(tmp_path / "b")
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    other, _, _ = _train("vit", seed=4)
    prompts = next(k for k in a if "gpt_prompts" in k)
    assert not torch.equal(other.state_dict()[prompts], a[prompts])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_weights_in_another_float_dtype_load_cast_to_the_adapter_dtype(world, tmp_path, dtype):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "cast"
    shutil.copytree(world["references"]["vit"], folder)
    tensors = {k: v.to(dtype) for k, v in load_file(folder / "adapter_model.safetensors").items()}
    save_file(tensors, folder / "adapter_model.safetensors")
    peft_model = PeftModel.from_pretrained(copy.deepcopy(world["pristine"]["vit"]), folder).eval()
    base = copy.deepcopy(world["pristine"]["vit"])
    base.load_adapter(str(folder))
    prompts = tensors["base_model.model.vit.layers.0.gpt_prompts"].float()
    for model in (peft_model.base_model.model, base):
        assert model.vit.layers[0].gpt_prompts["default"].dtype == torch.float32
        assert torch.equal(model.vit.layers[0].gpt_prompts["default"], prompts)


def test_transformers_adapter_state_dict_is_checked_too(world):
    from safetensors.torch import load_file

    base = copy.deepcopy(world["pristine"]["vit"])
    before = fingerprint(base)
    folder = world["references"]["vit"]
    tensors = load_file(folder / "adapter_model.safetensors")
    config = config_file.load_adapter_config(folder)
    bad = {**tensors, "base_model.model.vit.embeddings.cls_token": torch.zeros(1, 1, 32)}
    with pytest.raises(gated_vpt.AdapterWeightsError, match=r"^adapter_state_dict: holds tensors that are not part"):
        base.load_adapter(peft_config=config, adapter_state_dict=bad)
    nan = {k: v * float("nan") for k, v in tensors.items()}
    with pytest.raises(gated_vpt.AdapterWeightsError, match=r"^adapter_state_dict: tensor .* NaN"):
        base.load_adapter(peft_config=config, adapter_state_dict=nan)
    assert_same(before, fingerprint(base))
    base.load_adapter(peft_config=config, adapter_state_dict=tensors)
    with torch.no_grad():
        assert torch.equal(base(pixel_values()).logits, world["expected"]["vit"])


def test_hub_repos_are_checked_without_downloading_a_pickle(world, tmp_path, monkeypatch):
    """For a Hub repo the files are fetched as PEFT would (into the cache); a pickle is only looked up, never
    downloaded; an unreachable Hub with nothing cached is refused (never left unchecked)."""
    import shutil

    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    repo = tmp_path / "repo"
    shutil.copytree(world["references"]["vit"], repo)
    downloaded = []

    def fake_download(repo_id, filename, subfolder=None, **kwargs):
        assert repo_id == "someone/adapter"
        if not kwargs.get("local_files_only"):  # a cache lookup (offline, HF_HUB_OFFLINE=1) downloads nothing
            downloaded.append(filename)
        if not (repo / filename).exists():
            raise EntryNotFoundError(filename)
        return str(repo / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(huggingface_hub, "file_exists", lambda repo_id, name, **kw: (repo / name).exists())
    config, weights = weights_file.check_adapter_files("someone/adapter")
    assert isinstance(config, GatedPromptConfig) and weights.path == str(repo / "adapter_model.safetensors")
    gen.malicious_pickle(repo)
    downloaded.clear()
    with pytest.raises(gated_vpt.UnsafeAdapterFileError, match=r"^someone/adapter/adapter_model.bin: refused"):
        weights_file.check_adapter_files("someone/adapter")
    assert "adapter_model.bin" not in downloaded

    def unreachable(*args, **kwargs):
        raise LocalEntryNotFoundError("no connection")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(
        gated_vpt.AdapterConfigError,
        match=r"^someone/adapter/adapter_config.json: not in the local Hub cache, and the Hub cannot be asked",
    ):
        weights_file.check_adapter_files("someone/adapter")


@pytest.mark.parametrize("why", ["it is the working directory", "it is a mount point", "its parent is read-only"])
def test_a_folder_that_cannot_be_swapped_gets_its_files_replaced_one_by_one(saved_twice, why, monkeypatch, tmp_path):
    """Saving into the current working directory, a mount point or a folder whose parent is read-only still works:
    the files are replaced one by one (each complete; an exception puts the old ones back)."""
    folder, new = saved_twice
    old_files, old_outputs = _listing(folder), _outputs(folder)
    if why == "it is the working directory":
        monkeypatch.chdir(folder)
    elif why == "it is a mount point":
        monkeypatch.setattr(atomic, "exchange_directories", lambda *a: (_ for _ in ()).throw(OSError(16, "EBUSY")))
    else:
        real_mkdtemp = atomic.tempfile.mkdtemp

        def no_parent(prefix=None, dir=None, **kwargs):
            if dir == str(tmp_path):
                raise PermissionError(13, "read-only")
            return real_mkdtemp(prefix=prefix, dir=dir, **kwargs)

        monkeypatch.setattr(atomic.tempfile, "mkdtemp", no_parent)
    real_replace, calls = os.replace, []

    def flaky_replace(source, target):
        calls.append(target)
        if len(calls) == 2:  # after the weights file, before the config
            raise OSError(5, "EIO")
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", flaky_replace)
    with pytest.raises(OSError):
        new.save_pretrained(folder)
    assert calls[0].endswith("adapter_model.safetensors")
    monkeypatch.setattr(os, "replace", real_replace)
    assert _listing(folder) == old_files
    assert torch.equal(_outputs(folder), old_outputs)
    new.save_pretrained(folder)
    assert os.getcwd()  # the working directory still exists
    assert (folder / "notes.txt").read_text() == "kept"
    with torch.no_grad():
        assert torch.equal(_outputs(folder), new(pixel_values()).logits)
    assert _stale(tmp_path) == [] and not [p for p in folder.iterdir() if ".gated-vpt-" in p.name]


# ----------------------------------------------------------------------------------------------------------------
# Hub repos read from the local cache (offline), and the arguments that choose which file is read
# ----------------------------------------------------------------------------------------------------------------

REPO = "attacker/adapter"


def _into_hub_cache(
    cache: Path, folder: Path, repo_id: str = REPO, repo_type: str = "model", ref: str = "main", commit: str = "1" * 40
) -> Path:
    """Lay `folder` out as huggingface_hub's cache does for a downloaded repo (`refs/<ref>` naming `commit`)."""
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return repo / "snapshots" / commit


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty huggingface_hub cache with `HF_HUB_OFFLINE=1`, as huggingface_hub, PEFT and transformers read them
    (the environment variables are read once, at import: their module constants are patched instead)."""
    import huggingface_hub.constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def _damaged(world, tmp_path: Path, name: str, damage) -> Path:
    folder = tmp_path / name
    shutil.copytree(world["references"]["vit"], folder)
    damage(folder)
    return folder


def _plain_pickle_with_a_backbone_tensor(folder: Path) -> None:
    """`adapter_model.bin` only: plain tensors (loads with `weights_only=True`) plus the backbone's CLS token."""
    from safetensors.torch import load_file

    tensors = dict(load_file(folder / gen.WEIGHTS))
    tensors["base_model.model.vit.embeddings.cls_token"] = torch.full((1, 1, 32), 7.0)
    torch.save(tensors, folder / "adapter_model.bin")
    (folder / gen.WEIGHTS).unlink()


OFFLINE_CACHES = {
    "malicious-pickle": (gen.malicious_pickle, "UnsafeAdapterFileError"),
    "pickle-with-backbone-tensor": (_plain_pickle_with_a_backbone_tensor, "UnsafeAdapterFileError"),
    "weights-not-cached": (lambda folder: (folder / gen.WEIGHTS).unlink(), "AdapterWeightsError"),
}


@pytest.mark.parametrize("entry", ENTRIES, ids=SLUGS.get)
@pytest.mark.parametrize("cached", sorted(OFFLINE_CACHES))
def test_an_offline_hub_cache_is_checked_like_a_folder(world, offline_hub, tmp_path, cached, entry, monkeypatch):
    """`HF_HUB_OFFLINE=1` and a cached repo holding a valid config but only a pickle (or no weights): refused
    unopened, before anything is built, on every entry point; the model is left exactly as it was."""
    damage, error_class = OFFLINE_CACHES[cached]
    _into_hub_cache(offline_hub, _damaged(world, tmp_path, cached, damage))
    model, load, still_works = set_up(entry, world, "vit")
    before = fingerprint(model)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("pickle.load was called"))
    with pytest.raises(gated_vpt.AdapterWeightsError) as info:
        load(REPO)
    monkeypatch.undo()
    assert type(info.value).__name__ == error_class, repr(info.value)
    message = str(info.value)
    if cached == "weights-not-cached":
        assert message.startswith(f"{REPO}/adapter_model.safetensors: not in the local Hub cache"), message
    else:
        # named as the user asked for it, as online (not by its path in the cache)
        assert message.startswith(f"{REPO}/adapter_model.bin: refused"), message
    assert not list(offline_hub.rglob(gen.MARKER_NAME)), "the pickle payload ran"
    assert_same(before, fingerprint(model))
    still_works()


@pytest.mark.parametrize("entry", FRESH + SECOND[:1], ids=SLUGS.get)
def test_an_adapter_that_cannot_be_looked_up_at_all_is_refused_not_left_unchecked(world, offline_hub, entry):
    """Offline and nothing cached: whether the repo holds one of our adapters cannot be checked, so it is not loaded
    (PEFT would fail too, after building the adapter)."""
    model, load, still_works = set_up(entry, world, "vit")
    before = fingerprint(model)
    with pytest.raises(gated_vpt.AdapterConfigError, match=rf"^{REPO}/adapter_config.json: not in the local Hub cache"):
        load(REPO)
    assert_same(before, fingerprint(model))
    still_works()


@pytest.mark.parametrize("entry", FRESH + SECOND, ids=SLUGS.get)
def test_a_good_adapter_in_the_offline_hub_cache_loads(world, offline_hub, entry):
    _into_hub_cache(offline_hub, world["references"]["vit"])
    model, load, _ = set_up(entry, world, "vit")
    loaded = load(REPO)
    if entry == "transformers load_adapter, second adapter" and transformers_refuses():
        expect_transformers_adapter_api(lambda: model.set_adapter("second"))  # transformers >= 5.24, peft < 0.22
        assert_same_adapter(model, "first", "second")
        return
    if entry in SECOND:
        model.set_adapter("second")
    target = loaded if isinstance(loaded, PeftModel) else model
    with torch.no_grad():
        assert torch.equal(target.eval()(pixel_values()).logits, world["expected"]["vit"])


def test_an_offline_hub_cache_with_only_a_pickle_is_refused_in_a_fresh_interpreter(world, tmp_path):
    """The real thing: `HF_HUB_OFFLINE=1` and `HF_HUB_CACHE` set in the environment of a new process."""
    cache = tmp_path / "hub-cache"
    _into_hub_cache(cache, _damaged(world, tmp_path, "only-pickle", _plain_pickle_with_a_backbone_tensor))
    script = textwrap.dedent(
        f"""
        import sys, warnings
        warnings.simplefilter("ignore")
        sys.path[:0] = [{str(REPO_ROOT / "tests")!r}]
        import torch
        from peft import PeftModel
        from tiny_models import TINY_BACKBONES
        import gated_vpt

        def no_unpickling(*args, **kwargs):
            raise AssertionError("torch.load was called")

        torch.load = no_unpickling
        model = TINY_BACKBONES["vit"]()
        cls_token = model.vit.embeddings.cls_token.detach().clone()
        try:
            PeftModel.from_pretrained(model, {REPO!r})
        except gated_vpt.UnsafeAdapterFileError as error:
            print("refused:", error)
        assert torch.equal(model.vit.embeddings.cls_token, cls_token), "the frozen CLS token was overwritten"
        assert not hasattr(model, "peft_config") and "PromptBlock" not in str(model)
        """
    )
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("HF_HOME", None)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    # the refusal names what the user asked for (the repo's file), as it does online, not the cache's path
    assert "refused: attacker/adapter/adapter_model.bin: refused" in result.stdout, result.stdout
    assert str(cache) not in result.stdout


def _backbone_tensor_added(folder: Path) -> None:
    gen.CASES_BY_ID["weights-backbone-key"].damage(folder)


@pytest.fixture
def good_root_bad_subfolder(world, tmp_path):
    """A good adapter folder with a subfolder `evil/` holding an adapter with an extra backbone tensor."""
    root = tmp_path / "root"
    shutil.copytree(world["references"]["vit"], root)
    shutil.copytree(_damaged(world, tmp_path, "evil", _backbone_tensor_added), root / "evil")
    return root


def _transformers_loads(root: Path):
    from transformers.modeling_utils import LoadStateDictConfig

    return {
        "load_config": lambda base: base.load_adapter(
            str(root), load_config=LoadStateDictConfig(download_kwargs={"subfolder": "evil"})
        ),
        "download_kwargs": lambda base: base.load_adapter(str(root), download_kwargs={"subfolder": "evil"}),
        "load_config-path": lambda base: base.load_adapter(
            load_config=LoadStateDictConfig(pretrained_model_name_or_path=str(root / "evil"))
        ),
        "peft-subfolder": lambda base: PeftModel.from_pretrained(base, root, subfolder="evil"),
    }


@pytest.mark.parametrize("how", ["load_config", "download_kwargs", "load_config-path", "peft-subfolder"])
def test_the_file_checked_is_the_file_loaded(world, good_root_bad_subfolder, how):
    """transformers' `load_config.download_kwargs` (or `download_kwargs=`, or `load_config.pretrained_model_name_or_
    path`) choose the folder the weights are read from: the checks read the same one."""
    base = copy.deepcopy(world["pristine"]["vit"])
    before = fingerprint(base)
    evil = re.escape(str(good_root_bad_subfolder / "evil" / gen.WEIGHTS))
    with pytest.raises(gated_vpt.AdapterWeightsError, match=rf"^{evil}: holds tensors that are not part"):
        _transformers_loads(good_root_bad_subfolder)[how](base)
    assert_same(before, fingerprint(base))


def test_transformers_adapter_kwargs_choose_the_folder_checked_and_loaded(world, tmp_path):
    """`adapter_kwargs={"subfolder": ...}`: the good adapter in the subfolder is checked and loaded, not the root's."""
    root = _damaged(world, tmp_path, "bad-root", _backbone_tensor_added)
    shutil.copytree(world["references"]["vit"], root / "good")
    base = copy.deepcopy(world["pristine"]["vit"])
    cls_token = base.vit.embeddings.cls_token.detach().clone()
    base.load_adapter(str(root), adapter_kwargs={"subfolder": "good"})
    assert torch.equal(base.vit.embeddings.cls_token, cls_token)
    with torch.no_grad():
        assert torch.equal(base(pixel_values()).logits, world["expected"]["vit"])


HUB_ARGUMENT_ENTRIES = {
    "PeftModel.from_pretrained": lambda base, **kw: PeftModel.from_pretrained(base, REPO, **kw),
    "gated_vpt.from_pretrained": lambda base, **kw: gated_vpt.from_pretrained(base, REPO, **kw),
    "PeftModel.load_adapter": lambda base, **kw: base.load_adapter(REPO, adapter_name="second", **kw),
    "transformers load_adapter": lambda base, **kw: base.load_adapter(REPO, adapter_name="second", download_kwargs=kw),
}


def _hub_argument_cases(world, cache: Path, tmp_path: Path) -> dict:
    """Each: (keyword arguments, the folder they select, which holds a bad adapter). `main` of the cached repo is
    good: a check of that one instead would pass and the bad file would be loaded."""
    bad = _damaged(world, tmp_path, "bad", _backbone_tensor_added)
    _into_hub_cache(cache, world["references"]["vit"])
    other_cache = tmp_path / "other-cache"
    shutil.copytree(bad, tmp_path / "local-dir")
    return {
        "repo_type": ({"repo_type": "dataset"}, _into_hub_cache(cache, bad, repo_type="dataset")),
        "revision": ({"revision": "evil"}, _into_hub_cache(cache, bad, ref="evil", commit="2" * 40)),
        "cache_dir": ({"cache_dir": str(other_cache)}, _into_hub_cache(other_cache, bad)),
        "local_dir": ({"local_dir": str(tmp_path / "local-dir")}, tmp_path / "local-dir"),
    }


@pytest.mark.parametrize(
    ("entry", "argument"),
    [
        (entry, argument)
        for entry in sorted(HUB_ARGUMENT_ENTRIES)
        for argument in ("repo_type", "revision", "cache_dir", "local_dir")
        # transformers' download_kwargs have no repo_type / local_dir
        if entry != "transformers load_adapter" or argument in ("revision", "cache_dir")
    ],
)
def test_every_argument_choosing_the_hub_file_reaches_the_checks(world, offline_hub, tmp_path, entry, argument):
    kwargs, selected = _hub_argument_cases(world, offline_hub, tmp_path)[argument]
    base = copy.deepcopy(world["pristine"]["vit"])
    if entry == "PeftModel.load_adapter":
        base = PeftModel.from_pretrained(base, world["references"]["vit"])
    elif entry == "transformers load_adapter":
        base.load_adapter(str(world["references"]["vit"]))
    before = fingerprint(base)
    message = rf"^{re.escape(str(selected / gen.WEIGHTS))}: holds tensors that are not part of the adapter"
    with pytest.raises(gated_vpt.AdapterWeightsError, match=message):
        HUB_ARGUMENT_ENTRIES[entry](base, **kwargs)
    assert_same(before, fingerprint(base))


def test_a_hub_subfolder_offline_loads_the_file_that_was_checked(world, offline_hub, tmp_path):
    """PEFT's offline path joins the subfolder twice (`sub/sub/adapter_model.safetensors`): the adapter that was
    checked (`sub/`) is the one loaded, never a file planted in `sub/sub/`."""
    repo = tmp_path / "repo"
    shutil.copytree(world["references"]["vit"], repo / "sub")
    shutil.copytree(_damaged(world, tmp_path, "planted", _backbone_tensor_added), repo / "sub" / "sub")
    _into_hub_cache(offline_hub, repo)
    base = copy.deepcopy(world["pristine"]["vit"])
    cls_token = base.vit.embeddings.cls_token.detach().clone()
    model = PeftModel.from_pretrained(base, REPO, subfolder="sub").eval()
    assert torch.equal(model.base_model.model.vit.embeddings.cls_token, cls_token)
    with torch.no_grad():
        assert torch.equal(model(pixel_values()).logits, world["expected"]["vit"])


# ----------------------------------------------------------------------------------------------------------------
# Values are checked in the dtype they are loaded in; sizes never drive allocation
# ----------------------------------------------------------------------------------------------------------------


def test_a_head_value_beyond_the_models_float16_range_is_refused(world, tmp_path):
    """`modules_to_save` weights are cast to the model's dtype: 1e5 is finite in the file's float32, not in the
    float16 head it would be copied into. The adapter's own parameters stay float32, so 1e5 there loads."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "head"
    shutil.copytree(world["references"]["vit"], folder)
    tensors = load_file(folder / gen.WEIGHTS)
    tensors[gen.HEAD] = tensors[gen.HEAD].clone().index_fill(0, torch.tensor([0]), 1e5)
    save_file(tensors, folder / gen.WEIGHTS)
    for load in (lambda base: PeftModel.from_pretrained(base, folder), lambda base: base.load_adapter(str(folder))):
        base = copy.deepcopy(world["pristine"]["vit"]).half()
        before = {k: v.clone() for k, v in base.state_dict().items()}
        with pytest.raises(gated_vpt.AdapterWeightsError, match=r"beyond the range of torch.float16"):
            load(base)
        after = base.state_dict()
        assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    # The adapter's own parameters stay float32, but the prompts are cast to the blocks' float16 in the forward:
    # 1e5 would be infinite there (and no training produces it), so it is refused; the bound, 1e4, loads and the
    # outputs stay finite.
    prompts = tmp_path / "prompts"
    shutil.copytree(world["references"]["vit"], prompts)
    tensors = load_file(prompts / gen.WEIGHTS)
    tensors["base_model.model.vit.layers.0.gpt_prompts"] = torch.full((gen.NUM_PROMPTS, 32), 1e5)
    save_file(tensors, prompts / gen.WEIGHTS)
    with pytest.raises(gated_vpt.AdapterWeightsError, match=r"magnitude 1e\+05, beyond 10000"):
        PeftModel.from_pretrained(copy.deepcopy(world["pristine"]["vit"]).half(), prompts)
    tensors["base_model.model.vit.layers.0.gpt_prompts"] = torch.full((gen.NUM_PROMPTS, 32), 1e4)
    save_file(tensors, prompts / gen.WEIGHTS)
    model = PeftModel.from_pretrained(copy.deepcopy(world["pristine"]["vit"]).half(), prompts)
    assert model.base_model.model.vit.layers[0].gpt_prompts["default"].dtype == torch.float32
    with torch.no_grad():
        assert torch.isfinite(model(pixel_values().half()).logits).all()


def test_integer_buffers_of_a_saved_module_still_load(tmp_path):
    """BatchNorm's `num_batches_tracked` (int64) in `modules_to_save` is an integer buffer in the model too."""
    base = TINY_BACKBONES["vit"]()
    base.classifier = torch.nn.Sequential(torch.nn.BatchNorm1d(32), torch.nn.Linear(32, 3))
    model = get_peft_model(base, GatedPromptConfig(num_prompts=2, modules_to_save=["classifier"]))
    model.train()(pixel_values())  # counts one batch
    model.save_pretrained(tmp_path)
    fresh = TINY_BACKBONES["vit"]()
    fresh.classifier = torch.nn.Sequential(torch.nn.BatchNorm1d(32), torch.nn.Linear(32, 3))
    loaded = PeftModel.from_pretrained(fresh, tmp_path)
    head = loaded.base_model.model.classifier.modules_to_save["default"]
    assert head[0].num_batches_tracked.dtype == torch.int64 and int(head[0].num_batches_tracked) == 1


def test_a_config_reported_as_empty_is_still_read_at_most_1_mib(world, tmp_path, monkeypatch):
    """Pseudo-files (/proc, some FUSE file systems) report size 0 whatever they hold: the cap must not trust it."""
    folder = _damaged(world, tmp_path, "pseudo", gen.CASES_BY_ID["config-huge"].damage)
    real_getsize = os.path.getsize
    monkeypatch.setattr(os.path, "getsize", lambda p: 0 if os.fspath(p).endswith(gen.CONFIG) else real_getsize(p))
    base = copy.deepcopy(world["pristine"]["vit"])
    with pytest.raises(gated_vpt.AdapterConfigError, match=r"adapter_config.json: is more than 1048576 bytes"):
        PeftModel.from_pretrained(base, folder)
    assert not hasattr(base, "peft_config")


# ----------------------------------------------------------------------------------------------------------------
# Raw errors where a clear one is promised (Reliability 3, item 12), and `config=` (item 8)
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_methods(tmp_path_factory):
    from gated_vpt import CDCPromptConfig

    root = tmp_path_factory.mktemp("two-methods")
    for name, config in (("gpt", GatedPromptConfig), ("cdc", CDCPromptConfig)):
        model = get_peft_model(TINY_BACKBONES["vit"](), config(num_prompts=2, modules_to_save=["classifier"]))
        model.save_pretrained(root / name)
    clip = get_peft_model(TINY_BACKBONES["clip"](), GatedPromptConfig(num_prompts=2))
    clip.save_pretrained(root / "clip")
    return root


def test_a_second_method_through_transformers_load_adapter_is_refused_clearly(two_methods):
    # Before: a GPT then a CDC adapter through transformers' load_adapter raised `AttributeError: use_gates`.
    base = TINY_BACKBONES["vit"]()
    base.load_adapter(str(two_methods / "gpt"), adapter_name="first")
    before = fingerprint(base)
    with pytest.raises(ValueError, match=r"already hold a prompt adapter of another method \(GatedPromptBlock"):
        base.load_adapter(str(two_methods / "cdc"), adapter_name="second")
    assert_same(before, fingerprint(base))


def test_gated_vpt_from_pretrained_takes_a_config_like_peft(two_methods):
    # Before: `gated_vpt.from_pretrained(base, path, config=...)` raised a TypeError (config given twice).
    from peft import PeftConfig

    config = PeftConfig.from_pretrained(two_methods / "gpt")
    model = gated_vpt.from_pretrained(TINY_BACKBONES["vit"](), two_methods / "gpt", config=config)
    assert isinstance(model.peft_config["default"], GatedPromptConfig)


def test_a_config_passed_to_from_pretrained_still_gets_the_backbone_check(two_methods):
    # Before: `PeftModel.from_pretrained(siglip, clip_adapter, config=GatedPromptConfig(...))` loaded a CLIP adapter
    # onto SigLIP: a config without a backbone record skipped the check.
    base = TINY_BACKBONES["siglip"]()
    pristine = copy.deepcopy(base)
    with pytest.raises(
        gated_vpt.IncompatibleBackboneError, match=r"'clip_vision_model' vs model 'siglip_vision_model'"
    ):
        PeftModel.from_pretrained(base, two_methods / "clip", config=GatedPromptConfig(num_prompts=2))
    assert_same(fingerprint(pristine), fingerprint(base))
    PeftModel.from_pretrained(TINY_BACKBONES["clip"](), two_methods / "clip", config=GatedPromptConfig(num_prompts=2))


def test_meta_tensors_in_an_adapter_state_dict_are_refused(two_methods):
    # Before: transformers' `load_adapter(adapter_state_dict=...)` with a meta tensor raised NotImplementedError.
    from safetensors.torch import load_file

    tensors = dict(load_file(two_methods / "gpt" / "adapter_model.safetensors"))
    key = next(k for k in tensors if k.endswith("gpt_prompts"))
    tensors[key] = torch.empty(tensors[key].shape, device="meta")
    config = copy.deepcopy(PeftModel.from_pretrained(TINY_BACKBONES["vit"](), two_methods / "gpt").peft_config)
    base = TINY_BACKBONES["vit"]()
    before = fingerprint(base)
    with pytest.raises(gated_vpt.AdapterWeightsError, match=r"is a meta tensor"):
        base.load_adapter(adapter_state_dict=tensors, peft_config=config["default"])
    assert_same(before, fingerprint(base))


def _nested(depth: int):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("field", ["layers_to_transform", "peft_type", "backbone", "auto_mapping"])
def test_hostile_config_values_give_short_messages_even_deep_in_the_stack(two_methods, tmp_path, field):
    # Before: a value nested 900 levels deep raised RecursionError (formatting it for the message, with the caller's
    # stack already deep), and a 1 MB `peft_type` gave a 1 MB message.
    import json

    for value in (_nested(900), "A" * 1_000_000):
        folder = tmp_path / f"{field}-{len(str(value))}"
        shutil.copytree(two_methods / "gpt", folder)
        data = json.loads((folder / "adapter_config.json").read_text())
        data[field] = "VALUE"
        text = json.dumps(data).replace(
            '"VALUE"', json.dumps(value) if isinstance(value, str) else "[" * 900 + "]" * 900
        )
        (folder / "adapter_config.json").write_text(text)

        def deep(levels: int, folder: Path = folder):
            return deep(levels - 1) if levels else PeftModel.from_pretrained(TINY_BACKBONES["vit"](), folder)

        with pytest.raises(gated_vpt.AdapterConfigError) as info:
            deep(sys.getrecursionlimit() - 1000 + 80)  # as if called from a deep stack
        assert len(str(info.value)) < 1500, len(str(info.value))
