"""A real `vmatch serve` process on an ephemeral loopback port, and small video clips."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.serve.client import ServeClient
from tests.videos import H264_ARGS, make_testsrc, run_ffmpeg

REPO = Path(__file__).resolve().parents[3]


class Server:
    """`python -m engine.cli serve` in a subprocess; stderr (access log included) kept in a file."""

    def __init__(self, data: Path, workdir: Path, *extra: str, token: str | None = None) -> None:
        self.data, self.workdir, self.extra, self.token = data, workdir, extra, token
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 60.0) -> "Server":
        port_file = self.workdir / "port"
        port_file.unlink(missing_ok=True)
        args = [sys.executable, "-m", "engine.cli", "serve", "--data", str(self.data), "--port", "0",
                "--port-file", str(port_file), *self.extra]
        if self.token:
            tf = self.workdir / "token"
            tf.write_text(self.token + "\n")
            args += ["--token-file", str(tf)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.log = open(self.workdir / f"server-{time.time_ns()}.log", "wb")
        # its own process group: `kill_group` reaches the supervisor and every worker at once
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=self.log,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.stderr()}")
            if port_file.exists():
                self.url = f"http://127.0.0.1:{port_file.read_text().strip()}"
                try:
                    if self.client().get("/status").status == 200:
                        return self
                except OSError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not come up in {timeout} s: {self.stderr()}")

    def client(self, token: str | None = "default") -> ServeClient:
        return ServeClient(self.url, self.token if token == "default" else token, timeout=60)

    def workers(self) -> list[int]:
        """The worker processes of a `--workers N` server (the supervisor's children)."""
        assert self.proc is not None
        task = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(x) for x in task.read_text().split()] if task.exists() else []

    def kill_group(self) -> None:
        """kill -9 of the supervisor and all its workers at the same moment."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self.log.close()

    def stderr(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if not self.log.closed:
            self.log.close()
        return self.proc.returncode


@pytest.fixture
def serve(tmp_path):
    started: list[Server] = []

    def start(*extra: str, data: Path | None = None, token: str | None = None) -> Server:
        s = Server(data or tmp_path / "data", tmp_path, *extra, token=token).start()
        started.append(s)
        return s

    yield start
    for s in started:
        if s.proc and s.proc.poll() is None:
            s.stop()


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> dict[str, Path]:
    """A 5 s test pattern, its re-encode (other size, bitrate, codec settings) and an unrelated clip."""
    d = tmp_path_factory.mktemp("clips")
    orig = make_testsrc(d / "orig.mp4", 5, 15, (128, 96))
    reenc = d / "reencode.mp4"
    run_ffmpeg("-i", str(orig), "-vf", "scale=96:72", *H264_ARGS, "-crf", "35", str(reenc))
    other = make_testsrc(d / "other.mp4", 5, 15, (128, 96), source="testsrc2", extra_args=("-vf", "hflip,negate"))
    junk = d / "notes.mp4"
    junk.write_bytes(b"this is not a video\n" * 100)
    return {"orig": orig, "reencode": reenc, "other": other, "junk": junk}
