"""COCO keypoint AP/AR of a pipeline, scored by pycocotools exactly as MMPose's `CocoMetric` does.

Per image: run the pipeline (on the chosen person boxes for top-down pipelines), rescore every person
(box score x mean of its keypoint scores above 0.2), drop duplicates with OKS-NMS (threshold 0.9), then
score all images with `COCOeval(..., "keypoints")` and the COCO-17 sigmas.

OKS-NMS needs an object area per pose. MMPose uses the area of the padded crop (`bbox_scales`: the box
grown by 1.25 and widened or heightened to the model's aspect ratio) for top-down models, and the
keypoints' extent when no box exists (bottom-up). We do the same from `Person.bbox`; the aspect ratio fix
uses the model's input aspect ratio (W / H), taken from `nms_area_aspect_ratio` or else from the
pipeline's `pose_spec.input_size` (H, W) when it has one; padding from its `bbox_padding` (else 1.25).

Image bookkeeping: images of the annotation file missing from `images_dir` are left out of the scoring
(counted in `num_missing`); images that are present but fail to decode stay in the scoring with no
predictions (their people count as missed) and are listed in `failed`, so a broken file lowers AP
instead of silently disappearing.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rtpose.errors import ImageDecodeError, RtposeError
from rtpose.evaluation.box_sources import PERSON_CATEGORY_ID, load_box_source
from rtpose.postprocess.pose_nms import COCO_SIGMAS, oks_nms
from rtpose.types import ImageResult, Person

logger = logging.getLogger(__name__)

#: pycocotools `COCOeval.stats` order for keypoints, under our metric names.
STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
#: keypoints with a score at or below this do not count in the rescoring mean (MMPose `keypoint_score_thr`)
RESCORE_KPT_THR = 0.2
#: MMPose's top-down box padding, used for the OKS-NMS area
BBOX_PADDING = 1.25


def rescore_person(person: Person, kpt_score_thr: float = RESCORE_KPT_THR) -> float:
    """MMPose `bbox_keypoint` score: box score x mean of the keypoint scores above `kpt_score_thr`.

    A person with no keypoint above the threshold scores 0 (MMPose keeps the mean at 0 then). Scores are
    compared in float64, as MMPose compares its float32 scores with a Python float: float32(0.2) counts.
    """
    if person.keypoints is None:
        return float(person.score)
    kpt_scores = _keypoint_scores(person)
    confident = kpt_scores[kpt_scores > kpt_score_thr]
    mean = float(confident.mean()) if confident.size else 0.0
    return float(person.score) * mean


def _keypoint_scores(person: Person) -> np.ndarray:
    assert person.keypoints is not None
    if person.keypoint_scores is None:
        return np.ones(len(person.keypoints), dtype=np.float64)
    return np.asarray(person.keypoint_scores, dtype=np.float64).reshape(-1)


def _result_entry(image_id: int, person: Person, score: float) -> dict:
    assert person.keypoints is not None
    xy = np.asarray(person.keypoints, dtype=np.float64).reshape(-1, 2)
    kpt_scores = _keypoint_scores(person)
    if len(kpt_scores) != len(xy):
        raise RtposeError(f"image {image_id}: a person has {len(xy)} keypoints but {len(kpt_scores)} scores")
    flat = np.concatenate([xy, kpt_scores[:, None]], axis=1).reshape(-1)
    return {
        "image_id": int(image_id),
        "category_id": PERSON_CATEGORY_ID,
        "keypoints": [float(v) for v in flat],
        "score": float(score),
    }


def people_to_coco_results(
    image_id: int, people: Iterable[Person], *, rescore: bool = True, kpt_score_thr: float = RESCORE_KPT_THR
) -> list[dict]:
    """COCO keypoint results of one image: {image_id, category_id 1, keypoints [x, y, v]*K, score}.

    v is the keypoint score. score is the MMPose rescored value with `rescore=True`, else the box score.
    People without keypoints are skipped (nothing to score).
    """
    results = []
    for person in people:
        if person.keypoints is None:
            continue
        score = rescore_person(person, kpt_score_thr) if rescore else float(person.score)
        results.append(_result_entry(image_id, person, score))
    return results


def nms_area(
    person: Person, *, bottom_up: bool, aspect_ratio: float | None = None, padding: float = BBOX_PADDING
) -> float:
    """The object area OKS-NMS normalises by, as MMPose's `CocoMetric` gets it (module docstring)."""
    if bottom_up or person.bbox is None:
        assert person.keypoints is not None
        xy = np.asarray(person.keypoints, dtype=np.float64).reshape(-1, 2)
        extent = xy.max(axis=0) - xy.min(axis=0)
        return float(extent[0] * extent[1])
    x1, y1, x2, y2 = (float(v) for v in person.bbox)
    width, height = (x2 - x1) * padding, (y2 - y1) * padding
    if aspect_ratio is not None:
        if width > height * aspect_ratio:
            height = width / aspect_ratio
        else:
            width = height * aspect_ratio
    return width * height


