"""Walks the imports of every module and fails when a layering rule of ARCHITECTURE.md is broken."""
from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("wgclient", "derp", "natprobe")
IO_MODULES = {"asyncio", "socket", "ssl", "pytun", "netifaces", "websockets", "aioquic", "pyroute2",
              "uvloop", "selectors", "subprocess", "fcntl", "time", "random"}


def modules():
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            yield path


def imports_of(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def is_adapter(path: pathlib.Path) -> bool:
    rel = path.relative_to(ROOT).parts
    return "aio" in rel or "cli" in rel or rel[-1] in ("__main__.py",)


@pytest.mark.parametrize("path", list(modules()), ids=lambda p: str(p.relative_to(ROOT)))
def test_layering(path: pathlib.Path) -> None:
    rel = path.relative_to(ROOT)
    pkg = rel.parts[0]
    imported = imports_of(path)
    tops = {name.split(".")[0] for name in imported}
    # Siblings never import each other or the client (the derper entry point may start natprobe's STUN server).
    if pkg == "derp":
        assert "wgclient" not in tops, f"{rel} imports wgclient"
        if not is_adapter(path):
            assert "natprobe" not in tops, f"{rel} imports natprobe"
    if pkg == "natprobe":
        assert not tops & {"wgclient", "derp"}, f"{rel} imports a sibling"
    # Cores do no I/O.
    if not is_adapter(path):
        assert not tops & IO_MODULES, f"core module {rel} imports I/O modules {sorted(tops & IO_MODULES)}"


@pytest.mark.parametrize("path", list(modules()), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_has_docstring(path: pathlib.Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    assert ast.get_docstring(tree), f"{path.relative_to(ROOT)} has no module docstring"
