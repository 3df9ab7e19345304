"""Reliability and security: bad files give a clear error and leave the model exactly as it was, pickles are never
opened, saving is atomic, training touches nothing but the adapter and is reproducible.

The bad inputs are the `CASES` of docs/gen_reliability.py, which also renders them into docs/reliability.md.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import pickle
import stat
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tiny_models import TINY_BACKBONES, pixel_values

import gated_vpt
from gated_vpt.io import atomic, config_file, weights_file
from gated_vpt import GatedPromptConfig
from gated_vpt.prompt_layer import PromptBlock

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
            # does for LoRA too): activate it explicitly.
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
        monkeypatch.setattr(gated_vpt.hub, "_add_card_section", lambda *a, **k: (_ for _ in ()).throw(OSError("x")))
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
    downloaded; an unreachable Hub leaves the error to PEFT (the check returns None)."""
    import shutil

    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    repo = tmp_path / "repo"
    shutil.copytree(world["references"]["vit"], repo)
    downloaded = []

    def fake_download(repo_id, filename, subfolder=None, **kwargs):
        assert repo_id == "someone/adapter"
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

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    assert weights_file.check_adapter_files("someone/adapter") is None


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
