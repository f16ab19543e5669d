from engine.cli.common import Progress


def test_plain_log_lines_when_not_a_terminal(capsys):
    bar = Progress(3, "hash", "video", every_s=0.0)
    bar.update(0, frames=128)
    bar.update(1, frames=256)
    bar.close()
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("hash: 0/3 video (") and err[0].endswith("frames=128")
    assert err[1].startswith("hash: 1/3 video (") and err[1].endswith("frames=256")
