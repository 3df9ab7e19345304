"""The package's structure, as docs/architecture.md draws it: who may import whom, no import cycle (function-level
and TYPE_CHECKING imports included), no library module over 450 lines, and nothing in the core that downloads or
runs subprocesses. Adding a method or a family must not need an exception here."""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gated_vpt"
MAX_LINES = 450
# Method packages: a folder with config.py, layer.py and model.py. They may import the shared machinery and the ViT
# facts, and VPT (the base method) - never another method.
BASE_METHOD = "vpt"
METHOD_IMPORTS = {"prompting.*", "vit.attention", "vit.backbones", "vit.tokens", "values"}
# module (relative to gated_vpt, fnmatch pattern) -> what it may import from the package
ALLOWED = {
    "messages": set(),
    "values": set(),
    "precision": set(),
    # what a ViT looks like
    "vit": set(),
    "vit.tokens": set(),
    "vit.attention": {"values"},
    "vit.backbone_record": {"messages", "values"},
    "vit.family": {"vit.attention"},
    "vit.families": {"vit.attention", "vit.family", "vit.tokens"},
    "vit.timm_families": {"vit.attention", "vit.family"},
    "vit.backbones": {"vit.families", "vit.family", "vit.timm_families"},
    # the shared prompt machinery
    "prompting": set(),
    "prompting.routing": set(),
    "prompting.prompt_config": {"vit.backbone_record", "messages", "values"},
    "prompting.registration": {"prompting.prompt_config"},
    "prompting.presets": {"prompting.prompt_config"},
    "prompting.prompt_layer": {"prompting.prompt_config", "prompting.routing", "vit.tokens"},
    "prompting.mixed_batch": {"prompting.routing"},
    "prompting.prompt_tuner": {
        "vit.backbone_record",
        "vit.backbones",
        "io.compare",
        "io.landing",
        "prompting.mixed_batch",
        "prompting.prompt_config",
        "prompting.prompt_layer",
        "prompting.routing",
        "vit.tokens",
    },
    "prompting.diagnostics": {"prompting.prompt_layer"},
    # the PEFT / Hub / file boundary
    "io": set(),
    "io.hub": {"vit.backbone_record", "io.*", "prompting.prompt_config"},
    "io.patches": {"vit.backbone_record", "io.*", "prompting.prompt_config", "prompting.prompt_layer"},
    "io.*": {"io.*", "prompting.prompt_config", "vit.backbone_record", "messages", "prompting.registration"},
    "contrib": set(),
    "contrib.*": {"contrib.*"},  # tools may build on each other (timm_classifier on timm_dinov2), never on the core
}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


MODULES = _modules()
METHOD_PACKAGES = sorted(
    name
    for name, path in MODULES.items()
    if path.name == "__init__.py" and all((path.parent / f).is_file() for f in ("config.py", "layer.py", "model.py"))
)


def _imports(name: str, path: Path) -> set[str]:
    """Package-internal modules `name` imports anywhere in its file ("" is the package root)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("gated_vpt"):
                target = node.module.removeprefix("gated_vpt").lstrip(".")
            else:
                continue
            children = [f"{target}.{a.name}".lstrip(".") for a in node.names]
            found.update([c for c in children if c in MODULES] or [target])
        elif isinstance(node, ast.Import):
            found.update(
                a.name.removeprefix("gated_vpt").lstrip(".") for a in node.names if a.name.startswith("gated_vpt")
            )
    found.discard(name)
    return {f for f in found if f in MODULES}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _allowed(name: str) -> set[str] | None:
    method = next((m for m in METHOD_PACKAGES if name == m or name.startswith(m + ".")), None)
    if method is not None:
        base = set() if method == BASE_METHOD else {BASE_METHOD, f"{BASE_METHOD}.*"}
        return METHOD_IMPORTS | base | {f"{method}.*", method}
    for pattern, allowed in ALLOWED.items():
        if fnmatch.fnmatch(name, pattern):
            return allowed
    return None


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n))
def test_each_module_imports_only_what_its_layer_may(name):
    allowed = _allowed(name)
    assert allowed is not None, f"gated_vpt.{name} is in no layer of docs/architecture.md: add it there and here"
    bad = sorted(i for i in GRAPH[name] if not any(fnmatch.fnmatch(i, a) for a in allowed))
    assert not bad, f"gated_vpt.{name} imports {bad}; its layer allows {sorted(allowed)}"


def test_there_is_no_import_cycle():
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(GRAPH[node]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for name in sorted(n for n in MODULES if n):
        if name not in state:
            visit(name, [name])


def test_the_root_imports_no_contrib_module():
    assert not any(i == "contrib" or i.startswith("contrib.") for i in GRAPH[""])
    core = [n for n in MODULES if not (n == "contrib" or n.startswith("contrib."))]
    assert not [n for n in core for i in GRAPH[n] if i.startswith("contrib")]


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not n.startswith("contrib")))
def test_library_modules_are_small_and_never_run_subprocesses(name):
    text = MODULES[name].read_text()
    assert len(text.splitlines()) <= MAX_LINES, f"gated_vpt.{name} has {len(text.splitlines())} lines"
    tree = ast.parse(text)
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not imported & {"subprocess", "urllib", "requests"}, f"gated_vpt.{name} runs or downloads things"


def test_method_packages_are_found_and_each_registers_itself():
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    import gated_vpt

    assert {"cdc", "gated", "vpt"} <= set(METHOD_PACKAGES)
    for method in METHOD_PACKAGES:
        package = getattr(gated_vpt, method)
        config_cls = next(v for k, v in vars(package).items() if k.endswith("Config") and isinstance(v, type))
        assert config_cls in PEFT_TYPE_TO_CONFIG_MAPPING.values()


def test_every_registered_method_has_its_page():
    """docs/methods/ holds one page per prompt method registered by this package, naming its config class, its PEFT
    type and its folder, and docs/methods.md links every page."""
    from gated_vpt.prompting.registration import registered_prompt_methods

    docs = Path(__file__).resolve().parents[1] / "docs"
    pages = {page.name: page.read_text() for page in (docs / "methods").glob("*.md")}
    index = (docs / "methods.md").read_text()
    for peft_type, (config_cls, _) in registered_prompt_methods().items():
        if not config_cls.__module__.startswith("gated_vpt."):
            continue
        folder = config_cls.__module__.split(".")[1]
        naming = [name for name, text in pages.items() if f"`{config_cls.__name__}`" in text.split("\n\n")[1]]
        assert len(naming) == 1, f"{config_cls.__name__} needs exactly one page in docs/methods/ naming it on top"
        text = pages[naming[0]]
        assert f"`{peft_type}`" in text and f"`gated_vpt/{folder}/`" in text, naming[0]
        assert f"(methods/{naming[0]})" in index, f"docs/methods.md does not link methods/{naming[0]}"
