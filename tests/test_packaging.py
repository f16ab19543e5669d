"""Declared dependencies equal what the package imports (optional extras for optional features)."""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: pip distribution -> the module it installs (where the names differ)
MODULE_OF = {"decord2": "decord", "av": "av", "PyYAML": "yaml", "faiss-cpu": "faiss", "faiss-gpu": "faiss",
             "imageio-ffmpeg": "imageio_ffmpeg", "python-multipart": "python_multipart",
             "prometheus_client": "prometheus_client"}
#: packages an extra needs at run time that vmatch does not import itself (a framework loads them)
LOADED_NOT_IMPORTED = {"python_multipart"}   # FastAPI's form parsing (uploads)
#: extras that hold tools, not imports of engine/ or kernels/ (tests, notebooks, scripts)
TOOL_EXTRAS = {"test", "corpus"}


def _name(req: str) -> str:
    return re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0]


def _third_party_imports() -> dict[str, set[str]]:
    """module -> files of engine/ and kernels/ importing it (anywhere in the file)."""
    found: dict[str, set[str]] = {}
    for path in sorted(p for d in ("engine", "kernels") for p in (REPO / d).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            for n in names:
                top = n.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("engine", "kernels", "__future__"):
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_declared_dependencies_are_the_imported_ones():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    required = {MODULE_OF.get(_name(r), _name(r).lower().replace("-", "_")) for r in project["dependencies"]}
    extras = {MODULE_OF.get(_name(r), _name(r).lower().replace("-", "_"))
              for k, reqs in project["optional-dependencies"].items() if k not in TOOL_EXTRAS for r in reqs}
    imported = _third_party_imports()
    undeclared = sorted(set(imported) - required - extras)
    assert not undeclared, {m: sorted(imported[m]) for m in undeclared}
    unused = sorted(required - set(imported))
    assert not unused, f"declared but never imported by engine/ or kernels/: {unused}"
    never = sorted(extras - set(imported) - LOADED_NOT_IMPORTED)
    assert not never, f"extras never imported: {never}"
    # optional features stay optional: no required dependency on matplotlib (plots) or faiss (index)
    assert "matplotlib" not in required and "faiss" not in required
