"""Compiled engines: BN folding, the engine cache (keys, sidecars, locks, rebuilds) and the engine itself.

CPU tests compile one tiny conv-bn-silu network with AOTInductor (gcc): the build that the two-process
test performs (once per session, module-scoped fixture) is reused by the other tests. GPU tests
(marked `gpu`) compare fp32/fp16/bf16 engines with CUDA graph buckets against eager PyTorch.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from rtpose.engines import compiled, engine_cache
from rtpose.engines.compiled import (
    CompiledEngine,
    build_engine,
    default_buckets,
    ensure_engine,
    load_compiled_engine,
    weights_digest,
)
from rtpose.engines.fold import fold_batchnorm
from rtpose.errors import EngineError
from rtpose.models.spec import ModelSpec

INPUT_SIZE = (32, 24)
KEYPOINTS = 4
MAX_BATCH = 4


class ConvBnSiLU(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class TinySimCC(nn.Module):
    """Two conv-bn-silu blocks (one biased conv in a Sequential) and SimCC-shaped heads."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = ConvBnSiLU(3, 8, 2)
        self.block2 = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.SiLU())
        self.to_keypoints = nn.Conv1d(16, KEYPOINTS, 1)
        tokens = (INPUT_SIZE[0] // 4) * (INPUT_SIZE[1] // 4)
        self.cls_x = nn.Linear(tokens, INPUT_SIZE[1] * 2)
        self.cls_y = nn.Linear(tokens, INPUT_SIZE[0] * 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.to_keypoints(self.block2(self.block1(x)).flatten(2))
        return self.cls_x(tokens), self.cls_y(tokens)


def make_network(seed: int = 0) -> nn.Module:
    """Deterministic weights with non-trivial BN statistics, so folding has something to do."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = TinySimCC()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 2 - 1)
            module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) - 0.5)
    return net.eval()


TINY_SPEC = ModelSpec(
    name="tiny-simcc",
    task="pose-topdown",
    family="tiny",
    arch="tiny",
    input_size=INPUT_SIZE,
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    channel_order="RGB",
    build=make_network,
    extra={"codec": "simcc"},
)


def _build_in_child(cache_dir: str, barrier: Any, results: Any) -> None:
    """One of two processes building the same engine at the same moment."""
    torch.set_num_threads(1)
    net = make_network()
    barrier.wait()
    build = ensure_engine(
        net, TINY_SPEC, weights_id=weights_digest(net), device="cpu", precision="fp32",
        max_batch=MAX_BATCH, cache_dir=cache_dir, progress=False,
    )  # fmt: skip
    results.put((str(build.path), build.built, build.reason))


@pytest.fixture(scope="module")
def concurrent_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, bool, str]]]:
    """Two spawned processes build one engine at once; the engine they leave is used by later tests."""
    cache_dir = tmp_path_factory.mktemp("engine-cache")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    results = context.Queue()
    workers = [
        context.Process(target=_build_in_child, args=(str(cache_dir), barrier, results)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=600)
    assert all(w.exitcode == 0 for w in workers), [w.exitcode for w in workers]
    return cache_dir, [results.get(timeout=5) for _ in workers]


@pytest.fixture(scope="module")
def engine_path(concurrent_build: tuple[Path, list[tuple[str, bool, str]]]) -> Path:
    return Path(concurrent_build[1][0][0])


def _copy_engine(package: Path, cache_dir: Path) -> Path:
    target = cache_dir / "engines" / package.name
    target.parent.mkdir(parents=True)
    shutil.copy(package, target)
    shutil.copy(engine_cache.sidecar_path(package), engine_cache.sidecar_path(target))
    return target


@pytest.fixture
def no_compile(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Any call of the compiler fails the test (and is counted)."""
    calls: list[int] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        raise AssertionError("the engine was compiled although a valid one was cached")

    monkeypatch.setattr(compiled, "_compile_package", refuse)
    yield calls


def _build_kwargs(cache_dir: Path) -> dict[str, Any]:
    net = make_network()
    return dict(
        weights_id=weights_digest(net), device="cpu", precision="fp32", max_batch=MAX_BATCH,
        cache_dir=cache_dir, progress=False,
    )  # fmt: skip


def _assert_matches_eager(engine: CompiledEngine, batch: torch.Tensor, atol: float = 1e-4) -> None:
    with torch.no_grad():
        want_x, want_y = make_network()(batch)
    got = engine(batch)
    assert set(got) == {"simcc_x", "simcc_y"}
    assert got["simcc_x"].shape == want_x.shape and got["simcc_y"].shape == want_y.shape
    torch.testing.assert_close(got["simcc_x"].cpu(), want_x, atol=atol, rtol=1e-4)
    torch.testing.assert_close(got["simcc_y"].cpu(), want_y, atol=atol, rtol=1e-4)


# -- pure functions: no compiler ----------------------------------------------------------------------


def test_default_buckets_are_powers_of_two_up_to_max_batch() -> None:
    assert default_buckets(64) == (1, 2, 4, 8, 16, 32, 64)
    assert default_buckets(48) == (1, 2, 4, 8, 16, 32, 48)
    assert default_buckets(1) == (1,)
    with pytest.raises(EngineError):
        default_buckets(0)


def test_fold_batchnorm_removes_every_bn_and_keeps_outputs() -> None:
    net = make_network()
    example = torch.randn(2, 3, *INPUT_SIZE)
    folded, report = fold_batchnorm(net, example)
    assert report.folded and len(report.pairs) == 2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules()), "the input network must stay untouched"
    with torch.no_grad():
        for want, got in zip(net(example), folded(example), strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


class ResidualThroughBn(nn.Module):
    """The conv output feeds the BN *and* a residual add: folding would change the residual."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_fold_batchnorm_refuses_a_fold_that_changes_outputs() -> None:
    net = ResidualThroughBn().eval()
    net.bn.running_var.fill_(4.0)
    net.bn.running_mean.fill_(0.5)
    with pytest.warns(RuntimeWarning, match="folding changed the outputs"):
        folded, report = fold_batchnorm(net, torch.randn(1, 3, 8, 8))
    assert not report.folded
    assert isinstance(folded.bn, nn.BatchNorm2d)


def test_engine_key_changes_with_every_field() -> None:
    base = compiled.build_fields(
        TINY_SPEC, device=torch.device("cpu"), precision="fp32", buckets=(1, 2, 4), weights_id="w",
        dynamic_batch=True, inductor_options={},
    )  # fmt: skip
    key = engine_cache.engine_key(base)
    for change in ({"precision": "bf16"}, {"weights_id": "v"}, {"buckets": [1, 2]}, {"torch": "0.0"},
                   {"device_name": "other"}, {"format_version": -1}, {"input_size": [64, 48]},
                   {"variant": "int8-emulation"}, {"depthwise": "tap-sum"}):  # fmt: skip
        assert engine_cache.engine_key({**base, **change}) != key, change
    assert engine_cache.engine_key(dict(reversed(base.items()))) == key


def test_int8_emulation_is_part_of_the_key_and_refused_below_fp32(tmp_path: Path) -> None:
    net = make_network()
    assert compiled.module_variant(net) == "float"
    net.int8_emulation = True  # as MoveNet / openpose-lite report their fake-quantised mode
    assert compiled.module_variant(net) == "int8-emulation"
    with pytest.raises(EngineError, match="INT8 emulation"):
        build_engine(net, TINY_SPEC, **{**_build_kwargs(tmp_path), "precision": "bf16"})
    # the INT8 arithmetic an emulation follows is part of the key; float engines keep their old keys
    common = dict(device=torch.device("cpu"), precision="fp32", buckets=(1,), weights_id="w",
                  dynamic_batch=True, inductor_options={})  # fmt: skip
    keys = {
        semantics: compiled.engine_cache.engine_key(
            compiled.build_fields(TINY_SPEC, **common, variant="int8-emulation", int8_semantics=semantics)
        )
        for semantics in ("openvino-cpu", "fake-quantize")
    }
    assert keys["openvino-cpu"] != keys["fake-quantize"]
    assert "int8_semantics" not in compiled.build_fields(TINY_SPEC, **common)


def test_bad_requests_raise_engine_errors(tmp_path: Path) -> None:
    kwargs = _build_kwargs(tmp_path)
    with pytest.raises(EngineError, match="precision"):
        build_engine(make_network(), TINY_SPEC, **{**kwargs, "precision": "int4"})
    with pytest.raises(EngineError, match="exceeds max_batch"):
        build_engine(make_network(), TINY_SPEC, **{**kwargs, "buckets": (1, 8)})
    with pytest.raises(EngineError, match="cpu' or 'cuda"):
        build_engine(make_network(), TINY_SPEC, **{**kwargs, "device": "meta"})
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="no CUDA device"):
            build_engine(make_network(), TINY_SPEC, **{**kwargs, "device": "cuda"})


# -- one real build (two processes at once), then reuse ------------------------------------------------


@pytest.mark.slow
def test_two_processes_building_at_once_leave_one_valid_engine(
    concurrent_build: tuple[Path, list[tuple[str, bool, str]]],
) -> None:
    _, results = concurrent_build
    paths = {path for path, _, _ in results}
    assert len(paths) == 1
    assert sorted(built for _, built, _ in results) == [False, True], results
    package = Path(paths.pop())
    assert engine_cache.why_invalid(package) is None
    leftovers = [p.name for p in package.parent.iterdir() if ".tmp" in p.name]
    assert leftovers == []
    sidecar = engine_cache.read_sidecar(package)
    assert sidecar is not None and sidecar["folded_pairs"] == 2
    assert sidecar["output_names"] == ["simcc_x", "simcc_y"]


@pytest.mark.slow
def test_engine_outputs_match_eager_for_every_batch_size(engine_path: Path) -> None:
    engine = CompiledEngine(engine_path)
    assert engine.device == "cpu" and engine.backend == "compiled" and engine.buckets == (1, 2, 4)
    torch.manual_seed(1)
    for n in (1, 3, 4, 9):  # 9 > max batch: split into chunks
        _assert_matches_eager(engine, torch.randn(n, 3, *INPUT_SIZE))
    numpy_batch = np.random.default_rng(0).normal(size=(2, 3, *INPUT_SIZE)).astype(np.float32)
    _assert_matches_eager(engine, torch.from_numpy(numpy_batch))
    np.testing.assert_allclose(
        engine(numpy_batch)["simcc_x"].numpy(), engine(torch.from_numpy(numpy_batch))["simcc_x"].numpy()
    )
    empty = engine(torch.zeros(0, 3, *INPUT_SIZE))
    assert empty["simcc_x"].shape == (0, KEYPOINTS, INPUT_SIZE[1] * 2)


@pytest.mark.slow
def test_cached_engine_is_reused_without_compiling(
    concurrent_build: tuple[Path, list[tuple[str, bool, str]]],
    no_compile: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """... and without torch's CPU-ISA probe (it compiles test programs: 40 s per process on the H100)."""
    import torch._inductor.cpu_vec_isa as cpu_vec_isa

    def no_probe() -> None:
        raise AssertionError("loading a cached engine probed the CPU ISA with the C++ compiler")

    monkeypatch.setattr(cpu_vec_isa, "pick_vec_isa", no_probe)
    cache_dir, _ = concurrent_build
    build = ensure_engine(make_network(), TINY_SPEC, **_build_kwargs(cache_dir))
    assert not build.built and build.reason == "cached"
    engine = load_compiled_engine(make_network(), TINY_SPEC, **_build_kwargs(cache_dir))
    _assert_matches_eager(engine, torch.randn(3, 3, *INPUT_SIZE))
    assert no_compile == []


@pytest.mark.slow
def test_other_weights_do_not_reuse_the_engine(
    concurrent_build: tuple[Path, list[tuple[str, bool, str]]], no_compile: list[int]
) -> None:
    cache_dir, _ = concurrent_build
    other = make_network(seed=1)
    with pytest.raises(AssertionError, match="compiled although"):
        ensure_engine(other, TINY_SPEC, **{**_build_kwargs(cache_dir), "weights_id": weights_digest(other)})
    assert no_compile == [1]


@pytest.mark.slow
def test_mismatched_sidecar_is_not_trusted_and_triggers_a_rebuild(
    engine_path: Path, tmp_path: Path, no_compile: list[int]
) -> None:
    copy = _copy_engine(engine_path, tmp_path)
    sidecar_file = engine_cache.sidecar_path(copy)
    sidecar = json.loads(sidecar_file.read_text())
    sidecar["fields"]["torch"] = "0.0.0"
    sidecar_file.write_text(json.dumps(sidecar))
    assert "do not match" in (engine_cache.why_invalid(copy, _expected_fields()) or "")
    with pytest.warns(RuntimeWarning, match="rebuilding compiled engine"), pytest.raises(AssertionError):
        ensure_engine(make_network(), TINY_SPEC, **_build_kwargs(tmp_path))
    assert no_compile == [1]
    assert not [p for p in copy.parent.iterdir() if ".tmp" in p.name], "a failed build leaves no temp files"


def _expected_fields() -> dict[str, Any]:
    net = make_network()
    return compiled.build_fields(
        TINY_SPEC, device=torch.device("cpu"), precision="fp32", buckets=default_buckets(MAX_BATCH),
        weights_id=weights_digest(net), dynamic_batch=True, inductor_options={},
    )  # fmt: skip


@pytest.mark.slow
def test_corrupted_engine_is_rejected_then_rebuilt(
    engine_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = _copy_engine(engine_path, tmp_path)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(EngineError, match="sha256"):
        CompiledEngine(copy)

    # The compiler itself ran in `concurrent_build`; here it is replaced by one that writes the package
    # gcc produced there, so that this test checks the rebuild path (decision, warning, atomic publish,
    # new sidecar) without a second 30 s compile.
    good_sidecar = engine_cache.read_sidecar(engine_path) or {}
    compiles: list[Path] = []

    def write_known_package(*args: Any, target: Path, **kwargs: Any) -> dict[str, Any]:
        compiles.append(target)
        shutil.copy(engine_path, target)
        facts = ("output_names", "output_shapes", "input_shape", "folded_pairs", "fold_max_abs_diff")
        return {name: good_sidecar[name] for name in facts}

    monkeypatch.setattr(compiled, "_compile_package", write_known_package)
    with pytest.warns(RuntimeWarning, match="rebuilding compiled engine"):
        build = ensure_engine(make_network(), TINY_SPEC, **_build_kwargs(tmp_path))
    assert len(compiles) == 1 and compiles[0] != copy, "the build must write a temp file, not the engine"
    assert build.built and build.path == copy and "sha256" in build.reason
    assert engine_cache.why_invalid(copy, _expected_fields()) is None
    assert copy.read_bytes() == engine_path.read_bytes()
    _assert_matches_eager(CompiledEngine(copy), torch.randn(2, 3, *INPUT_SIZE))


@pytest.mark.slow
def test_bad_inputs_raise_engine_errors(engine_path: Path) -> None:
    engine = CompiledEngine(engine_path)
    with pytest.raises(EngineError, match="shape"):
        engine(torch.zeros(1, 3, 16, 16))
    with pytest.raises(EngineError, match="shape"):
        engine(torch.zeros(3, *INPUT_SIZE))
    with pytest.raises(EngineError, match="float"):
        engine(np.zeros((1, 3, *INPUT_SIZE), dtype=np.uint8))
    with pytest.raises(EngineError, match="NumPy array or torch tensor"):
        engine([[0.0]])


def test_missing_engine_file_is_an_engine_error(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="no engine file"):
        CompiledEngine(tmp_path / "nothing.pt2")


# -- GPU: precisions, CUDA graph buckets, padding -------------------------------------------------------

GPU_TOLERANCE = {"fp32": 5e-3, "fp16": 2e-2, "bf16": 8e-2}  # relative to the output's magnitude


@pytest.fixture(scope="module")
def gpu_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gpu-engine-cache")


def _gpu_engine(cache_dir: Path, precision: str, **kwargs: Any) -> CompiledEngine:
    net = make_network()
    return load_compiled_engine(
        net, TINY_SPEC, weights_id=weights_digest(net), device="cuda", precision=precision,  # type: ignore[arg-type]
        max_batch=8, cache_dir=cache_dir, progress=False, **kwargs,
    )  # fmt: skip


def _assert_close_scaled(got: torch.Tensor, want: torch.Tensor, tolerance: float) -> None:
    scale = float(want.abs().max().clamp_min(1.0))
    diff = float((got.float() - want.float()).abs().max())
    assert diff <= tolerance * scale, f"max abs diff {diff:.4g} > {tolerance} x {scale:.3g}"


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_gpu_engine_matches_eager_in_every_bucket_and_between(gpu_cache: Path, precision: str) -> None:
    engine = _gpu_engine(gpu_cache, precision)
    assert engine.device == "cuda" and engine.use_cuda_graphs and engine.buckets == (1, 2, 4, 8)
    assert not engine._graphs  # captured on first use of each bucket
    eager = make_network().cuda()
    torch.manual_seed(0)
    for n in (1, 2, 3, 4, 5, 7, 8, 13, 21):  # buckets, between buckets (padded), beyond (chunked)
        batch = torch.randn(n, 3, *INPUT_SIZE, device="cuda")
        with torch.no_grad():
            want = dict(zip(("simcc_x", "simcc_y"), eager(batch), strict=True))
        got = engine(batch)
        for name in want:
            assert got[name].device.type == "cuda" and got[name].dtype == torch.float32
            assert got[name].shape == want[name].shape, (n, name)
            _assert_close_scaled(got[name], want[name], GPU_TOLERANCE[precision])
    assert sorted(engine._graphs) == [1, 2, 4, 8]


@pytest.mark.gpu
def test_gpu_padding_rows_do_not_leak_into_results(gpu_cache: Path) -> None:
    """A large batch leaves its rows in the bucket's static input; a smaller one must not see them."""
    engine = _gpu_engine(gpu_cache, "fp32", clone_outputs=True)
    eager = make_network().cuda()
    big = torch.randn(8, 3, *INPUT_SIZE, device="cuda") * 50
    small = torch.randn(5, 3, *INPUT_SIZE, device="cuda")
    engine(big)
    got = engine(small)
    with torch.no_grad():
        want_x, _ = eager(small)
    _assert_close_scaled(got["simcc_x"], want_x, GPU_TOLERANCE["fp32"])
    # clone_outputs: an earlier result survives the next call
    first = engine(small)["simcc_x"]
    engine(big)
    _assert_close_scaled(first, want_x, GPU_TOLERANCE["fp32"])


@pytest.mark.gpu
def test_gpu_engine_accepts_numpy_and_host_tensors(gpu_cache: Path) -> None:
    engine = _gpu_engine(gpu_cache, "fp16")
    host = torch.randn(3, 3, *INPUT_SIZE)
    from_numpy = engine(host.numpy())["simcc_x"].clone()
    from_host = engine(host)["simcc_x"].clone()
    from_device = engine(host.cuda())["simcc_x"]
    torch.testing.assert_close(from_numpy, from_device)
    torch.testing.assert_close(from_host, from_device)


@pytest.mark.gpu
def test_gpu_engine_reloads_without_compiling(gpu_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _gpu_engine(gpu_cache, "fp16")  # built here unless an earlier test built it

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the engine was compiled although a valid one was cached")

    monkeypatch.setattr(compiled, "_compile_package", refuse)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine = _gpu_engine(gpu_cache, "fp16")
    assert engine.use_cuda_graphs


def test_compiled_engine_for_names_the_engine_by_the_weight_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rtpose.models.factory import LoadedModel
    from rtpose.models.weights import ResolvedWeights, sha256_file

    weights = tmp_path / "tiny.pth"
    torch.save(make_network().state_dict(), weights)
    loaded = LoadedModel(make_network(), TINY_SPEC, ResolvedWeights(weights, "pth", "explicit"))
    seen: dict[str, Any] = {}
    monkeypatch.setattr(
        compiled, "load_compiled_engine", lambda module, spec, **kw: seen.update(kw, spec=spec)
    )
    compiled.compiled_engine_for(loaded, device="cpu", precision="bf16", max_batch=16)
    assert seen["weights_id"] == "sha256:" + sha256_file(weights)
    assert seen["spec"] is TINY_SPEC and seen["precision"] == "bf16" and seen["max_batch"] == 16


def test_cudnn_times_its_algorithms_for_large_batches_only() -> None:
    """Measured on the H100: cuDNN's timed choice slows batch 1 and speeds batch 64 up, so compiled
    engines set it per call by batch size, and leave the process-wide setting as it was."""
    seen: list[tuple[int, bool]] = []

    def runner(x: torch.Tensor) -> tuple[torch.Tensor]:
        seen.append((int(x.shape[0]), torch.backends.cudnn.benchmark))
        return (x,)

    run = compiled._cudnn_choice_by_batch(runner)
    before = torch.backends.cudnn.benchmark
    for process_wide in (True, False):
        torch.backends.cudnn.benchmark = process_wide
        for batch in (1, 8, compiled.CUDNN_TIMED_FROM_BATCH, 64):
            run(torch.zeros(batch, 1))
        assert torch.backends.cudnn.benchmark is process_wide
    torch.backends.cudnn.benchmark = before
    assert seen == [(1, False), (8, False), (16, True), (64, True)] * 2
