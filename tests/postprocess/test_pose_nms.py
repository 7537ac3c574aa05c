"""OKS-NMS: hand-checked cases, the MMPose formula, and the torch matrix form against the NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtpose.errors import RtposeError
from rtpose.postprocess.pose_nms import COCO_SIGMAS, oks_iou, oks_nms, oks_nms_torch


def _random_poses(rng: np.random.Generator, n: int, k: int = 17) -> tuple[np.ndarray, ...]:
    """Clusters of near-duplicate poses, so that NMS has real work (chains of suppression included)."""
    centres = rng.uniform(50, 400, size=(max(1, n // 4), 1, 2))
    base = centres + rng.normal(0, 30, size=(len(centres), k, 2))
    owner = rng.integers(0, len(base), size=n)
    jitter_scale = rng.choice([0.5, 2.0, 6.0], size=(n, 1, 1))
    keypoints = base[owner] + rng.normal(0, 1, size=(n, k, 2)) * jitter_scale
    kpt_scores = rng.uniform(0, 1, size=(n, k))
    scores = rng.uniform(0, 1, size=n)
    areas = rng.uniform(2000, 20000, size=n)
    return keypoints, kpt_scores, scores, areas


def test_oks_iou_matches_the_formula_by_hand() -> None:
    ref = np.zeros((17, 2))
    other = np.zeros((1, 17, 2))
    other[0, 0] = (3.0, 4.0)  # nose 5 px away; every other keypoint identical
    area = 100.0
    e_nose = 25.0 / (2 * COCO_SIGMAS[0]) ** 2 / (area + np.spacing(1)) / 2
    expected = (16 + np.exp(-e_nose)) / 17
    got = oks_iou(ref, other, area, np.array([area]))
    assert got.shape == (1,)
    assert got[0] == pytest.approx(expected, rel=1e-12)


def test_oks_iou_vis_thr_uses_only_keypoints_visible_in_both() -> None:
    ref = np.zeros((17, 2))
    other = np.full((1, 17, 2), 1000.0)  # every keypoint far away ...
    other[0, 5] = ref[5]  # ... except the left shoulder
    ref_scores = np.full(17, 0.9)
    other_scores = np.full((1, 17), 0.1)
    other_scores[0, 5] = 0.9
    assert oks_iou(ref, other, 500.0, np.array([500.0]))[0] < 0.1
    visible_only = oks_iou(
        ref,
        other,
        500.0,
        np.array([500.0]),
        kpt_scores=ref_scores,
        other_kpt_scores=other_scores,
        vis_thr=0.2,
    )
    assert visible_only[0] == pytest.approx(1.0)
    # no keypoint visible on both sides: OKS 0, as in MMPose
    none_visible = oks_iou(
        ref,
        other,
        500.0,
        np.array([500.0]),
        kpt_scores=np.zeros(17),
        other_kpt_scores=other_scores,
        vis_thr=0.2,
    )
    assert none_visible[0] == 0.0


def test_oks_nms_keeps_distinct_people_and_drops_duplicates() -> None:
    rng = np.random.default_rng(0)
    person_a = rng.uniform(100, 200, size=(17, 2))
    person_b = person_a + 150.0  # far away: a different person
    duplicate_a = person_a + 0.5  # the same person found twice
    keypoints = np.stack([duplicate_a, person_a, person_b])
    scores = np.array([0.7, 0.9, 0.8])
    areas = np.full(3, 100.0 * 100.0)
    keep = oks_nms(keypoints, None, scores, areas, thr=0.9)
    assert keep.tolist() == [1, 2]  # descending score order; the weaker copy of A is gone
    # with a threshold above the duplicate's OKS, all three survive
    oks_dup = oks_iou(person_a, duplicate_a[None], areas[0], areas[:1])[0]
    assert 0.9 < oks_dup < 1.0
    assert oks_nms(keypoints, None, scores, areas, thr=float(oks_dup) + 1e-6).tolist() == [1, 2, 0]


def test_oks_nms_is_greedy_not_transitive() -> None:
    """A suppresses B, B would suppress C, but A does not: greedy NMS keeps A and C."""
    base = np.zeros((17, 2))
    step = 2.0
    poses = np.stack([base, base + step, base + 2 * step])
    areas = np.full(3, 40.0 * 40.0)
    ab = oks_iou(poses[0], poses[1:2], areas[0], areas[:1])[0]
    ac = oks_iou(poses[0], poses[2:3], areas[0], areas[:1])[0]
    thr = (ab + ac) / 2  # A-B above, A-C below
    assert ac < thr < ab
    keep = oks_nms(poses, None, np.array([0.9, 0.8, 0.7]), areas, thr=thr)
    assert keep.tolist() == [0, 2]
    torch_keep = oks_nms_torch(
        torch.from_numpy(poses), None, torch.tensor([0.9, 0.8, 0.7]), torch.from_numpy(areas), thr=thr
    )
    assert torch_keep.tolist() == [0, 2]


def test_oks_nms_empty_and_bad_shapes() -> None:
    assert oks_nms(np.zeros((0, 17, 2)), None, np.zeros(0), np.zeros(0)).tolist() == []
    assert oks_nms_torch(torch.zeros(0, 17, 2), None, torch.zeros(0), torch.zeros(0)).numel() == 0
    with pytest.raises(RtposeError, match="shape"):
        oks_nms(np.zeros((3, 17)), None, np.zeros(3), np.zeros(3))
    with pytest.raises(RtposeError, match="scores"):
        oks_nms(np.zeros((3, 17, 2)), None, np.zeros(2), np.zeros(3))
    with pytest.raises(RtposeError, match="sigmas"):
        oks_nms(np.zeros((3, 5, 2)), None, np.zeros(3), np.zeros(3))
    with pytest.raises(RtposeError, match="vis_thr"):
        oks_nms(np.zeros((3, 17, 2)), None, np.zeros(3), np.ones(3), vis_thr=0.2)


@pytest.mark.parametrize("vis_thr", [None, 0.3])
@pytest.mark.parametrize("thr", [0.5, 0.9])
def test_torch_matrix_nms_agrees_with_numpy_reference(vis_thr: float | None, thr: float) -> None:
    rng = np.random.default_rng(42)
    for trial in range(30):
        n = int(rng.integers(1, 40))
        keypoints, kpt_scores, scores, areas = _random_poses(rng, n)
        if trial % 5 == 0:
            scores = np.round(scores, 1)  # ties in score
        expected = oks_nms(keypoints, kpt_scores, scores, areas, thr=thr, vis_thr=vis_thr)
        got = oks_nms_torch(
            torch.from_numpy(keypoints),
            torch.from_numpy(kpt_scores),
            torch.from_numpy(scores),
            torch.from_numpy(areas),
            thr=thr,
            vis_thr=vis_thr,
        )
        assert got.dtype == torch.int64
        assert got.tolist() == expected.tolist(), f"trial {trial}"


@pytest.mark.gpu
@pytest.mark.parametrize("vis_thr", [None, 0.3])
def test_torch_matrix_nms_on_cuda_agrees_with_numpy_reference(vis_thr: float | None) -> None:
    rng = np.random.default_rng(7)
    for trial in range(30):
        n = int(rng.integers(1, 120))
        keypoints, kpt_scores, scores, areas = _random_poses(rng, n)
        expected = oks_nms(keypoints, kpt_scores, scores, areas, thr=0.9, vis_thr=vis_thr)
        got = oks_nms_torch(
            torch.from_numpy(keypoints).cuda(),
            torch.from_numpy(kpt_scores).cuda(),
            torch.from_numpy(scores).cuda(),
            torch.from_numpy(areas).cuda(),
            thr=0.9,
            vis_thr=vis_thr,
        )
        assert got.device.type == "cuda"
        assert got.cpu().tolist() == expected.tolist(), f"trial {trial}"
    # float32 on the GPU (what a pipeline uses) keeps the same poses on data away from the threshold
    keypoints, kpt_scores, scores, areas = _random_poses(np.random.default_rng(8), 60)
    expected = oks_nms(keypoints, kpt_scores, scores, areas, thr=0.9)
    got32 = oks_nms_torch(
        torch.from_numpy(keypoints).float().cuda(),
        None,
        torch.from_numpy(scores).float().cuda(),
        torch.from_numpy(areas).float().cuda(),
        thr=0.9,
    )
    assert got32.cpu().tolist() == expected.tolist()


def _reference_oks_iou(
    keypoints: np.ndarray,
    others: np.ndarray,
    area: float,
    other_areas: np.ndarray,
    kpt_scores: np.ndarray,
    other_kpt_scores: np.ndarray,
    vis_thr: float | None,
) -> np.ndarray:
    """One pose against many, the former `oks_iou` body."""
    variances = (2.0 * COCO_SIGMAS) ** 2
    sq_dist = ((others - keypoints[None]) ** 2).sum(axis=2)
    mean_area = (float(area) + other_areas) / 2.0 + float(np.spacing(1))
    similarity = np.exp(-(sq_dist / variances[None] / mean_area[:, None] / 2.0))
    if vis_thr is None:
        return similarity.mean(axis=1)
    visible = (kpt_scores[None] > vis_thr) & (other_kpt_scores > vis_thr)
    counts = visible.sum(axis=1)
    return np.where(counts > 0, (similarity * visible).sum(axis=1) / np.maximum(counts, 1), 0.0)


def _reference_oks_nms(
    keypoints: np.ndarray,
    kpt_scores: np.ndarray,
    scores: np.ndarray,
    areas: np.ndarray,
    thr: float,
    vis_thr: float | None,
) -> list[int]:
    """Greedy NMS with one `oks_iou` per kept pose, as MMPose (and formerly `oks_nms`) does."""
    order = np.argsort(scores, kind="stable")[::-1]
    keep = []
    while len(order) > 0:
        best, rest = int(order[0]), order[1:]
        keep.append(best)
        overlap = _reference_oks_iou(
            keypoints[best],
            keypoints[rest],
            areas[best],
            areas[rest],
            kpt_scores[best],
            kpt_scores[rest],
            vis_thr,
        )
        order = rest[overlap <= thr]
    return keep


@pytest.mark.parametrize("full_matrix_max", [256, 3])
@pytest.mark.parametrize("vis_thr", [None, 0.3])
def test_matrix_oks_and_nms_equal_the_pose_by_pose_reference(
    full_matrix_max: int, vis_thr: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rtpose.postprocess import pose_nms

    monkeypatch.setattr(pose_nms, "_FULL_MATRIX_MAX", full_matrix_max)
    rng = np.random.default_rng(6)
    for n in [1, 2, 5, 12, 40]:
        keypoints, kpt_scores, scores, areas = _random_poses(rng, n)
        got = oks_iou(keypoints[0], keypoints, areas[0], areas, kpt_scores=kpt_scores[0],
                      other_kpt_scores=kpt_scores, vis_thr=vis_thr)  # fmt: skip
        want = _reference_oks_iou(
            keypoints[0], keypoints, areas[0], areas, kpt_scores[0], kpt_scores, vis_thr
        )
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=0)
        for thr in (0.3, 0.7, 0.9):
            kept = oks_nms(keypoints, kpt_scores, scores, areas, thr=thr, vis_thr=vis_thr).tolist()
            assert kept == _reference_oks_nms(keypoints, kpt_scores, scores, areas, thr, vis_thr)
