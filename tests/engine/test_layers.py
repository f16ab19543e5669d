"""The import rule, checked on the source (ast) of every module: layers only import downward.

    cli -> {ray, serve, pytx} -> {index, hashing (hasher), eval, bench}
        -> {decode, features, .tmk I/O, signals, scoring, borders/robust, synthetic}
        -> {errors, config, inputs, progress} -> kernels

Imports inside a layer are allowed; imports inside functions count too (a lazy import is still
an import). ``engine/__init__.py`` is the public façade (it resolves names lazily by string) and
is not a layer. A new module must be placed in LAYERS (the test says so).
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: Module prefix -> layer (higher may import lower). The longest matching prefix decides.
LAYERS: dict[str, int] = {
    "kernels": 0,
    "engine.errors": 1, "engine.config": 1, "engine.inputs": 1, "engine.progress": 1,
    "engine.procpool": 1,
    "engine.decode": 2, "engine.features": 2, "engine.tmkfile": 2, "engine.signals": 2, "engine.scoring": 2,
    "engine.borders": 2, "engine.robust": 2, "engine.synthetic": 2,
    "engine.index": 3, "engine.hasher": 3, "engine.eval": 3, "engine.bench": 3,
    "engine.ray": 4, "engine.serve": 4, "engine.pytx": 4,
    "engine.cli": 5,
}
NAMES = {0: "kernels", 1: "base", 2: "features/decode/scoring", 3: "index/hashing/eval", 4: "ray/serve/pytx",
         5: "cli"}


def _module(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    best = None
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, layer)
    return None if best is None else best[1]


def _is_module(name: str) -> bool:
    p = REPO / Path(*name.split("."))
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every engine/kernels module `path` imports, anywhere in the file."""
    me = _module(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                out.append((node.lineno, full if _is_module(full) else base))
    return [(ln, m) for ln, m in out if m.split(".")[0] in ("engine", "kernels")]


def _sources() -> list[Path]:
    return sorted(p for d in ("engine", "kernels") for p in (REPO / d).rglob("*.py"))


def test_every_module_has_a_layer():
    missing = [_module(p) for p in _sources() if p != REPO / "engine" / "__init__.py" and layer_of(_module(p)) is None]
    assert not missing, f"place these modules in tests/engine/test_layers.py LAYERS: {missing}"


def test_no_module_imports_a_layer_above_it():
    upward = []
    for path in _sources():
        if path == REPO / "engine" / "__init__.py":
            continue
        mine = layer_of(_module(path))
        for line, target in imports_of(path):
            theirs = layer_of(target)
            if target == "engine":  # the façade (engine/__init__.py) re-exports every layer: only the CLI uses it
                if mine != LAYERS["engine.cli"]:
                    upward.append(f"{path.relative_to(REPO)}:{line} imports the engine façade")
            elif theirs is not None and mine is not None and theirs > mine:
                upward.append(f"{path.relative_to(REPO)}:{line} ({NAMES[mine]}) imports {target} ({NAMES[theirs]})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule can fail: a ray module importing the CLI is reported."""
    assert layer_of("engine.ray.backfill") == 4 and layer_of("engine.cli.common") == 5
    assert layer_of("engine.index.needles") == 3 and layer_of("kernels.score") == 0
    src = REPO / "engine" / "ray" / "shard_query.py"
    found = imports_of(src)
    assert ("engine.index" in {m for _, m in found}) and all(layer_of(m) <= 4 for _, m in found)
    fake = REPO / "engine" / "ray" / "_layer_probe.py"
    try:
        fake.write_text("def f():\n    from engine.cli.common import Progress\n")
        assert imports_of(fake) == [(2, "engine.cli.common")]
    finally:
        fake.unlink()
