"""A private CUDA MPS daemon for the worker processes of a `ProcessPipeline`.

Why: without MPS the CUDA contexts of several processes take turns on the GPU (time slicing), so one
worker's small kernels never run beside another's and the GPU idles inside every turn. Under MPS
(NVIDIA's Multi-Process Service) the workers' kernels share the GPU at the same time. Measured on the
H100 (8 workers, 8 streams, RTMDet-nano + RTMPose-m FP16, docs/benchmarks.md): 441 -> 750 frames/s.

The daemon is private to the pipeline: its pipe and log folders are fresh temporary folders, and only
processes whose environment names them (the workers, started inside `client_environment`) connect to
it; every other CUDA process on the machine goes on as before. It runs in the GPU's default compute
mode and changes no GPU setting; `stop` quits it, and a small watchdog process quits it too when the
process that started it dies without stopping it (SIGKILL, a crash). Starting it is checked end to end
(a small process creates a CUDA context through it), so a machine where MPS cannot run is told apart
before any worker depends on it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from rtpose.errors import RtposeError

logger = logging.getLogger("rtpose.video")

CONTROL = "nvidia-cuda-mps-control"

#: creates a CUDA context and allocates on it through the driver API (no torch import: fast)
_PROBE = """
import ctypes, sys
cuda = ctypes.CDLL("libcuda.so.1")
device, context, pointer = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_uint64()
for call, args in (("cuInit", (0,)), ("cuDeviceGet", (ctypes.byref(device), 0)),
                   ("cuDevicePrimaryCtxRetain", (ctypes.byref(context), device)),
                   ("cuCtxSetCurrent", (context,)), ("cuMemAlloc_v2", (ctypes.byref(pointer), 1 << 20))):
    code = getattr(cuda, call)(*args)
    if code:
        sys.exit(f"{call} failed with CUDA error {code}")
"""


#: quits the daemon when the process that started it is gone without stopping it (killed): argv is the
#: starter's pid, the control program and the folder to remove; it notices by being re-parented
_WATCHDOG = """
import os, shutil, subprocess, sys, time
starter, control, root = int(sys.argv[1]), sys.argv[2], sys.argv[3]
while os.getppid() == starter:
    time.sleep(0.5)
subprocess.run([control], input="quit\\n", text=True, capture_output=True, timeout=60)
shutil.rmtree(root, ignore_errors=True)
"""


class MpsUnavailable(RtposeError):
    """MPS cannot be used here; the message says why."""


class MpsDaemon:
    """`start()` runs `nvidia-cuda-mps-control -d` with private folders and checks that a client can
    create a context through it; `stop()` quits it and removes the folders. Also a context manager.

    control: the control program (default: found on PATH); probe: the check command (default: a
    Python process creating a CUDA context through the daemon)."""

    def __init__(
        self, control: str | None = None, probe: Sequence[str] | None = None, timeout: float = 60.0
    ) -> None:
        self.control = control
        self.probe = list(probe) if probe is not None else [sys.executable, "-c", _PROBE]
        self.timeout = float(timeout)
        #: the variables that point a CUDA process at this daemon (empty while not running)
        self.env: dict[str, str] = {}
        self._root: Path | None = None
        self._watchdog: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return bool(self.env)

    def start(self) -> dict[str, str]:
        if self.running:
            return self.env
        control = self.control or shutil.which(CONTROL)
        if control is None:
            raise MpsUnavailable(f"{CONTROL} is not on PATH (it comes with the NVIDIA driver)")
        self.control = control
        self._root = Path(tempfile.mkdtemp(prefix="rtpose-mps-"))
        env = {"CUDA_MPS_PIPE_DIRECTORY": str(self._root / "pipe"),
               "CUDA_MPS_LOG_DIRECTORY": str(self._root / "log")}  # fmt: skip
        for folder in env.values():
            Path(folder).mkdir()
        try:
            self._run([control, "-d"], env, "could not start the MPS control daemon")
            self.env = env
            self._run(self.probe, env, "no CUDA context could be made through the MPS daemon")
        except MpsUnavailable:
            self.stop()
            raise
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(os.getpid()), control, str(self._root)],
            env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,  # Ctrl-C of our terminal is not its own
        )  # fmt: skip
        logger.info("MPS: private daemon started (%s)", self._root)
        return env

    def stop(self) -> None:
        if self._watchdog is not None:  # we quit the daemon ourselves
            self._watchdog.kill()
            self._watchdog.wait()
            self._watchdog = None
        if self.env and self.control:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run([self.control], input="quit\n", text=True, env={**os.environ, **self.env},
                               capture_output=True, timeout=self.timeout)  # fmt: skip
        self.env = {}
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    @contextlib.contextmanager
    def client_environment(self) -> Iterator[None]:
        """Processes started inside inherit the daemon's variables (this process's own are restored)."""
        saved = {name: os.environ.get(name) for name in self.env}
        os.environ.update(self.env)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def __enter__(self) -> MpsDaemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, command: Sequence[str], env: dict[str, str], failure: str) -> None:
        try:
            done = subprocess.run(list(command), env={**os.environ, **env}, capture_output=True, text=True,
                                  timeout=self.timeout)  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            raise MpsUnavailable(f"{failure}: {exc}") from exc
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
            raise MpsUnavailable(f"{failure}: {said[0]}{self._log_tail()}")

    def _log_tail(self) -> str:
        log = self._root / "log" / "control.log" if self._root else None
        if log is None or not log.exists():
            return ""
        lines = log.read_text(errors="replace").strip().splitlines()[-2:]
        return f" (MPS log: {' | '.join(lines)})" if lines else ""