def pose_nms_people(
    people: Sequence[Person],
    scores: Sequence[float],
    *,
    thr: float,
    bottom_up: bool,
    aspect_ratio: float | None = None,
    padding: float = BBOX_PADDING,
    sigmas: np.ndarray = COCO_SIGMAS,
) -> list[int]:
    """Indices of `people` (all with keypoints) that survive OKS-NMS, in descending score order."""
    if len(people) <= 1:
        return list(range(len(people)))
    keypoints = np.stack([np.asarray(p.keypoints, dtype=np.float64).reshape(-1, 2) for p in people])
    areas = np.array(
        [nms_area(p, bottom_up=bottom_up, aspect_ratio=aspect_ratio, padding=padding) for p in people]
    )
    return [int(i) for i in oks_nms(keypoints, None, np.asarray(scores), areas, thr=thr, sigmas=sigmas)]


def _load_coco(ann_file: str | os.PathLike[str]) -> Any:
    from pycocotools.coco import COCO

    path = Path(ann_file)
    if not path.is_file():
        raise RtposeError(f"annotation file not found: {path}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools chatters on stdout
            coco = COCO(str(path))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AssertionError) as exc:
        raise RtposeError(f"{path} is not a COCO annotation file ({type(exc).__name__}: {exc})") from None
    if "annotations" not in coco.dataset or not coco.getImgIds():
        raise RtposeError(f"{path} has no images or no annotations to evaluate against")
    return coco


def _num_keypoints(coco: Any) -> int:
    category = coco.cats.get(PERSON_CATEGORY_ID, {})
    names = category.get("keypoints")
    return len(names) if names else len(COCO_SIGMAS)


