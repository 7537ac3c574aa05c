"""Static-shape bottom-up decoding (`postprocess.paf_gpu`): the same people as the NumPy reference on real
frames (eagerly on the CPU here; from a CUDA graph on a GPU), exact fallbacks when a static bound is hit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rtpose.errors import RtposeError
from rtpose.postprocess import paf, paf_gpu
from rtpose.postprocess.paf import BottomUpConfig, decode_bottomup, find_peaks_numpy
from rtpose.postprocess.paf_gpu import StaticLimits, decode_static, decode_static_or_fallback

torch.set_num_threads(1)
SAVED = Path(__file__).resolve().parents[2] / ".gpu" / "openpose_frames.npz"
FRAMES = list(range(0, 200, 20))  # the frames of the saved file


@pytest.fixture(scope="module")
def frames(request: pytest.FixtureRequest) -> list[tuple[np.ndarray, np.ndarray]]:
    """(heatmaps, pafs) of 10 real street-video frames: the saved model outputs where present (GPU
    machines have no OpenVINO), else computed by the original runtime from the shared data."""
    if SAVED.is_file():
        saved = np.load(SAVED)
        return list(zip(saved["heatmaps"], saved["pafs"], strict=True))
    data_dir = request.getfixturevalue("data_dir")
    openpose_ir = pytest.importorskip("openpose_ir")
    pytest.importorskip("openvino")
    return [openpose_ir.run_ir(data_dir, frame)[:2] for frame in openpose_ir.read_frames(data_dir, FRAMES)]


def _numpy_of(values: tuple) -> tuple:
    keypoints, scores, person, details = (
        v.cpu().numpy() if isinstance(v, torch.Tensor) else v for v in values
    )
    return keypoints, scores, person, details


def assert_same_people(reference: tuple, candidate: tuple) -> None:
    ref_kp, ref_scores, ref_person, ref_details = reference
    kp, scores, person, details = _numpy_of(candidate)
    np.testing.assert_array_equal(details.peak_counts.cpu().numpy(), ref_details.peak_counts)
    assert kp.shape == ref_kp.shape
    np.testing.assert_allclose(kp, ref_kp, atol=1e-3)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)
    np.testing.assert_allclose(person, ref_person, atol=1e-4)
    np.testing.assert_array_equal(details.num_keypoints.cpu().numpy(), ref_details.num_keypoints)
    np.testing.assert_allclose(details.openpose_scores.cpu().numpy(), ref_details.openpose_scores, atol=1e-4)


# ----------------------------------------------------------------------------------- CPU: static path
@pytest.mark.parametrize("refine", [False, True])
def test_static_decoder_gives_the_reference_people_on_all_saved_frames(frames, refine: bool) -> None:
    for heatmaps, pafs in frames:
        reference = decode_bottomup(heatmaps, pafs, refine=refine, return_details=True)
        assert len(reference[0]) >= 5
        candidate = decode_bottomup(torch.from_numpy(heatmaps), torch.from_numpy(pafs), refine=refine,
                                    decoder="static", return_details=True)  # fmt: skip
        assert candidate[3].decoder == "static" and candidate[3].fallback is None
        assert_same_people(reference, candidate)


def test_static_peaks_are_the_first_k_in_row_major_order(frames) -> None:
    heatmaps, _ = frames[8]
    cfg = BottomUpConfig(refine=True)
    reference = find_peaks_numpy(heatmaps[:18], cfg)
    for max_peaks in (32, 5):
        peaks, counts = paf_gpu.find_peaks_static(torch.from_numpy(heatmaps[:18]), cfg, max_peaks)
        assert peaks.shape == (18, max_peaks, 3)
        np.testing.assert_array_equal(counts.numpy(), [len(p) for p in reference])  # never capped
        for kind, expected in enumerate(reference):
            kept = min(len(expected), max_peaks)
            np.testing.assert_allclose(peaks[kind, :kept].numpy(), expected[:kept], atol=1e-4)
            assert not peaks[kind, kept:].any()  # padding is zero


def test_peak_overflow_is_detected_and_decoded_exactly(frames) -> None:
    heatmaps, pafs = frames[8]  # up to 12 peaks of one type
    static = decode_static(torch.from_numpy(heatmaps[:18]), torch.from_numpy(pafs), BottomUpConfig(),
                           StaticLimits(max_peaks=4))  # fmt: skip
    assert static.info[1] == 1  # the overflow flag, set on the device
    reference = decode_bottomup(heatmaps, pafs, return_details=True)
    candidate = decode_bottomup(torch.from_numpy(heatmaps), torch.from_numpy(pafs), decoder="static",
                                max_peaks=4, return_details=True)  # fmt: skip
    assert candidate[3].decoder == "dynamic"
    assert "overflow" in candidate[3].fallback and "max_peaks=4" in candidate[3].fallback
    assert_same_people(reference, candidate)


def test_too_few_matching_rounds_fall_back_exactly(frames) -> None:
    cfg = BottomUpConfig()
    fallbacks = 0
    for heatmaps, pafs in frames[:4]:
        heatmaps_t, pafs_t = torch.from_numpy(heatmaps[:18]), torch.from_numpy(pafs)
        candidate = decode_static_or_fallback(heatmaps_t, pafs_t, cfg, StaticLimits(match_rounds=1),
                                              use_graph=False)  # fmt: skip
        if candidate[3].fallback is not None:
            assert "matching" in candidate[3].fallback and candidate[3].decoder == "dynamic"
            fallbacks += 1
        assert_same_people(decode_bottomup(heatmaps, pafs, return_details=True), candidate)
    assert fallbacks >= 1  # one round is not enough on real frames (they need 1-3)


@pytest.mark.parametrize("seed", range(4))
def test_fixed_round_matching_equals_sorted_greedy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, size=(19, 9, 7)).astype(np.float32)  # many ties on purpose
    scores[rng.random(scores.shape) < 0.3] = -np.inf
    partner, unconverged = paf_gpu.greedy_match_static(torch.from_numpy(scores), rounds=7)
    assert not bool(unconverged)  # min(Ka, Kb) rounds always suffice
    for limb in range(19):
        expected = {(b, a) for a, b, _ in paf._greedy_match_numpy(scores[limb])}
        assert {(b, int(a)) for b, a in enumerate(partner[limb]) if a >= 0} == expected
    # a chain of rows each preferring the column its predecessor takes needs one round per pair
    chain = torch.full((1, 4, 4), -torch.inf)
    for i in range(4):
        chain[0, i, i] = 10.0 - 2 * i
        if i + 1 < 4:
            chain[0, i + 1, i] = 9.0 - 2 * i
    assert bool(paf_gpu.greedy_match_static(chain, rounds=2)[1])
    assert not bool(paf_gpu.greedy_match_static(chain, rounds=4)[1])


def test_static_decoder_on_empty_and_tiny_maps() -> None:
    keypoints, scores, person, details = decode_bottomup(
        torch.zeros(19, 8, 8), torch.zeros(38, 8, 8), decoder="static", return_details=True
    )
    assert keypoints.shape == (0, 17, 2) and scores.shape == (0, 17) and person.shape == (0,)
    assert details.decoder == "static" and int(details.peak_counts.sum()) == 0
    # fewer pixels than max_peaks: the capacity shrinks to the map
    heatmaps = torch.zeros(19, 2, 2)
    heatmaps[:, 0, 0] = 1.0
    out = decode_bottomup(heatmaps, torch.zeros(38, 2, 2), upsample=1, decoder="static", max_peaks=64,
                          return_details=True)  # fmt: skip
    assert out[3].peak_counts.tolist() == [1] * 18 and out[3].fallback is None


def test_decoder_choice_and_bad_options() -> None:
    heatmaps, pafs = torch.zeros(19, 8, 8), torch.zeros(38, 8, 8)
    assert decode_bottomup(heatmaps, pafs, return_details=True)[3].decoder == "dynamic"  # auto on CPU
    assert decode_bottomup(heatmaps, pafs, decoder="graph", return_details=True)[3].decoder == "static"
    assert decode_bottomup(heatmaps.numpy(), pafs.numpy(), return_details=True)[3].decoder == "numpy"
    with pytest.raises(RtposeError, match="decoder"):
        decode_bottomup(heatmaps, pafs, decoder="fast")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(RtposeError, match="max_peaks"):
            decode_bottomup(heatmaps, pafs, max_peaks=bad)
    with pytest.raises(RtposeError, match="match_rounds"):
        decode_static_or_fallback(heatmaps[:18], pafs, BottomUpConfig(), StaticLimits(match_rounds=0),
                                  use_graph=False)  # fmt: skip


@pytest.mark.slow
def test_static_decode_compiles_as_one_graph(frames) -> None:
    """torch.compile(fullgraph=True) traces the static decode without a break and keeps its results (the
    CPU build of the graph that the "compiled" decoder captures on CUDA; about 20-40 s of compiling)."""
    heatmaps, pafs = torch.from_numpy(frames[3][0][:18]), torch.from_numpy(frames[3][1])
    cfg, limits = BottomUpConfig(), StaticLimits()
    matrices = paf_gpu.upsampling_matrices(heatmaps, cfg)
    with torch.no_grad():
        compiled = paf_gpu.compiled_decode_static()(heatmaps, pafs, cfg, limits, matrices)
        eager = decode_static(heatmaps, pafs, cfg, limits, matrices)
    assert compiled.info.tolist() == eager.info.tolist()
    people = int(eager.info[0])
    assert people >= 5
    torch.testing.assert_close(compiled.people[:people], eager.people[:people], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------- GPU: CUDA graphs
@pytest.mark.gpu
@pytest.mark.parametrize("refine", [False, True])
def test_cuda_graph_gives_the_reference_people_on_all_saved_frames(frames, refine: bool) -> None:
    for heatmaps, pafs in frames:
        reference = decode_bottomup(heatmaps, pafs, refine=refine, return_details=True)
        candidate = decode_bottomup(torch.from_numpy(heatmaps).cuda(), torch.from_numpy(pafs).cuda(),
                                    refine=refine, decoder="graph", return_details=True)  # fmt: skip
        assert candidate[0].is_cuda and candidate[3].decoder == "graph", candidate[3]
        assert_same_people(reference, candidate)


@pytest.mark.gpu
@pytest.mark.slow
def test_compiled_cuda_graph_gives_the_reference_people_on_all_saved_frames(frames) -> None:
    for heatmaps, pafs in frames:
        reference = decode_bottomup(heatmaps, pafs, return_details=True)
        candidate = decode_bottomup(torch.from_numpy(heatmaps).cuda(), torch.from_numpy(pafs).cuda(),
                                    decoder="compiled", return_details=True)  # fmt: skip
        assert candidate[3].decoder == "compiled", candidate[3]
        assert_same_people(reference, candidate)


@pytest.mark.gpu
def test_cuda_graph_replays_give_fresh_results(frames) -> None:
    """Replays with other inputs of the same shape: new people each time, earlier results untouched."""
    paf_gpu.clear_captured()
    on_gpu = [(torch.from_numpy(h).cuda(), torch.from_numpy(p).cuda()) for h, p in frames]
    references = [decode_bottomup(h, p, return_details=True) for h, p in frames]
    kept = [decode_bottomup(h, p, decoder="graph", return_details=True) for h, p in on_gpu]
    assert len(paf_gpu._captured) == 1  # one capture for the shape, replayed for every frame
    for reference, candidate in zip(references, kept, strict=True):
        assert_same_people(reference, candidate)  # still right after all later replays
    again = decode_bottomup(*on_gpu[3], decoder="graph", return_details=True)
    assert_same_people(references[3], again)
    # another shape (a narrower image) gets its own graph
    narrow = [(np.ascontiguousarray(h[..., :40]), np.ascontiguousarray(p[..., :40])) for h, p in frames[:2]]
    for heatmaps, pafs in narrow:
        candidate = decode_bottomup(torch.from_numpy(heatmaps).cuda(), torch.from_numpy(pafs).cuda(),
                                    decoder="graph", return_details=True)  # fmt: skip
        assert candidate[3].decoder == "graph"
        assert_same_people(decode_bottomup(heatmaps, pafs, return_details=True), candidate)
    assert len(paf_gpu._captured) == 2


@pytest.mark.gpu
def test_cuda_graph_overflow_falls_back_exactly(frames) -> None:
    heatmaps, pafs = frames[8]
    candidate = decode_bottomup(torch.from_numpy(heatmaps).cuda(), torch.from_numpy(pafs).cuda(),
                                decoder="graph", max_peaks=4, return_details=True)  # fmt: skip
    assert candidate[3].decoder == "dynamic" and "overflow" in candidate[3].fallback
    assert_same_people(decode_bottomup(heatmaps, pafs, return_details=True), candidate)


@pytest.mark.gpu
def test_cuda_static_eager_matches_the_graph(frames) -> None:
    heatmaps, pafs = (torch.from_numpy(v).cuda() for v in frames[5])
    eager = decode_bottomup(heatmaps, pafs, decoder="static", return_details=True)
    graph = decode_bottomup(heatmaps, pafs, decoder="graph", return_details=True)
    assert eager[3].decoder == "static" and graph[3].decoder == "graph"
    for a, b in zip(eager[:3], graph[:3], strict=True):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------------- benchmark
def test_benchmark_checks_every_decoder_against_numpy(frames, tmp_path: Path) -> None:
    from rtpose.benchmarks.postprocess_bench import bench_bottomup

    npz = tmp_path / "frames.npz"
    np.savez(npz, heatmaps=np.stack([f[0] for f in frames[:2]]), pafs=np.stack([f[1] for f in frames[:2]]))
    report = bench_bottomup(npz, "cpu", repeats=1, warmup=0, max_peaks=6)
    assert report["decoders"] == ["dynamic", "static"] and len(report["frames"]) == 2
    assert report["all_same_people"]
    # frame 0 has 9 peaks of one type: the cap of 6 sends it to the dynamic path, and the report says so
    assert report["frames"][0]["static"]["fallback"].startswith("peak overflow")
    assert report["summary"]["static"]["fallbacks"] >= 1
    assert report["summary"]["numpy"]["median_of_frame_medians_ms"] > 0
