"""openpose-lite: our PyTorch lightweight OpenPose, its OpenVINO IR importer, and parity with OpenVINO.

Numbers on all 60 images: `python tests/models/openpose_lite_parity.py` (see that module).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from rtpose.errors import EngineError, WeightsError
from rtpose.models.fake_quantize import fake_quantize
from rtpose.models.loading.openvino_ir import load_openvino_ir
from rtpose.models.loading.openvino_ir_graph import fake_quantize_np, read_ir
from rtpose.models.openpose_lite import OPENPOSE_LITE, OpenPoseLite, build_openpose_lite
from rtpose.models.spec import get_spec

from openpose_lite_parity import (  # isort: skip
    OpenVinoRunner, ParityStats, coco_images, fit_height, load_ours, normalise, ours_outputs,
    raw_batch,
)  # fmt: skip

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="module")
def openpose_images(data_dir: Path) -> list[np.ndarray]:
    return coco_images(data_dir, 3)


@pytest.fixture(scope="module")
def openpose_models(openpose_ir_xml: Path) -> dict[str, OpenPoseLite]:
    fake_quantize = load_ours(openpose_ir_xml, True)
    fake_quantize.set_int8_emulation(True, "fake-quantize")
    return {
        "float": load_ours(openpose_ir_xml, False),
        "int8-emulation": load_ours(openpose_ir_xml, True),  # OpenVINO's INT8 CPU execution
        "int8-fake-quantize": fake_quantize,
    }


# -- the network and its spec -----------------------------------------------------------------------


def test_spec_is_registered_with_what_the_decoder_needs() -> None:
    spec = get_spec("openpose-lite")
    assert spec is OPENPOSE_LITE
    assert (spec.task, spec.family, spec.input_size, spec.channel_order) == (
        "pose-bottomup",
        "openpose-lite",
        (256, 456),
        "BGR",
    )
    assert spec.weights[0].format == "openvino-ir" and spec.weights[0].url is None
    extra = spec.extra
    assert (
        extra["stride"] == 8
        and extra["num_keypoints"] == 18
        and extra["output_names"] == ("heatmaps", "pafs")
    )
    assert len(extra["limbs"]) == len(extra["paf_channels"]) == 19
    assert sorted(c for pair in extra["paf_channels"] for c in pair) == list(range(38))
    assert sorted(extra["coco17_from_openpose18"]) == sorted(set(range(18)) - {1})  # all but the neck


def test_network_is_fully_convolutional_and_has_the_official_size() -> None:
    model = build_openpose_lite().eval()
    assert sum(p.numel() for p in model.parameters()) == 4_099_058  # OMZ: 4.099 M
    with torch.no_grad():
        heatmaps, pafs = model(torch.randn(2, 3, 64, 96))
    assert heatmaps.shape == (2, 19, 8, 12) and pafs.shape == (2, 38, 8, 12)


@pytest.mark.parametrize("shape", [(1, 3, 60, 96), (1, 1, 64, 96), (3, 64, 96)])
def test_bad_network_input_is_an_engine_error(shape: tuple[int, ...]) -> None:
    with pytest.raises(EngineError, match="multiples of 8"):
        build_openpose_lite()(torch.zeros(shape))


def test_int8_emulation_without_ranges_is_refused() -> None:
    with pytest.raises(WeightsError, match="INT8"):
        build_openpose_lite().set_int8_emulation(True)


# -- FakeQuantize -----------------------------------------------------------------------------------


def _fq_cases() -> list[tuple[np.ndarray, int, list[np.ndarray]]]:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 2, (2, 4, 5, 6)).astype(np.float32)
    low = np.array([-1.5, 0.0, -0.25, 0.1], np.float32).reshape(1, 4, 1, 1)
    high = np.array([1.5, 3.0, 0.5, 0.1], np.float32).reshape(1, 4, 1, 1)  # last channel: zero-width range
    per_channel = [low, high, low * 2, high * 3]
    per_tensor = [np.float32(-0.505859375), np.float32(0.501953125)] * 2
    # values exactly on the range ends and on rounding midpoints
    x[0, 0, 0, :3] = [-1.5, 1.5, -1.5 + 3.0 / 255 * 0.5]
    return [
        (x, 256, per_channel),
        (x, 255, per_tensor),
        (x, 16, [np.float32(0), np.float32(2), np.float32(-1), np.float32(1)]),
    ]


@pytest.mark.parametrize("case", range(3))
def test_fake_quantize_torch_numpy_and_openvino_agree(case: int) -> None:
    x, levels, ranges = _fq_cases()[case]
    ours = fake_quantize(torch.from_numpy(x), levels, *(torch.as_tensor(r) for r in ranges)).numpy()
    np.testing.assert_array_equal(ours, fake_quantize_np(x, levels, *ranges))
    assert np.isfinite(ours).all()
    # OpenVINO's CPU kernel computes x * scale + shift: on exact rounding midpoints it may round the
    # other way, and a zero-width range gives it NaN; compare on random values and proper ranges.
    ov = pytest.importorskip("openvino")
    opset = ov.opset1
    x = np.random.default_rng(case).normal(0, 2, (1, 3, 16, 16)).astype(np.float32)
    ranges = [r[:, :3] if np.ndim(r) == 4 else r for r in ranges]
    parameter = opset.parameter(x.shape, ov.Type.f32)
    node = opset.fake_quantize(
        parameter, *(opset.constant(np.asarray(r, np.float32)) for r in ranges), levels
    )
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    theirs = ov.Core().compile_model(ov.Model([node], [parameter]), "CPU", config)(x)[0]
    ours = fake_quantize(torch.from_numpy(x), levels, *(torch.as_tensor(r) for r in ranges)).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


# -- the importer -----------------------------------------------------------------------------------


def test_loader_reads_the_int8_ir_and_its_input_normalisation(openpose_ir_xml: Path) -> None:
    report = load_openvino_ir(build_openpose_lite(), openpose_ir_xml)
    assert report.ir_version == 10 and report.num_convolutions == 58
    assert report.num_activation_fq == 63 and report.num_weight_fq == 58
    assert report.const_element_types["u8"] == 58
    assert report.outputs == {
        "Mconv7_stage2_L1": "refinement_stages.0.pafs.1",
        "Mconv7_stage2_L2": "refinement_stages.0.heatmaps.1",
    }
    assert not report.int8_emulation
    # the IR's x * scale + shift is the spec's (x - mean) / std up to the f16 rounding of 1/255
    scale, shift = report.input_scale.ravel(), report.input_shift.ravel()
    np.testing.assert_allclose(scale * np.asarray(OPENPOSE_LITE.std), 1.0, rtol=5e-4)
    np.testing.assert_allclose(-shift / scale, OPENPOSE_LITE.mean, rtol=1e-6)


def test_spec_normalisation_gives_the_irs_int8_input(openpose_ir_xml: Path) -> None:
    """For every 0..255 pixel the spec's (x-128)/255 and the IR's own constants quantise alike."""
    model = load_ours(openpose_ir_xml, True)
    report = load_openvino_ir(build_openpose_lite(), openpose_ir_xml)
    pixels = np.arange(256, dtype=np.float32).reshape(1, 1, 1, 256).repeat(3, axis=1)
    ir_input = torch.from_numpy(
        pixels * report.input_scale.reshape(1, -1, 1, 1) + report.input_shift.reshape(1, -1, 1, 1)
    )
    with torch.no_grad():
        np.testing.assert_array_equal(
            model.input_quant(normalise(pixels)).numpy(), model.input_quant(ir_input).numpy()
        )


def test_emulation_switch_changes_the_output(openpose_ir_xml: Path) -> None:
    model = load_ours(openpose_ir_xml, False)
    x = torch.randn(1, 3, 64, 64) * 0.3
    with torch.no_grad():
        plain = model(x)[0]
        model.set_int8_emulation(True)
        assert model.int8_emulation
        emulated = model(x)[0]
        model.set_int8_emulation(False)
        again = model(x)[0]
    assert not torch.equal(plain, emulated)
    torch.testing.assert_close(plain, again, rtol=0, atol=0)


def _copy_ir(openpose_ir_xml: Path, folder: Path, bin_bytes: int | None = None, edit=None) -> Path:
    xml = folder / openpose_ir_xml.name
    text = openpose_ir_xml.read_text()
    xml.write_text(edit(text) if edit else text)
    data = openpose_ir_xml.with_suffix(".bin").read_bytes()
    if bin_bytes != 0:
        xml.with_suffix(".bin").write_bytes(data if bin_bytes is None else data[:bin_bytes])
    return xml


def test_missing_bin_is_a_weights_error(openpose_ir_xml: Path, tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"\.bin must lie beside"):
        load_openvino_ir(build_openpose_lite(), _copy_ir(openpose_ir_xml, tmp_path, bin_bytes=0))


def test_truncated_bin_is_a_weights_error(openpose_ir_xml: Path, tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="truncated"):
        load_openvino_ir(build_openpose_lite(), _copy_ir(openpose_ir_xml, tmp_path, bin_bytes=1_000_000))


def test_not_an_ir_is_a_weights_error(tmp_path: Path) -> None:
    xml = tmp_path / "broken.xml"
    xml.write_text("<net><layers>")
    xml.with_suffix(".bin").write_bytes(b"")
    with pytest.raises(WeightsError, match="not a readable IR"):
        read_ir(xml)


def test_ir_that_does_not_fit_is_a_weights_error(openpose_ir_xml: Path, tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="blocks"):
        load_openvino_ir(OpenPoseLite(num_refinement_stages=2), openpose_ir_xml)
    # conv1 with stride 1 instead of 2
    changed = _copy_ir(
        openpose_ir_xml, tmp_path, edit=lambda t: t.replace('strides="2,2"', 'strides="1,1"', 1)
    )
    with pytest.raises(WeightsError, match="stride"):
        load_openvino_ir(build_openpose_lite(), changed)


def test_factory_loads_openpose_lite_from_the_ir(
    openpose_ir_xml: Path, openpose_models: dict[str, OpenPoseLite]
) -> None:
    from rtpose.models.factory import load_model

    loaded = load_model("openpose-lite", weights=openpose_ir_xml)
    assert loaded.spec is OPENPOSE_LITE and not loaded.module.training
    assert loaded.module.int8_emulation == OPENPOSE_LITE.extra["int8_emulation"]
    for ours, reference in zip(
        loaded.module.state_dict().values(), openpose_models["float"].state_dict().values(), strict=True
    ):
        torch.testing.assert_close(ours, reference, rtol=0, atol=0)


# -- parity with OpenVINO on real images ------------------------------------------------------------


def _parity(
    model: OpenPoseLite, runner: OpenVinoRunner, images: list[np.ndarray], size=(256, 456)
) -> ParityStats:
    stats = ParityStats()
    for image in images:
        raw = raw_batch([fit_height(image, *size)])
        stats.add(ours_outputs(model, raw), runner(raw), OPENPOSE_LITE.extra["stride"])
    return stats


def test_float_mode_matches_openvino_on_the_float_graph(
    openpose_ir_xml, openpose_models, openpose_images
) -> None:
    pytest.importorskip("openvino")
    stats = _parity(openpose_models["float"], OpenVinoRunner(openpose_ir_xml, 2, "float"), openpose_images)
    assert stats.heatmap_max < 2e-4 and stats.paf_max < 2e-4, stats.summary()
    assert stats.peaks_compared >= 20 and stats.peak_agreement >= 0.99, stats.summary()


def test_float_mode_matches_at_another_input_size(openpose_ir_xml, openpose_models, openpose_images) -> None:
    pytest.importorskip("openvino")
    stats = _parity(
        openpose_models["float"], OpenVinoRunner(openpose_ir_xml, 2, "float"), openpose_images[:1], (368, 640)
    )
    assert stats.heatmap_max < 1e-3 and stats.paf_max < 1e-3, stats.summary()


def test_int8_emulation_follows_openvinos_fake_quantize(
    openpose_ir_xml, openpose_models, openpose_images
) -> None:
    """Against OpenVINO running every FakeQuantize in f32 (low-precision transformations off).

    Not bit-exact: f32 accumulation order differs between the two convolution libraries, and a
    difference of 1e-7 that crosses a rounding boundary moves a value by a whole INT8 step, which then
    spreads. The emulation must still be closer to that oracle than plain float is.
    """
    pytest.importorskip("openvino")
    runner = OpenVinoRunner(openpose_ir_xml, 2, "fq-f32")
    try:
        runner.compiled(256, 456)
    except RuntimeError as e:  # an OpenVINO without the internal LP_TRANSFORMS_MODE property
        pytest.skip(f"OpenVINO cannot switch its low-precision transformations off: {e}")
    emulated = _parity(openpose_models["int8-fake-quantize"], runner, openpose_images[:2])
    plain = _parity(openpose_models["float"], runner, openpose_images[:2])
    assert emulated.heatmap_mean < 4e-4 and emulated.paf_mean < 4e-4, emulated.summary()
    assert emulated.heatmap_max < 0.15 and emulated.paf_max < 0.25, emulated.summary()
    assert emulated.heatmap_mean < plain.heatmap_mean, (emulated.summary(), plain.summary())


def test_every_mode_stays_near_openvinos_int8_runtime(
    openpose_ir_xml, openpose_models, openpose_images
) -> None:
    """OpenVINO's default CPU path (real u8/i8 convolutions) departs from its own FakeQuantize
    semantics by up to ~0.3 (requantisation where it fuses adds and concats); bounds are loose. The
    emulation of that path is 5x closer on average than the FakeQuantize formula."""
    pytest.importorskip("openvino")
    runner = OpenVinoRunner(openpose_ir_xml, 2, "int8")
    stats = {name: _parity(model, runner, openpose_images[:2]) for name, model in openpose_models.items()}
    for name, result in stats.items():
        assert result.heatmap_mean < 3e-3 and result.paf_mean < 3e-3, (name, result.summary())
        assert result.heatmap_max < 0.5 and result.paf_max < 0.5, (name, result.summary())
    emulated, formula = stats["int8-emulation"], stats["int8-fake-quantize"]
    assert emulated.heatmap_mean * 5 < formula.heatmap_mean, (emulated.summary(), formula.summary())
    assert emulated.paf_mean * 5 < formula.paf_mean, (emulated.summary(), formula.summary())


def test_emulation_equals_openvinos_int8_runtime_bit_for_bit(
    openpose_ir_xml, openpose_models, openpose_images
) -> None:
    """The emulation of OpenVINO's INT8 CPU execution gives the runtime's heatmaps and PAFs exactly on
    these three images (OpenVINO 2026.4, AVX-512 VNNI; on all 60 val images 99.3% of decoded keypoints
    are within 1 px: docs/benchmarks.md). A rule of `rtpose.models.openvino_cpu_int8` that drifts from
    the plugin shows up here as a difference."""
    pytest.importorskip("openvino")
    runner = OpenVinoRunner(openpose_ir_xml, 2, "int8")
    model = openpose_models["int8-emulation"]
    for image in openpose_images:
        raw = raw_batch([fit_height(image, 256, 456)])
        for ours, theirs in zip(ours_outputs(model, raw), runner(raw), strict=True):
            np.testing.assert_array_equal(ours, theirs)


def test_heatmap_and_paf_channels_follow_the_spec_on_ground_truth(openpose_models, coco_val) -> None:
    """The keypoint order and limb -> PAF channel table of the spec, checked against COCO annotations."""
    import json

    import cv2

    annotations = json.loads(coco_val[0].read_text())
    images = {im["id"]: im for im in annotations["images"]}
    by_image: dict[int, list[dict]] = {}
    for ann in annotations["annotations"]:
        if ann["num_keypoints"] >= 10 and not ann.get("iscrowd"):
            by_image.setdefault(ann["image_id"], []).append(ann)
    extra = OPENPOSE_LITE.extra
    coco_of = {op: coco for coco, op in enumerate(extra["coco17_from_openpose18"])}
    heat_hits = heat_total = paf_hits = paf_total = 0
    for image_id in sorted(by_image)[:3]:
        image = cv2.imread(str(coco_val[1] / images[image_id]["file_name"]))
        scale = 256 / image.shape[0]
        heatmaps, pafs = ours_outputs(openpose_models["float"], raw_batch([fit_height(image, 256, 456)]))
        for ann in by_image[image_id]:
            kp = np.asarray(ann["keypoints"], np.float32).reshape(17, 3)
            cells = kp[:, :2] * scale / extra["stride"]
            inside = (
                (kp[:, 2] > 0)
                & (cells[:, 0] < heatmaps.shape[3] - 0.5)
                & (cells[:, 1] < heatmaps.shape[2] - 0.5)
            )
            for coco in np.flatnonzero(inside):
                x, y = np.round(cells[coco]).astype(int)
                window = heatmaps[
                    0, extra["coco17_from_openpose18"][coco], max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2
                ]
                heat_hits += int(window.max() > 0.1)
                heat_total += 1
            for (a, b), (cx, cy) in zip(extra["limbs"], extra["paf_channels"], strict=True):
                if a not in coco_of or b not in coco_of or not (inside[coco_of[a]] and inside[coco_of[b]]):
                    continue
                start, end = cells[coco_of[a]], cells[coco_of[b]]
                if np.linalg.norm(end - start) < 2:
                    continue
                direction = (end - start) / np.linalg.norm(end - start)
                points = np.round(start + np.linspace(0.2, 0.8, 5)[:, None] * (end - start)).astype(int)
                field = np.stack(
                    [pafs[0, cx, points[:, 1], points[:, 0]], pafs[0, cy, points[:, 1], points[:, 0]]], 1
                )
                paf_hits += int((field @ direction).mean() > 0.2)
                paf_total += 1
    assert heat_total >= 30 and heat_hits / heat_total > 0.8, (heat_hits, heat_total)
    assert paf_total >= 15 and paf_hits / paf_total > 0.8, (paf_hits, paf_total)


# -- CUDA against the CPU reference -----------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["float", "int8-emulation", "int8-fake-quantize"])
def test_cuda_matches_cpu(mode: str, openpose_models, openpose_images) -> None:
    model = openpose_models[mode]
    x = normalise(raw_batch([fit_height(openpose_images[0], 256, 456)]))
    with torch.no_grad():
        cpu = model(x)
        torch.backends.cudnn.allow_tf32 = False
        gpu_model = copy.deepcopy(model).cuda()  # FakeQuantize ranges are buffers: they move along
        assert gpu_model.int8_emulation == (mode != "float")
        cuda = gpu_model(x.cuda())
    for a, b in zip(cpu, cuda, strict=True):
        diff = (a - b.cpu()).abs()
        if mode == "float":
            assert diff.max() < 1e-3, diff.max()
        elif mode == "int8-emulation":  # integer convolutions in float64: the same codes on both devices
            assert diff.max() < 1e-5, diff.max()
        else:  # float32 convolutions: rounding-boundary flips, as against OpenVINO
            assert diff.mean() < 4e-4 and diff.max() < 0.25, (diff.mean(), diff.max())
