"""COCO evaluation on the real 60-image val subset, with fake pipelines whose right answer is known."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
from coco_fakes import LABELLED_SCORE, FakeBottomUp, FakeTopDown
from pycocotools.coco import COCO

from rtpose.errors import RtposeError
from rtpose.evaluation import (
    STAT_NAMES,
    evaluate,
    evaluate_results,
    load_box_source,
    nms_area,
    people_to_coco_results,
    rescore_person,
)
from rtpose.types import Person

NUM_VAL_IMAGES = 60
NUM_VAL_PEOPLE_WITH_KEYPOINTS = 123  # MANIFEST.md: 246 person annotations, 123 with num_keypoints > 0
DET_FILE = "manhph2211_COCO_val2017_detections_AP_H_56_person_first1000imgs.json"


@pytest.fixture(scope="module")
def coco_gt(coco_val: tuple[Path, Path]) -> COCO:
    return COCO(str(coco_val[0]))


@pytest.fixture(scope="module")
def det_file(data_dir: Path) -> Path:
    return data_dir / "coco" / "annotations" / "sources" / DET_FILE


def test_ground_truth_as_prediction_scores_ap_one(
    coco_val: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ann_file, images_dir = coco_val
    pipeline = FakeTopDown(ann_file)
    metrics_path = tmp_path / "metrics.json"
    metrics = evaluate(pipeline, ann_file, images_dir, boxes="gt", progress=False, metrics_path=metrics_path)
    assert metrics["AP"] == 1.0 and metrics["AP50"] == 1.0 and metrics["AP75"] == 1.0
    assert metrics["AR"] == 1.0
    assert (
        metrics["num_images"] == NUM_VAL_IMAGES and metrics["num_failed"] == 0 and metrics["num_missing"] == 0
    )
    assert metrics["num_people"] == NUM_VAL_PEOPLE_WITH_KEYPOINTS == metrics["num_gt_people"]
    assert metrics["bottom_up"] is False and metrics["boxes"] == "gt"
    # images whose GT has no person with keypoints get no boxes, so the pipeline is not even called
    assert 0 < pipeline.calls <= NUM_VAL_IMAGES
    assert json.loads(metrics_path.read_text()) == metrics
    table = capsys.readouterr().out
    assert re.search(
        r"Average Precision +\(AP\) @\[ IoU=0.50:0.95 \| area= +all \| maxDets= *20 \] = +1.000", table
    )


def test_noisy_keypoints_score_lower_the_more_noise(coco_val: tuple[Path, Path]) -> None:
    ann_file, images_dir = coco_val
    ap = {}
    for noise in (0.01, 0.05):
        metrics = evaluate(FakeTopDown(ann_file, noise=noise, seed=1), ann_file, images_dir, progress=False)
        ap[noise] = metrics["AP"]
    assert 1.0 > ap[0.01] > ap[0.05] > 0.0, ap


def test_oks_nms_removes_duplicate_poses(coco_val: tuple[Path, Path]) -> None:
    ann_file, images_dir = coco_val
    with_nms = evaluate(FakeTopDown(ann_file, duplicate=True), ann_file, images_dir, progress=False)
    without = evaluate(
        FakeTopDown(ann_file, duplicate=True), ann_file, images_dir, progress=False, oks_nms_thr=None
    )
    assert with_nms["num_people"] == NUM_VAL_PEOPLE_WITH_KEYPOINTS
    assert without["num_people"] == 2 * NUM_VAL_PEOPLE_WITH_KEYPOINTS
    assert with_nms["AP"] == 1.0


def test_bottom_up_pipeline_ignores_boxes_with_a_warning(
    coco_val: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    ann_file, images_dir = coco_val
    pipeline = FakeBottomUp(ann_file, images_dir)
    with caplog.at_level(logging.WARNING, logger="rtpose.evaluation.coco"):
        metrics = evaluate(pipeline, ann_file, images_dir, boxes="gt", progress=False)
    assert "ignored" in caplog.text
    assert metrics["bottom_up"] is True
    assert metrics["AP"] == 1.0 and metrics["num_people"] == NUM_VAL_PEOPLE_WITH_KEYPOINTS


def test_detection_file_boxes_drive_the_top_down_pipeline(
    coco_val: tuple[Path, Path], det_file: Path
) -> None:
    ann_file, images_dir = coco_val
    covered = evaluate(
        FakeTopDown(ann_file),
        ann_file,
        images_dir,
        boxes=det_file,
        progress=False,
        images_with_boxes_only=True,
    )
    everything = evaluate(FakeTopDown(ann_file), ann_file, images_dir, boxes=det_file, progress=False)
    # GT poses on detected boxes: every person the detector finds is exact; misses and false positives
    # (random poses on unmatched boxes) cost AP
    assert covered["num_images"] == 32 and everything["num_images"] == NUM_VAL_IMAGES
    assert 0.8 < covered["AP"] < 1.0
    # the people of the 28 images the file does not cover count as missed
    assert everything["AR"] < 0.7 * covered["AR"]
    assert covered["boxes"] == str(det_file)


def test_missing_and_undecodable_images_are_reported(
    coco_val: tuple[Path, Path], coco_gt: COCO, tmp_path: Path
) -> None:
    ann_file, images_dir = coco_val
    image_ids = sorted(coco_gt.getImgIds())
    images = tmp_path / "images"
    images.mkdir()
    for image_id in image_ids[:3]:
        name = coco_gt.imgs[image_id]["file_name"]
        os.symlink(images_dir / name, images / name)
    (images / coco_gt.imgs[image_ids[3]]["file_name"]).write_bytes(b"not a jpeg")
    metrics = evaluate(FakeTopDown(ann_file), ann_file, images, progress=False)
    assert metrics["num_images"] == 4
    assert metrics["num_missing"] == NUM_VAL_IMAGES - 4
    assert metrics["num_failed"] == 1 and coco_gt.imgs[image_ids[3]]["file_name"] in metrics["failed"][0]
    broken_has_people = any(a["num_keypoints"] > 0 for a in coco_gt.imgToAnns[image_ids[3]])
    assert (metrics["AR"] < 1.0) == broken_has_people


def test_bad_inputs_raise_clear_errors(coco_val: tuple[Path, Path], tmp_path: Path) -> None:
    ann_file, images_dir = coco_val
    with pytest.raises(RtposeError, match="annotation file not found"):
        evaluate(FakeTopDown(ann_file), tmp_path / "nope.json", images_dir, progress=False)
    with pytest.raises(RtposeError, match="image folder not found"):
        evaluate(FakeTopDown(ann_file), ann_file, tmp_path / "nope", progress=False)
    with pytest.raises(RtposeError, match="none of the"):
        evaluate(FakeTopDown(ann_file), ann_file, tmp_path, progress=False)
    not_coco = tmp_path / "bad.json"
    not_coco.write_text("{ nope")
    with pytest.raises(RtposeError, match="not a COCO annotation file"):
        evaluate(FakeTopDown(ann_file), not_coco, images_dir, progress=False)


def test_gt_box_source_follows_mmpose(coco_gt: COCO) -> None:
    source = load_box_source("gt", coco_gt)
    assert set(source) == set(coco_gt.getImgIds())
    assert sum(len(b) for b, _ in source.values()) == NUM_VAL_PEOPLE_WITH_KEYPOINTS
    for image_id, (boxes, scores) in source.items():
        info = coco_gt.imgs[image_id]
        assert boxes.dtype == np.float32 and scores.dtype == np.float32
        assert np.all(scores == 1.0)
        assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= info["width"] - 1)
        assert np.all(boxes[:, 3] <= info["height"] - 1)
    assert load_box_source("det", coco_gt) is None


def test_detection_file_is_read_for_our_images_only(coco_gt: COCO, det_file: Path) -> None:
    source = load_box_source(det_file, coco_gt)
    assert set(source) == set(coco_gt.getImgIds())
    raw = json.loads(det_file.read_text())
    ours = [d for d in raw if d["image_id"] in coco_gt.imgs and d["category_id"] == 1]
    assert len(raw) > 10 * len(ours) > 0  # the file covers far more images than the subset
    assert sum(len(b) for b, _ in source.values()) == len(ours)
    all_scores = np.concatenate([s for _, s in source.values()])
    assert np.all((all_scores > 0) & (all_scores <= 1))
    # the file covers the first 1000 val images only: 32 of our 60
    covered = [i for i, (boxes, _) in source.items() if len(boxes)]
    assert len(covered) == 32
    # xywh -> xyxy done right: on covered images the AP-56 detector finds nearly every annotated person
    gt = load_box_source("gt", coco_gt)
    found = total = 0
    for image_id in covered:
        det_boxes = source[image_id][0]
        for box in gt[image_id][0]:
            total += 1
            if len(det_boxes):
                inter_wh = np.clip(
                    np.minimum(box[2:], det_boxes[:, 2:]) - np.maximum(box[:2], det_boxes[:, :2]), 0, None
                )
                inter = inter_wh.prod(axis=1)
                union = (
                    (box[2:] - box[:2]).prod() + (det_boxes[:, 2:] - det_boxes[:, :2]).prod(axis=1) - inter
                )
                found += bool((inter / union).max() >= 0.5)
    assert found / total > 0.9, (found, total)


def test_detection_file_errors(coco_gt: COCO, tmp_path: Path) -> None:
    with pytest.raises(RtposeError, match="'gt', 'det'"):
        load_box_source(tmp_path / "missing.json", coco_gt)
    bad = tmp_path / "dets.json"
    bad.write_text(json.dumps({"image_id": 1}))
    with pytest.raises(RtposeError, match="JSON list"):
        load_box_source(bad, coco_gt)
    bad.write_text(json.dumps([{"image_id": 1, "bbox": [1, 2]}]))
    with pytest.raises(RtposeError, match="entry 0"):
        load_box_source(bad, coco_gt)


def _person(box_score: float, kpt_scores: list[float]) -> Person:
    k = len(kpt_scores)
    xy = np.arange(2 * k, dtype=np.float32).reshape(k, 2)
    return Person(
        bbox=np.array([0, 0, 10, 20], np.float32),
        score=box_score,
        keypoints=xy,
        keypoint_scores=np.array(kpt_scores, np.float32),
    )


def test_rescoring_by_hand() -> None:
    # keypoints above 0.2: 0.9, 0.5, 0.7 (0.19 and 0.1 do not count) -> mean 0.7; x box 0.8 = 0.56
    person = _person(0.8, [0.9, 0.1, 0.5, 0.19, 0.7])
    assert rescore_person(person) == pytest.approx(0.8 * (0.9 + 0.5 + 0.7) / 3)
    assert rescore_person(_person(0.8, [0.1, 0.15, 0.05])) == 0.0  # nothing confident: score 0, as MMPose
    # float32(0.2) is 0.2000000030 > 0.2: it counts, as it does in MMPose (float32 scores vs a Python float)
    assert rescore_person(_person(0.5, [0.2, 0.1])) == pytest.approx(0.5 * 0.2)
    (result,) = people_to_coco_results(7, [person])
    assert result["image_id"] == 7 and result["category_id"] == 1
    assert result["score"] == pytest.approx(0.56)
    assert result["keypoints"][:6] == pytest.approx([0, 1, 0.9, 2, 3, 0.1])
    assert len(result["keypoints"]) == 15
    (plain,) = people_to_coco_results(7, [person], rescore=False)
    assert plain["score"] == pytest.approx(0.8)
    box_only = Person(bbox=np.array([0, 0, 5, 5], np.float32), score=0.9)
    assert people_to_coco_results(7, [box_only]) == []


def test_nms_area_follows_mmpose() -> None:
    person = _person(1.0, [1.0] * 3)  # box 10 x 20
    assert nms_area(person, bottom_up=False) == pytest.approx(12.5 * 25)
    # aspect ratio W/H 0.75: 12.5 < 25 * 0.75 -> width widened to 18.75
    assert nms_area(person, bottom_up=False, aspect_ratio=0.75) == pytest.approx(18.75 * 25)
    # bottom-up: extent of the keypoints (0..4, 1..5)
    assert nms_area(person, bottom_up=True) == pytest.approx(4 * 4)


def test_evaluate_results_direct(coco_val: tuple[Path, Path], coco_gt: COCO) -> None:
    ann_file, _ = coco_val
    empty = evaluate_results(ann_file, [], print_summary=False)
    assert set(empty) == set(STAT_NAMES)
    assert empty["AP"] == 0.0 and empty["AR"] == 0.0
    # one image, its exact ground truth: perfect when scored on that image only, low over all images
    image_id = next(
        i
        for i in sorted(coco_gt.getImgIds())
        if any(a["num_keypoints"] > 0 and not a["iscrowd"] for a in coco_gt.imgToAnns[i])
    )
    results = [
        {"image_id": image_id, "category_id": 1, "keypoints": a["keypoints"], "score": LABELLED_SCORE}
        for a in coco_gt.imgToAnns[image_id]
        if a["num_keypoints"] > 0 and not a["iscrowd"]
    ]
    assert evaluate_results(coco_gt, results, image_ids=[image_id], print_summary=False)[
        "AP"
    ] == pytest.approx(1.0)
    assert evaluate_results(coco_gt, results, print_summary=False)["AR"] < 0.5
    with pytest.raises(RtposeError, match="not in the annotation file"):
        evaluate_results(coco_gt, [{**results[0], "image_id": -5}], print_summary=False)
    with pytest.raises(RtposeError, match="keypoint values"):
        evaluate_results(coco_gt, [{**results[0], "keypoints": [1.0, 2.0, 1.0]}], print_summary=False)
