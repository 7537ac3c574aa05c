"""Does a compiled engine load in a fresh process on this GPU? (the H100 `aoti_load_package` segfault)

    python scripts/gpu_diag_load.py        # builds a 1-conv engine, then loads it in child processes

Each variant runs in its own child process (a segfault ends only the child) and prints its exit code:
-11 is SIGSEGV. Also prints what the package's shared object links against (ldd), since mixing the
toolkit's CUDA runtime with the one of PyTorch's wheels is one way such a load can crash.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from torch import nn

from rtpose.engines.compiled import ensure_engine
from rtpose.models.spec import ModelSpec

WARM = (
    "x=torch.randn(1,3,8,8,device='cuda'); torch.nn.functional.conv2d(x, torch.randn(4,3,3,3,device='cuda'));"
    " x.view(3,64)@x.view(64,3); torch.cuda.synchronize();"
)
RUN = "print(out(torch.randn(2,3,32,32,device='cuda'))[0].shape)"


def main() -> int:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU()).eval()
    spec = ModelSpec(
        name="diag", task="pose-topdown", family="diag", arch="diag", input_size=(32, 32), mean=(0, 0, 0),
        std=(1, 1, 1), channel_order="RGB", build=lambda: net, extra={"output_names": ["out"]},
    )  # fmt: skip
    build = ensure_engine(net, spec, weights_id="diag", device="cuda", precision="fp16", max_batch=4,
                          progress=False, cache_dir=tempfile.mkdtemp())  # fmt: skip
    path = str(build.path)
    print("built", path, flush=True)
    extract = tempfile.mkdtemp()  # kept: the aot_load variant loads the shared object from here
    with zipfile.ZipFile(path) as package:
        package.extractall(extract)
    so_files = sorted(str(p) for p in Path(extract).rglob("*.so"))
    for so in so_files:
        print("ldd", so)
        print(subprocess.run(["ldd", so], capture_output=True, text=True).stdout)
    load = f"out=torch._inductor.aoti_load_package({path!r});"
    mark = "print('loading', flush=True);"
    done = "print('loaded', flush=True);"
    variants = {
        "raw_load": f"import torch; {mark} {load} {done} {RUN}",
        # as raw_load, without torch's CPU-ISA compiler probe (what CompiledEngine does): no warm-up at all
        "no_isa_probe": (
            "import torch; from rtpose.engines.compiled import _without_cpu_isa_probe as quiet;"
            f" {mark}\nwith quiet(): {load}\n{done} {RUN}"
        ),
        "conv_first": f"import torch; {WARM} {mark} {load} {done} {RUN}",
        "onnxruntime_first": f"import onnxruntime, torch; {mark} {load} {done} {RUN}",
        "onnxruntime_and_conv_first": f"import onnxruntime, torch; {WARM} {mark} {load} {done} {RUN}",
        "torch_compile_first": (
            "import torch; f=torch.compile(lambda x: (x*2).sin()); f(torch.ones(8, device='cuda'));"
            f" torch.cuda.synchronize(); {mark} {load} {done} {RUN}"
        ),
        "aot_load_so": (
            f"import torch; {mark} out=torch._export.aot_load({so_files[0]!r}, 'cuda'); {done} {RUN}"
            if so_files
            else "raise SystemExit(3)"
        ),
    }
    if len(sys.argv) > 1:
        variants = {k: v for k, v in variants.items() if k in sys.argv[1:]}
    for name, code in variants.items():
        try:
            command = [sys.executable, "-X", "faulthandler", "-c", code]
            result = subprocess.run(command, capture_output=True, text=True, timeout=90)
            print(f"DIAG {name}: exit {result.returncode}", result.stdout.strip()[-200:].replace("\n", " | "),
                  flush=True)  # fmt: skip
            if result.returncode != 0:
                print(result.stderr[-3000:], flush=True)
        except subprocess.TimeoutExpired as exc:
            said = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            said = said[-200:].replace("\n", " | ")
            print(f"DIAG {name}: timeout after", said, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