def _empty_results_coco(coco_gt: Any) -> Any:
    from pycocotools.coco import COCO

    empty = COCO()
    empty.dataset = {
        "images": coco_gt.dataset["images"],
        "categories": coco_gt.dataset.get("categories", []),
        "annotations": [],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        empty.createIndex()
    return empty


def evaluate_results(
    ann_file: str | os.PathLike[str] | Any,
    coco_results: Sequence[dict],
    *,
    image_ids: Iterable[int] | None = None,
    sigmas: np.ndarray | None = None,
    print_summary: bool = True,
) -> dict[str, float]:
    """Score COCO keypoint results against `ann_file` (a path or a loaded pycocotools COCO).

    image_ids: the images that were evaluated (default: all of the annotation file); ground truth of
    other images is not counted. Returns {AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl}; prints
    pycocotools' summary table when `print_summary`.
    """
    from pycocotools.cocoeval import COCOeval

    coco_gt = ann_file if hasattr(ann_file, "loadRes") else _load_coco(ann_file)
    num_kpts = _num_keypoints(coco_gt)
    known_ids = set(coco_gt.getImgIds())
    for index, result in enumerate(coco_results):
        if result.get("image_id") not in known_ids:
            raise RtposeError(
                f"result {index}: image_id {result.get('image_id')!r} is not in the annotation file"
            )
        if len(result.get("keypoints", ())) != 3 * num_kpts:
            raise RtposeError(
                f"result {index}: expected {3 * num_kpts} keypoint values (x, y, v) * {num_kpts}"
            )
    if sigmas is None:
        if num_kpts != len(COCO_SIGMAS):
            raise RtposeError(f"{num_kpts} keypoints per person: give their OKS sigmas (COCO has 17)")
        sigmas = COCO_SIGMAS
    with contextlib.redirect_stdout(io.StringIO()):
        # loadRes adds ids, boxes and areas to the dicts it gets: hand it copies.
        coco_dt = (
            coco_gt.loadRes(copy.deepcopy(list(coco_results)))
            if coco_results
            else _empty_results_coco(coco_gt)
        )
        coco_eval = COCOeval(coco_gt, coco_dt, "keypoints")
        coco_eval.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        if image_ids is not None:
            coco_eval.params.imgIds = sorted({int(i) for i in image_ids})
        coco_eval.evaluate()
        coco_eval.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        coco_eval.summarize()
    if print_summary:
        print(summary.getvalue(), end="")
    return {name: float(value) for name, value in zip(STAT_NAMES, coco_eval.stats, strict=True)}


def _is_bottom_up(pipeline: Any, bottom_up: bool | None) -> bool:
    if bottom_up is not None:
        return bottom_up
    return not callable(getattr(pipeline, "predict_on_boxes", None))


def _crop_geometry(pipeline: Any, aspect_ratio: float | None) -> tuple[float | None, float]:
    """(aspect ratio W / H, box padding) of the pipeline's pose crops, for the OKS-NMS area."""
    padding = getattr(pipeline, "bbox_padding", BBOX_PADDING)
    padding = float(padding) if isinstance(padding, int | float) else BBOX_PADDING
    if aspect_ratio is None:
        input_size = getattr(getattr(pipeline, "pose_spec", None), "input_size", None)
        if isinstance(input_size, tuple | list) and len(input_size) == 2 and input_size[0] > 0:
            aspect_ratio = float(input_size[1]) / float(input_size[0])
    return aspect_ratio, padding


def _as_people(output: Any) -> list[Person]:
    if isinstance(output, ImageResult):
        if output.error is not None:
            raise ImageDecodeError(output.error)
        return list(output.people)
    return list(output)


def evaluate(
    pipeline: Any,
    ann_file: str | os.PathLike[str],
    images_dir: str | os.PathLike[str],
    *,
    boxes: str | os.PathLike[str] | None = None,
    progress: bool = True,
    metrics_path: str | os.PathLike[str] | None = None,
    oks_nms_thr: float | None = 0.9,
    bottom_up: bool | None = None,
    nms_area_aspect_ratio: float | None = None,
    images_with_boxes_only: bool = False,
) -> dict[str, Any]:
    """COCO keypoint AP/AR of `pipeline` on the images of `ann_file` found in `images_dir`.

    pipeline: a top-down pipeline (`predict_on_boxes(image, boxes_xyxy, scores)` and `__call__(image)`)
        or a bottom-up one (`__call__(image)` only); both return `list[Person]` (or an `ImageResult`).
    boxes: for top-down pipelines "gt" (default), "det" (the pipeline's detector) or a COCO detection
        result file. Bottom-up pipelines ignore it (with a warning when one is given).
    oks_nms_thr: OKS-NMS threshold per image; None turns the NMS off.
    bottom_up: force the pipeline kind; None decides by whether it has `predict_on_boxes`.
    nms_area_aspect_ratio: the pose model's input W / H, for MMPose's aspect-corrected NMS area; default:
        from `pipeline.pose_spec.input_size` when present.
    images_with_boxes_only: score only the images the box source has at least one box for. Use it with a
        detection file that covers only part of the annotation file (the shared AP-56 file covers 32 of
        the 60 subset images); otherwise the people of uncovered images count as missed.

    Returns the metrics of `evaluate_results` plus num_images, num_missing, num_failed, failed,
    num_people (predictions scored), num_gt_people, seconds (decode + inference + NMS), boxes, bottom_up.
    """
    from tqdm import tqdm

    from rtpose.decode.image import decode_image

    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise RtposeError(f"image folder not found: {images_dir}")
    coco = _load_coco(ann_file)
    is_bottom_up = _is_bottom_up(pipeline, bottom_up)
    if is_bottom_up:
        if boxes is not None:
            logger.warning("bottom-up pipeline: boxes=%r is ignored (it finds people on its own)", str(boxes))
        box_source, boxes_label = None, "none (bottom-up)"
    else:
        boxes_label = str(boxes) if boxes is not None else "gt"
        box_source = load_box_source(boxes if boxes is not None else "gt", coco)

    image_ids = sorted(int(i) for i in coco.getImgIds())
    if box_source is not None:
        uncovered = [i for i in image_ids if len(box_source[i][0]) == 0]
        if images_with_boxes_only:
            image_ids = [i for i in image_ids if len(box_source[i][0]) > 0]
        elif uncovered and boxes is not None and str(boxes) != "gt":
            logger.warning(
                "the box source has no box for %d of %d images; their people count as missed "
                "(images_with_boxes_only=True scores only the others)",
                len(uncovered),
                len(image_ids),
            )
    present = [(i, images_dir / coco.imgs[i]["file_name"]) for i in image_ids]
    missing = [i for i, path in present if not path.is_file()]
    present = [(i, path) for i, path in present if path.is_file()]
    if not present:
        raise RtposeError(f"none of the {len(image_ids)} images of {ann_file} is in {images_dir}")
    if missing:
        logger.warning(
            "%d of %d annotated images are not in %s; they are left out",
            len(missing),
            len(image_ids),
            images_dir,
        )

    aspect_ratio, padding = _crop_geometry(pipeline, nms_area_aspect_ratio)
    coco_results: list[dict] = []
    failed: list[str] = []
    started = time.perf_counter()
    for image_id, path in tqdm(present, desc="evaluating", unit="img", disable=not progress):
        try:
            image = decode_image(path)
            if box_source is None:
                people = _as_people(pipeline(image))
            else:
                image_boxes, image_scores = box_source[image_id]
                people = (
                    _as_people(pipeline.predict_on_boxes(image, image_boxes, image_scores))
                    if len(image_boxes)
                    else []
                )
        except ImageDecodeError as exc:
            failed.append(f"{path.name}: {exc}")
            continue
        people = [p for p in people if p.keypoints is not None and len(p.keypoints) > 0]
        scores = [rescore_person(p) for p in people]
        keep = (
            pose_nms_people(
                people,
                scores,
                thr=oks_nms_thr,
                bottom_up=is_bottom_up,
                aspect_ratio=aspect_ratio,
                padding=padding,
            )
            if oks_nms_thr is not None
            else range(len(people))
        )
        coco_results.extend(_result_entry(image_id, people[k], scores[k]) for k in keep)
    seconds = time.perf_counter() - started
    for message in failed:
        logger.warning("could not evaluate %s", message)

    evaluated_ids = [i for i, _ in present]
    metrics: dict[str, Any] = dict(evaluate_results(coco, coco_results, image_ids=evaluated_ids))
    gt_anns = coco.loadAnns(coco.getAnnIds(imgIds=evaluated_ids, iscrowd=False))
    metrics.update(
        num_images=len(evaluated_ids), num_missing=len(missing), num_failed=len(failed), failed=failed,
        num_people=len(coco_results), num_gt_people=sum(1 for a in gt_anns if a.get("num_keypoints", 0) > 0),
        seconds=round(seconds, 3), boxes=boxes_label, bottom_up=is_bottom_up,
    )  # fmt: skip
    print(
        f"{len(evaluated_ids)} images ({len(failed)} failed to decode, {len(missing)} missing), "
        f"{len(coco_results)} people, {seconds:.1f} s"
    )
    if metrics_path is not None:
        from rtpose.sinks.json_out import write_json

        write_json(metrics, metrics_path)
    return metrics
