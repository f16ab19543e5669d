import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

# Simulate an install without faiss: the hashing and scoring commands must keep working and the
# index commands must say what is missing in one line.
SCRIPT = """
import sys
sys.modules['faiss'] = None  # import faiss -> ModuleNotFoundError
from engine.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run(*args):
    return subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, cwd=ROOT)


def test_other_commands_work_without_faiss(ref_tmks):
    r = run("info", str(ref_tmks["doorknob-hd-no-bar"]))
    assert r.returncode == 0 and '"frame_count": 62' in r.stdout


def test_index_command_names_the_missing_package(tmp_path):
    r = run("index", "create", str(tmp_path / "ix"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("vmatch: 'index' needs the Python package 'faiss'")


def test_serve_names_its_extra_when_fastapi_is_missing(tmp_path):
    script = ("import sys, importlib.util\nreal = importlib.util.find_spec\n"
              "importlib.util.find_spec = lambda n, *a: None if n == 'fastapi' else real(n, *a)\n"
              "from engine.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    r = subprocess.run([sys.executable, "-c", script, "serve", "--data", str(tmp_path)], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == ("vmatch: 'serve' needs the Python package 'fastapi', which is not installed "
                                "(pip install -e \".[cpu,serve]\")")
