"""The README's module table and its Python examples name things that exist, importable as written."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
TABLE_ROW = re.compile(r"^\| `(xaisdk(?:\.[a-z_]+)*)` \| (.*) \|$")
NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\(|$)")
DOTTED = re.compile(r"^(xaisdk(?:\.[a-z_]+)*)\.([A-Za-z_][A-Za-z0-9_]*)$")


def _table() -> list[tuple[str, str]]:
    """(module, name) for every backticked name (``name`` or ``name(...)``) in the module table."""
    pairs = []
    for line in README.read_text().splitlines():
        row = TABLE_ROW.match(line)
        if not row:
            continue
        module, text = row.groups()
        for token in re.findall(r"`([^`]+)`", text):
            dotted = DOTTED.match(token)
            if dotted:  # a full path: `xaisdk.runtime.images` or `xaisdk.runtime.backend.Backend`
                pairs.append((dotted.group(1), dotted.group(2)))
            elif (name := NAME.match(token)) and not token.startswith("xaisdk"):
                pairs.append((module, name.group(1)))
    return pairs


@pytest.mark.parametrize("module,name", _table())
def test_every_name_in_the_module_table_is_importable_from_its_module(module, name):
    if not hasattr(importlib.import_module(module), name):
        importlib.import_module(f"{module}.{name}")  # a submodule, named by its full path


def test_the_examples_imports_run():
    pattern = re.compile(r"^\s*(from xaisdk[\w.]* import |import xaisdk)")
    lines = [line.strip() for line in README.read_text().splitlines() if pattern.match(line)]
    assert len(lines) >= 5
    subprocess.run([sys.executable, "-c", "\n".join(lines)], check=True, timeout=120)


def test_importing_the_deploy_package_does_not_import_torch():
    code = "import sys, xaisdk.deploy\nfrom xaisdk.deploy import read_bundle\nassert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
