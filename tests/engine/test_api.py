import engine


def test_public_api_resolves():
    for name in engine.__all__:
        assert getattr(engine, name) is not None, name


def test_readme_python_example_runs(ref_tmks, tmp_path):
    f = engine.read_tmk(ref_tmks["doorknob-hd-no-bar"])
    engine.write_tmk(tmp_path / "d.tmk", f)
    bank = engine.read_batch([ref_tmks[s] for s in ("doorknob-hd-no-bar", "chair-19-sd-bar")])
    res = engine.Scorer(f.params, device="cpu").one_to_many(f, bank, c1=0.7)
    assert res.level1[0] > 0.9999 and abs(res.level2[0] - 1.0) < 1e-6
    assert res.level2.shape == (2,) and res.offsets.shape == (2, 4)


def test_readme_python_section_uses_only_the_public_names():
    import ast
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    code = "\n".join(re.findall(r"```python\n(.*?)```", section, re.S))
    names = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom):
            assert node.module == "engine", f"README imports from {node.module}"
            names += [a.name for a in node.names]
        assert not isinstance(node, ast.Import) or all(a.name == "engine" for a in node.names)
    assert names and set(names) <= set(engine.__all__), set(names) - set(engine.__all__)
    for must in ("VideoIndex", "Match", "VmatchError", "IncompatibleError", "DecodeTimeout", "VideoIndexError"):
        assert must in engine.__all__


def test_version_is_the_package_version(capsys):
    import re
    from pathlib import Path

    import pytest

    from engine.cli import main

    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1) == engine.__version__
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"vmatch {engine.__version__}"
