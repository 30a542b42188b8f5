"""csm_worker's imports run one way: entry points -> engine/ -> model/ -> backends/ -> the leaf modules (errors,
cache, audio); and nothing in it imports Ray, storage clients or the job system. Read from the source, lazy
imports inside functions included, so a new file that reaches back up the tree fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import csm_worker

ROOT = Path(csm_worker.__file__).parent
LEAVES = {"errors", "cache", "audio"}
LAYERS = {"backends": 1, "model": 2, "quality": 2, "watermark": 2, "engine": 3}
ENTRY = 4  # generator.py, bench.py, device_check.py and the package's __init__
FORBIDDEN = {"ray", "boto3", "botocore", "jobs"}


def layer(module: str) -> int:
    """csm_worker.<first>... -> its layer."""
    first = module.split(".")[1] if "." in module else ""
    if first in LEAVES:
        return 0
    return LAYERS.get(first, ENTRY)


def imports(path: Path) -> list[str]:
    """Every module `path` imports, resolved to an absolute name."""
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            found += [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
    return found


def test_every_import_points_down_the_tree():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        me = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
        for target in imports(path):
            if target.split(".")[0] in FORBIDDEN:
                wrong.append(f"{me} imports {target} (csm_worker knows nothing of Ray, storage or jobs)")
            if target.startswith("csm_worker.") and layer(target) > layer(me):
                wrong.append(f"{me} (layer {layer(me)}) imports {target} (layer {layer(target)})")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_imports():
    # A walker that found nothing would pass the test above: make sure it resolves relative imports.
    found = imports(ROOT / "model" / "model.py")
    assert "csm_worker.backends" in found and "csm_worker.model.depth" in found


def test_every_folder_says_what_it_holds():
    for init in ROOT.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and doc.splitlines()[0].strip(), f"{init} opens with no one-line purpose"


def test_every_import_of_csm_worker_in_the_repository_resolves():
    # Benchmarks and scripts (docs/bench, scripts/) are run by hand, not by the suite: a module that moved would
    # break them silently. Every `from csm_worker... import name` anywhere in the tree must still resolve.
    import importlib

    repo = ROOT.parent
    broken = []
    for path in sorted(repo.rglob("*.py")):
        if any(part.startswith(".") or part.endswith(".egg-info") for part in path.relative_to(repo).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("csm_worker"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name) and importlib.util.find_spec(
                            f"{node.module}.{alias.name}") is None:
                        broken.append(f"{path.relative_to(repo)}: from {node.module} import {alias.name}")
    assert not broken, "\n".join(broken)
