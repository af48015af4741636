"""The package's import graph: every module imports first, and layers only point down.

Layers, lowest first (a module may import its own layer or lower ones, and the
packages of one layer must not import each other in a cycle):

    segments, tokenizer, sharding, errors
    models                      (with their own parameter and cache shardings)
    checkpoints, sampling, rl
    data                        (task data sets, prompts)
    rewards                     (response-only rewards and their registry)
    world                       (the embedded world: generator, data sets, behaviours,
                                 classifier, judges)
    eval
    tasks                       (data sources: data sets, traces, metrics, own rewards)
    train
"""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "start_jax"
LAYERS = (
    ("segments", "tokenizer", "sharding", "errors"),
    ("models",),
    ("checkpoints", "sampling", "rl"),
    ("data",),
    ("rewards",),
    ("world",),
    ("eval",),
    ("tasks",),
    ("train",),
)
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def modules() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append(".".join(parts))
    return out


def _path(module: str) -> pathlib.Path:
    p = ROOT.joinpath(*module.split("."))
    return p / "__init__.py" if p.is_dir() else p.with_suffix(".py")


def _imports(module: str):
    """(target module, line, inside a function) of every start_jax import of a module."""
    tree = ast.parse(_path(module).read_text())
    nested = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            nested.update(id(n) for n in ast.walk(node) if n is not node)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("start_jax"):
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                yield (
                    (target if _is_module(target) else node.module),
                    node.lineno,
                    id(node) in nested,
                )
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("start_jax"):
                    yield alias.name, node.lineno, id(node) in nested


def _is_module(name: str) -> bool:
    p = ROOT.joinpath(*name.split("."))
    return p.is_dir() or p.with_suffix(".py").is_file()


def _group(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_layers_point_down():
    bad = []
    for module in modules():
        src = _group(module)
        if src is None:
            continue
        assert src in RANK, f"{module}: add its package to LAYERS in {__file__}"
        for target, line, in_function in _imports(module):
            dst = _group(target)
            where = f"{_path(module).relative_to(ROOT)}:{line} imports {target}"
            if in_function:
                bad.append(f"{where} inside a function")
            if dst is not None and RANK[dst] > RANK[src]:
                bad.append(
                    f"{where}: {src} (layer {RANK[src]}) may not import {dst} (layer {RANK[dst]})"
                )
    assert not bad, "\n".join(bad)


def test_packages_have_no_cycle():
    edges: dict[str, set[str]] = {}
    for module in modules():
        src = _group(module)
        for target, _, _ in _imports(module):
            dst = _group(target)
            if src and dst and dst != src:
                edges.setdefault(src, set()).add(dst)
    state: dict[str, int] = {}

    def visit(node, path):
        if state.get(node) == 1:
            raise AssertionError("package cycle: " + " -> ".join(path + [node]))
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            visit(nxt, path + [node])
        state[node] = 2

    for node in sorted(edges):
        visit(node, [])


FIRST_IMPORT = """
import importlib, sys
from tensorflow_datasets.core import registered
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "start_jax" or m.startswith("start_jax.")]:
        del sys.modules[loaded]
    for key, cls in list(registered._DATASET_REGISTRY.items()):  # Builders register by name.
        if cls.__module__.startswith("start_jax."):
            del registered._DATASET_REGISTRY[key]
    try:
        importlib.import_module(name)
    except Exception as e:  # noqa: BLE001
        failed.append(f"{name}: {type(e).__name__}: {e}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_every_module_imports_first():
    """Each module as the first start_jax import (the package modules are reset between)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", FIRST_IMPORT, *modules()],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_first_import_in_a_fresh_process():
    """The lowest-level packages that once had a cycle, each in a process of its own."""
    for module in ("start_jax.checkpoints", "start_jax.rewards"):
        _python(f"import {module}")


def _python(code: str) -> str:
    """Runs `code` in a fresh Python process; its stdout (it must exit 0)."""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.slow  # Seconds: out of the fast tier.
def test_rewards_of_a_higher_layer_are_found_by_name():
    """The world's judges register in `start_jax.world` (above rewards); `rewards` finds
    them by name in a process that imported nothing else."""
    code = (
        "import sys\n"
        "from start_jax import rewards\n"
        "assert 'start_jax.world' not in sys.modules\n"
        "assert {'synthetic', 'synthetic_rubric'} <= set(rewards.registered())\n"
        "print(type(rewards.make('synthetic_rubric')).__module__)\n"
    )
    assert _python(code).strip() == "start_jax.world.judges"
