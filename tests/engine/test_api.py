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
