"""The private MPS daemon (`rtpose.pipelines.mps`) with a stand-in control program: start, the client
environment, the end-to-end check, stop; and how `ProcessPipeline` asks for it."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rtpose.errors import RtposeError
from rtpose.pipelines import mps
from rtpose.pipelines.mps import MpsDaemon, MpsUnavailable
from rtpose.pipelines.multiprocess import ProcessPipeline

PROBE_OK = [
    sys.executable,
    "-c",
    "import os, sys; sys.exit(not os.path.isdir(os.environ['CUDA_MPS_PIPE_DIRECTORY']))",
]
PROBE_FAILS = [sys.executable, "-c", "import sys; sys.exit('cuInit failed with CUDA error 805')"]


def _fake_control(tmp_path: Path, exit_code: int = 0) -> tuple[Path, Path]:
    """A control program that logs its arguments, its stdin and its pipe folder, then exits."""
    log = tmp_path / "calls.log"
    program = tmp_path / "nvidia-cuda-mps-control"
    program.write_text(
        "#!/bin/sh\n"
        f'echo "args=$* pipe=$CUDA_MPS_PIPE_DIRECTORY" >> {log}\n'
        f'if [ "$1" != "-d" ]; then cat >> {log}; fi\n'
        f"exit {exit_code}\n"
    )
    program.chmod(program.stat().st_mode | stat.S_IEXEC)
    return program, log


def test_start_checks_a_client_then_stop_quits_and_cleans_up(tmp_path: Path) -> None:
    program, log = _fake_control(tmp_path)
    daemon = MpsDaemon(control=str(program), probe=PROBE_OK)
    env = daemon.start()
    pipe = Path(env["CUDA_MPS_PIPE_DIRECTORY"])
    assert daemon.running and pipe.is_dir() and Path(env["CUDA_MPS_LOG_DIRECTORY"]).is_dir()
    assert f"args=-d pipe={pipe}" in log.read_text()
    before = os.environ.get("CUDA_MPS_PIPE_DIRECTORY")
    with daemon.client_environment():
        assert os.environ["CUDA_MPS_PIPE_DIRECTORY"] == str(pipe)
    assert os.environ.get("CUDA_MPS_PIPE_DIRECTORY") == before
    daemon.stop()
    assert log.read_text().splitlines()[-1] == "quit" and not pipe.exists() and not daemon.running
    daemon.stop()  # twice is harmless


def test_a_daemon_whose_starter_is_killed_is_quit_by_its_watchdog(tmp_path: Path) -> None:
    program, log = _fake_control(tmp_path)
    code = (
        "import sys, time; from rtpose.pipelines.mps import MpsDaemon; "
        f"env = MpsDaemon(control={str(program)!r}, probe={PROBE_OK!r}).start(); "
        "print(env['CUDA_MPS_PIPE_DIRECTORY'], flush=True); time.sleep(60)"
    )
    starter = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    pipe = Path(starter.stdout.readline().strip())
    assert pipe.is_dir() and "quit" not in log.read_text()
    starter.kill()  # no stop(), no atexit
    starter.wait()
    deadline = time.monotonic() + 20
    while "quit" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert log.read_text().rstrip().endswith("quit")
    while pipe.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not pipe.exists()


def test_a_daemon_no_client_can_reach_is_quit_and_reported(tmp_path: Path) -> None:
    program, log = _fake_control(tmp_path)
    daemon = MpsDaemon(control=str(program), probe=PROBE_FAILS)
    with pytest.raises(MpsUnavailable, match=r"no CUDA context .* CUDA error 805"):
        daemon.start()
    calls = log.read_text()
    pipe = Path(calls.split("pipe=", 1)[1].split()[0])
    assert calls.rstrip().endswith("quit") and not daemon.running and not pipe.exists()


def test_a_control_program_that_fails_or_is_missing_is_reported(tmp_path: Path, monkeypatch) -> None:
    program, _ = _fake_control(tmp_path, exit_code=3)
    with pytest.raises(MpsUnavailable, match="could not start the MPS control daemon"):
        MpsDaemon(control=str(program), probe=PROBE_OK).start()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(MpsUnavailable, match="not on PATH"):
        MpsDaemon(probe=PROBE_OK).start()


class _Refused:
    def start(self) -> None:
        raise MpsUnavailable("nvidia-cuda-mps-control is not on PATH")


def test_process_pipeline_asks_for_mps_only_where_it_helps(monkeypatch, caplog) -> None:
    monkeypatch.setattr(mps, "MpsDaemon", _Refused)
    with pytest.raises(RtposeError, match="'auto', 'on' or 'off'"):
        ProcessPipeline(workers=2, mps="yes")
    cpu = ProcessPipeline(workers=2, device="cpu")
    cpu._start_mps(2)  # auto on the CPU: not wanted, not tried
    assert not cpu.mps_used
    one = ProcessPipeline(workers=2, device="cuda")
    one._start_mps(1)  # one worker shares the GPU with nobody
    assert not one.mps_used
    with caplog.at_level(logging.WARNING, logger="rtpose.video"):
        gpu = ProcessPipeline(workers=2, device="cuda")
        gpu._start_mps(2)  # wanted, refused: a warning, the workers take turns
    assert not gpu.mps_used and "not on PATH" in caplog.text
    with pytest.raises(MpsUnavailable):
        ProcessPipeline(workers=2, device="cuda", mps="on")._start_mps(2)
