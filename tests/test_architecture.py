"""The architecture as tests: layers as folders with imports pointing down only, the frameworks kept to the layers
that need them, one owner per concept. The layer order below is the one definition; docs/architecture.md's table
is checked against it."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "ddpm"
# lowest first: a module may import its own layer and the layers before it, never one after it
LAYERS = ["errors", "core", "nn", "runtime", "data", "metrics", "io", "pipeline", "training", "tasks"]
FRAMEWORKS = {"lightning", "pytorch_lightning", "hydra", "omegaconf"}
# the frameworks a layer may import (anywhere in a module, also inside a function)
ALLOWED = {"data": {"lightning"}, "training": {"lightning", "hydra"}, "tasks": FRAMEWORKS}


def layer_of(module: str) -> str | None:
    """'ddpm.core.diffusion' -> 'core'; the package itself (ddpm/__init__.py) -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def module_name(path: Path, root: Path = PKG) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = PKG) -> list[str]:
    """Every module a file imports (absolute; relative ones resolved), at any depth of the file; `from a import b`
    also counts a.b where b is a module of the package."""
    current = module_name(path, root)
    package = current if path.name == "__init__.py" else current.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append(mod)
            for a in node.names:
                sub = root.parent / Path(*f"{mod}.{a.name}".split("."))
                if sub.is_dir() or sub.with_suffix(".py").is_file():
                    found.append(f"{mod}.{a.name}")
    return found


def violations(root: Path = PKG) -> list[str]:
    """'file: imports X' for each import that points up a layer, or reaches a framework its layer may not use."""
    out = []
    for path in sorted(root.rglob("*.py")):
        layer = layer_of(module_name(path, root))
        if layer is None:
            if any(m.startswith("ddpm.") or m.split(".")[0] in FRAMEWORKS for m in imports(path, root)):
                out.append(f"{path.name}: the package's __init__ imports nothing of its own")
            continue
        assert layer in LAYERS, f"{path}: {layer}/ is no layer; add it to LAYERS"
        for mod in imports(path, root):
            top = mod.split(".")[0]
            if top in FRAMEWORKS and top not in ALLOWED.get(layer, set()):
                out.append(f"{path.relative_to(root)}: imports {mod} ({layer}/ may not use {top})")
            target = layer_of(mod) if top == "ddpm" else None
            if target is not None and LAYERS.index(target) > LAYERS.index(layer):
                out.append(f"{path.relative_to(root)}: imports {mod} ({layer}/ is below {target}/)")
    return out


def test_every_module_lives_in_a_layer_and_imports_point_down():
    assert violations() == []
    top_level = sorted(p.stem for p in PKG.glob("*.py") if p.stem not in ("__init__", "errors"))
    assert top_level == [], "modules outside the layer folders"


def test_the_import_check_fails_on_an_upward_import(tmp_path):
    """Shown by breaking it once: a copy of the tree where core/ imports training/ is reported."""
    import shutil

    copy = tmp_path / "ddpm"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__"))
    diffusion = copy / "core" / "diffusion.py"
    diffusion.write_text(diffusion.read_text() + "\nfrom ddpm.training.module import DiffusionModule\n")
    samplers = copy / "core" / "samplers" / "base.py"
    samplers.write_text(samplers.read_text() + "\ndef f():\n    import lightning\n")
    found = violations(copy)
    assert any("core/diffusion.py: imports ddpm.training.module" in v for v in found)
    assert any("core/samplers/base.py: imports lightning" in v for v in found)


def test_the_docs_list_the_same_layers_in_the_same_order():
    text = (ROOT / "docs" / "architecture.md").read_text()
    listed = re.findall(r"^\| `(\w+)/?` \|", text, re.M)
    assert [name for name in listed if name in LAYERS or name + "/" in LAYERS] == LAYERS


def test_the_sampling_side_loads_no_framework():
    """`import ddpm.pipeline` (and what it stands on: samplers, checkpoints) and `import ddpm.metrics` load no
    Lightning, Hydra or OmegaConf module (one fresh interpreter for both: each must be free of them)."""
    code = ("import sys, ddpm.pipeline, ddpm.metrics; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'pytorch_lightning', 'hydra', "
            "'omegaconf'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_src_uses_no_private_lightning_or_inductor_members():
    pattern = re.compile(r"\._trainer|_save_last_checkpoint|_last_global_step_saved|_monitor_candidates"
                         r"|torch\._inductor")
    hits = [f"{p}:{i}" for p in (ROOT / "src").rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []


def test_no_source_file_is_long():
    """A guard, not a goal: a file past 300 lines holds more than one responsibility (docs/architecture.md)."""
    long = [p.name for p in (ROOT / "src").rglob("*.py") if len(p.read_text().splitlines()) > 300]
    assert long == []


def test_sampling_and_checkpoint_loading_have_one_owner():
    """Samples are drawn through `SamplingPipeline` (which alone calls a sampler on a network), checkpoints read by
    `io.checkpoint.read_checkpoint`; no benchmark or entry point subclasses a sampler or loads a checkpoint its own
    way; the LightningModule holds no sampling loop and no resume logic."""
    files = [p for d in ("src", "benchmarks") for p in (ROOT / d).rglob("*.py")] + [ROOT / "eval.py", ROOT / "train.py"]
    rules = {
        "calls a sampler itself": (re.compile(r"\bsampler\.sample\("), {"sampling.py"}),
        "subclasses a sampler": (re.compile(r"class \w+\((\w+\.)?(|Ancestral|DDIM|DPMSolver|EDM)Sampler\)"), set()),
        "loads a checkpoint itself": (re.compile(r"load_from_checkpoint\(|torch\.load\(ckpt"),
                                      {"checkpoint.py", "module.py"}),
    }
    bad = [(p.relative_to(ROOT).as_posix(), why) for p in files if "samplers" not in p.parts
           for why, (pattern, owners) in rules.items() if p.name not in owners and pattern.search(p.read_text())]
    assert bad == []
    module = (PKG / "training" / "module.py").read_text()
    sampling = module.split("def pipeline")[1]
    assert not re.search(r"^\s+for ", sampling, re.M) and "rng_state" not in module


def test_what_the_network_output_means_has_one_owner():
    """The prediction / variance names are branched on in parametrization.py alone (configs and docs aside).
    diffusers_io.py spells diffusers' own vocabulary, which shares the string "learned_range": its table maps
    diffusers' names onto the parametrization's class names and branches on none of ours."""
    names = re.compile(r"learned_range|\"x0\"|== \"v\"")
    owners = {p.name for p in (ROOT / "src").rglob("*.py") if names.search(p.read_text())}
    assert owners - {"diffusers_io.py", "diffusers_scheduler.py"} == {"parametrization.py"}
    ours = re.compile(r"\"fixedlarge\"|\"fixedsmall\"|\"x0\"|\"eps\"")
    assert not any(ours.search(p.read_text()) for p in (PKG / "io").glob("diffusers*.py"))
