"""Bottom-up (heatmaps + PAF) decoding: structure tables, synthetic people, torch vs NumPy on real frames."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from rtpose.errors import RtposeError
from rtpose.postprocess import paf
from rtpose.postprocess.paf import (
    COCO_FROM_OPENPOSE,
    NUM_TREE_LIMBS,
    OPENPOSE_KEYPOINT_NAMES,
    OPENPOSE_LIMBS,
    OPENPOSE_PAF_CHANNELS,
    decode_bottomup,
    peak_counts,
)
from rtpose.types import COCO_KEYPOINT_NAMES

torch.set_num_threads(1)
STRIDE = 8


# ----------------------------------------------------------------------------------- tables
def test_coco_mapping_names_match_and_drop_the_neck() -> None:
    assert len(COCO_FROM_OPENPOSE) == 17 and len(set(COCO_FROM_OPENPOSE)) == 17
    assert 1 not in COCO_FROM_OPENPOSE
    assert [OPENPOSE_KEYPOINT_NAMES[i] for i in COCO_FROM_OPENPOSE] == list(COCO_KEYPOINT_NAMES)


def test_tree_limbs_are_breadth_first_from_the_neck() -> None:
    reached = {1}
    for a, b in OPENPOSE_LIMBS[:NUM_TREE_LIMBS]:
        assert a in reached and b not in reached
        reached.add(b)
    assert reached == set(range(18))
    assert sorted(c for pair in OPENPOSE_PAF_CHANNELS for c in pair) == list(range(38))


# ----------------------------------------------------------------------------------- synthetic people
def _paint_person(heatmaps: np.ndarray, pafs: np.ndarray, joints: np.ndarray) -> None:
    """Gaussian peaks and unit-vector PAFs (3 cells wide) at input-pixel joints (18, 2), NaN = absent."""
    height, width = heatmaps.shape[1:]
    gy, gx = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy = gx * STRIDE + STRIDE / 2 - 0.5, gy * STRIDE + STRIDE / 2 - 0.5  # cell centres in input px
    for kind, (x, y) in enumerate(joints):
        if np.isnan(x):
            continue
        heatmaps[kind] = np.maximum(heatmaps[kind], np.exp(-((cx - x) ** 2 + (cy - y) ** 2) / (2 * 7.0**2)))
    for limb, (a, b) in enumerate(OPENPOSE_LIMBS):
        if np.isnan(joints[a, 0]) or np.isnan(joints[b, 0]):
            continue
        vec = joints[b] - joints[a]
        length = np.linalg.norm(vec)
        unit = vec / length
        t = ((cx - joints[a, 0]) * unit[0] + (cy - joints[a, 1]) * unit[1]) / length
        dist = np.abs((cx - joints[a, 0]) * unit[1] - (cy - joints[a, 1]) * unit[0])
        on = (t >= -0.1) & (t <= 1.1) & (dist <= 1.5 * STRIDE)
        cx_ch, cy_ch = OPENPOSE_PAF_CHANNELS[limb]
        pafs[cx_ch][on], pafs[cy_ch][on] = unit[0], unit[1]


def _skeleton(x0: float, y0: float, scale: float) -> np.ndarray:
    # A standing person facing the camera (its right side on the image's left), OpenPose-18 order.
    offsets = [
        (0, -60), (0, -40), (-20, -40), (-28, -10), (-30, 15), (20, -40), (28, -10), (30, 15), (-12, 20),
        (-14, 60), (-15, 100), (12, 20), (14, 60), (15, 100), (-5, -66), (5, -66), (-11, -62), (11, -62),
    ]  # fmt: skip
    return np.array([(x0 + dx * scale, y0 + dy * scale) for dx, dy in offsets], np.float32)


@pytest.fixture(scope="module")
def synthetic() -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    heatmaps = np.zeros((19, 32, 57), np.float32)
    pafs = np.zeros((38, 32, 57), np.float32)
    people = [_skeleton(110, 120, 1.0), _skeleton(300, 130, 0.9)]
    people[1][[3, 4]] = np.nan  # second person: no right elbow / wrist
    for joints in people:
        _paint_person(heatmaps, pafs, joints)
    return heatmaps, pafs, people


@pytest.mark.parametrize("backend", ["numpy", "dynamic", "static"])
def test_synthetic_people_are_found_where_painted(synthetic, backend: str) -> None:
    heatmaps, pafs, people = synthetic
    options = {}
    if backend != "numpy":
        heatmaps, pafs = torch.from_numpy(heatmaps), torch.from_numpy(pafs)
        options["decoder"] = backend
    keypoints, scores, _, details = decode_bottomup(
        heatmaps, pafs, refine=True, return_details=True, **options
    )
    assert details.decoder == backend
    if backend != "numpy":
        keypoints, scores = keypoints.numpy(), scores.numpy()
        details.num_keypoints = details.num_keypoints.numpy()
    assert len(keypoints) == 2
    assert sorted(details.num_keypoints.tolist()) == [16, 18]
    order = np.argsort(keypoints[:, 0, 0])  # left person first
    for person, joints in zip(order, people, strict=True):
        expected = joints[list(COCO_FROM_OPENPOSE)]
        present = ~np.isnan(expected[:, 0])
        assert np.all((scores[person] > 0.5) == present)
        np.testing.assert_allclose(keypoints[person][present], expected[present], atol=1.0)


def test_missing_paf_splits_a_person(synthetic) -> None:
    heatmaps, pafs, _ = synthetic
    cut = pafs.copy()
    for limb in (6, 9):  # neck-hips: the legs are no longer connected to the torso
        cut[list(OPENPOSE_PAF_CHANNELS[limb])] = 0
    _, _, _, details = decode_bottomup(heatmaps, cut, return_details=True)
    assert sorted(details.num_keypoints.tolist()) == [3, 3, 3, 3, 10, 12]  # two legs each, upper bodies


def test_empty_and_bad_inputs() -> None:
    keypoints, scores, person_scores = decode_bottomup(np.zeros((19, 8, 8), np.float32), np.zeros((38, 8, 8)))
    assert keypoints.shape == (0, 17, 2) and scores.shape == (0, 17) and person_scores.shape == (0,)
    keypoints_t, _, _ = decode_bottomup(torch.zeros(1, 19, 8, 8), torch.zeros(1, 38, 8, 8))
    assert keypoints_t.shape == (0, 17, 2) and isinstance(keypoints_t, torch.Tensor)
    with pytest.raises(RtposeError, match="pafs"):
        decode_bottomup(np.zeros((19, 8, 8)), np.zeros((36, 8, 8)))
    with pytest.raises(RtposeError, match="both"):
        decode_bottomup(np.zeros((19, 8, 8)), torch.zeros(38, 8, 8))
    with pytest.raises(RtposeError, match="differ"):
        decode_bottomup(np.zeros((19, 8, 8)), np.zeros((38, 8, 9)))
    with pytest.raises(RtposeError, match="score_mode"):
        decode_bottomup(np.zeros((19, 8, 8)), np.zeros((38, 8, 8)), score_mode="best")


# ----------------------------------------------------------------------------------- matching
@pytest.mark.parametrize("seed", range(5))
def test_matrix_greedy_matching_equals_sorted_greedy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, size=(19, 9, 7)).astype(np.float32)  # many ties on purpose
    scores[rng.random(scores.shape) < 0.3] = -np.inf
    partner = paf._greedy_match_torch(torch.from_numpy(scores)).numpy()
    for limb in range(19):
        expected = {(b, a) for a, b, _ in paf._greedy_match_numpy(scores[limb])}
        got = {(b, a) for b, a in enumerate(partner[limb]) if a >= 0}
        assert got == expected


# ----------------------------------------------------------------------------------- real frames
@pytest.fixture(scope="module")
def real_frames(data_dir: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    openpose_ir = pytest.importorskip("openpose_ir")
    pytest.importorskip("openvino")
    frames = openpose_ir.read_frames(data_dir, [0, 60, 120])
    return [openpose_ir.run_ir(data_dir, frame)[:2] for frame in frames]


def _assert_same_people(reference: tuple, candidate: tuple) -> None:
    ref_kp, ref_scores, ref_person, ref_details = reference
    kp, scores, person, details = (v.cpu().numpy() if isinstance(v, torch.Tensor) else v for v in candidate)
    np.testing.assert_array_equal(details.peak_counts.cpu().numpy(), ref_details.peak_counts)
    assert kp.shape == ref_kp.shape
    np.testing.assert_allclose(kp, ref_kp, atol=1e-3)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)
    np.testing.assert_allclose(person, ref_person, atol=1e-4)
    np.testing.assert_array_equal(details.num_keypoints.cpu().numpy(), ref_details.num_keypoints)


@pytest.mark.parametrize("refine", [False, True])
def test_torch_cpu_gives_the_reference_people_on_real_frames(real_frames, refine: bool) -> None:
    for heatmaps, pafs in real_frames:
        reference = decode_bottomup(heatmaps, pafs, refine=refine, return_details=True)
        assert len(reference[0]) >= 5  # a busy street: several people in every frame
        candidate = decode_bottomup(torch.from_numpy(heatmaps), torch.from_numpy(pafs), refine=refine,
                                    return_details=True)  # fmt: skip
        _assert_same_people(reference, candidate)


@pytest.mark.gpu
@pytest.mark.parametrize("refine", [False, True])
def test_cuda_gives_the_reference_people_on_real_frames(real_frames, refine: bool) -> None:
    for heatmaps, pafs in real_frames:
        reference = decode_bottomup(heatmaps, pafs, refine=refine, return_details=True)
        candidate = decode_bottomup(torch.from_numpy(heatmaps).cuda(), torch.from_numpy(pafs).cuda(),
                                    refine=refine, return_details=True)  # fmt: skip
        assert candidate[0].is_cuda
        _assert_same_people(reference, candidate)


@pytest.mark.gpu
@pytest.mark.parametrize("decoder", ["dynamic", "graph"])
def test_cuda_gives_the_reference_people_on_saved_frames(decoder: str) -> None:
    """Same check from saved model outputs (.gpu/openpose_frames.npz): GPU machines lack OpenVINO."""
    path = Path(__file__).resolve().parents[2] / ".gpu" / "openpose_frames.npz"
    if not path.is_file():
        pytest.skip(f"{path} not present (python tests/openpose_ir.py writes it)")
    saved = np.load(path)
    for heatmaps, pafs in zip(saved["heatmaps"], saved["pafs"], strict=True):
        reference = decode_bottomup(heatmaps, pafs, return_details=True)
        candidate = decode_bottomup(torch.from_numpy(heatmaps).cuda(), torch.from_numpy(pafs).cuda(),
                                    decoder=decoder, return_details=True)  # fmt: skip
        assert candidate[3].decoder == decoder
        _assert_same_people(reference, candidate)


def test_peak_counts_agree(real_frames) -> None:
    heatmaps, pafs = real_frames[0]
    counts = peak_counts(heatmaps)
    np.testing.assert_array_equal(counts, peak_counts(torch.from_numpy(heatmaps)).numpy())
    np.testing.assert_array_equal(counts, decode_bottomup(heatmaps, pafs, return_details=True)[3].peak_counts)
    assert counts.sum() > 50


def test_decoded_people_match_coco_ground_truth(data_dir: Path, coco_val) -> None:
    """On real COCO images the people land on the annotated joints, and left/right are not swapped."""
    openpose_ir = pytest.importorskip("openpose_ir")
    pytest.importorskip("openvino")
    annotation_file, image_dir = coco_val
    coco = json.loads(annotation_file.read_text())
    files = {image["id"]: image["file_name"] for image in coco["images"]}
    people: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        if ann["num_keypoints"] >= 10 and not ann["iscrowd"]:
            people.setdefault(ann["image_id"], []).append(ann)
    flip = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
    hits = flipped_hits = total = 0
    for image_id in sorted(people)[:12]:
        image = cv2.imread(str(image_dir / files[image_id]))
        heatmaps, pafs, scale = openpose_ir.run_ir(data_dir, image)
        keypoints, scores, _ = decode_bottomup(heatmaps, pafs)
        keypoints = keypoints / scale
        for ann in people[image_id]:
            truth = np.array(ann["keypoints"], np.float32).reshape(17, 3)
            visible = truth[:, 2] > 0
            total += int(visible.sum())
            if len(keypoints) == 0:
                continue
            tolerance = 0.1 * np.sqrt(ann["bbox"][2] * ann["bbox"][3])
            dist = np.linalg.norm(keypoints - truth[None, :, :2], axis=2)
            best = int(
                np.argmin(np.where(visible & (scores > 0), np.minimum(dist, tolerance), tolerance).sum(1))
            )
            hits += int(((dist[best] < tolerance) & visible & (scores[best] > 0)).sum())
            flipped = np.linalg.norm(keypoints[best][flip] - truth[:, :2], axis=1)
            flipped_hits += int(((flipped < tolerance) & visible & (scores[best][flip] > 0)).sum())
    assert total > 100
    assert hits / total > 0.45, hits / total
    assert flipped_hits < 0.5 * hits
