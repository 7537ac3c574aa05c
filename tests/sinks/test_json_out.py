"""JSON sinks: round trips, atomic replacement, stdout."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from rtpose.errors import RtposeError
from rtpose.sinks import JsonlWriter, to_jsonable, write_json, write_jsonl
from rtpose.types import ImageResult, Person


def _result(name: str = "a.jpg") -> ImageResult:
    person = Person(
        bbox=np.array([10, 20, 110, 220], np.float32),
        score=np.float32(0.875),
        keypoints=np.arange(34, dtype=np.float32).reshape(17, 2),
        keypoint_scores=np.linspace(0, 1, 17, dtype=np.float32),
        track_id=4,
    )
    return ImageResult(file=name, width=640, height=480, people=[person, Person(bbox=np.zeros(4), score=0.1)])


def test_json_round_trip_of_results(tmp_path: Path) -> None:
    results = [_result("a.jpg"), ImageResult(file="b.jpg", error="corrupt")]
    path = tmp_path / "out.json"
    write_json(results, path)
    loaded = json.loads(path.read_text())
    assert loaded == [r.to_json() for r in results]
    first = loaded[0]["people"][0]
    assert first["id"] == 4 and first["bbox"] == [10.0, 20.0, 100.0, 200.0]
    assert first["keypoints"][1] == [2.0, 3.0, pytest.approx(1 / 16, abs=1e-4)]
    assert "keypoints" not in loaded[0]["people"][1]
    assert loaded[1]["error"] == "corrupt"
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_numpy_values_become_plain_json() -> None:
    value = {"a": np.float32(1.5), "b": np.arange(3), "c": (1, np.int64(2)), 5: Path("x/y")}
    assert to_jsonable(value) == {"a": 1.5, "b": [0, 1, 2], "c": [1, 2], "5": "x/y"}


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    write_json({"AP": 0.5}, path)
    with pytest.raises(RtposeError, match="JSON"):
        write_json({"AP": float("nan")}, path)  # NaN is not JSON: refused before anything is written
    with pytest.raises(RtposeError, match="JSON"):
        write_json({"x": object()}, path)
    assert json.loads(path.read_text()) == {"AP": 0.5}  # the old file is intact
    assert os.listdir(tmp_path) == ["metrics.json"]

    def failing_records():
        yield {"frame": 0}
        raise RuntimeError("stream broke")

    with pytest.raises(RuntimeError):
        write_jsonl(failing_records(), tmp_path / "frames.jsonl")
    assert os.listdir(tmp_path) == ["metrics.json"]  # a half-written JSONL never appears


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RtposeError, match="does not exist"):
        write_json({}, tmp_path / "no" / "such" / "file.json")


def test_dash_means_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    write_json({"x": 1}, "-")
    assert json.loads(capsys.readouterr().out) == {"x": 1}
    assert write_jsonl([_result(), {"y": 2}], "-") == 2
    lines = capsys.readouterr().out.splitlines()
    assert json.loads(lines[0]) == _result().to_json() and json.loads(lines[1]) == {"y": 2}


def test_jsonl_file_and_streaming_writer(tmp_path: Path) -> None:
    path = tmp_path / "frames.jsonl"
    assert write_jsonl(({"frame": i} for i in range(3)), path) == 3
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"frame": i} for i in range(3)]
    with JsonlWriter(path, append=True) as writer:
        writer.write(_result())
        # each line is on disk as soon as it is written
        assert json.loads(path.read_text().splitlines()[-1]) == _result().to_json()
    assert writer.count == 1 and len(path.read_text().splitlines()) == 4
    with JsonlWriter(tmp_path / "new" / "dir" / "x.jsonl") as writer:  # missing folders are made
        writer.write({"frame": 0})
    assert (tmp_path / "new" / "dir" / "x.jsonl").read_text() == '{"frame": 0}\n'
    (tmp_path / "a_file").write_text("")
    with pytest.raises(RtposeError, match="cannot open"):
        JsonlWriter(tmp_path / "a_file" / "x.jsonl")


def _reference_to_jsonable(value: object) -> object:
    """`to_jsonable` as it was before its fast paths: one generic call per value."""
    if hasattr(value, "to_json") and callable(value.to_json):
        return _reference_to_jsonable(value.to_json())
    if isinstance(value, dict):
        return {str(k): _reference_to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_reference_to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and callable(value.tolist):
        return _reference_to_jsonable(value.tolist())
    return value


def _reference_keypoints(person: Person) -> list[list[float]]:
    """`Person.to_json()["keypoints"]` as it was: Python's round() on every number."""
    scores = person.keypoint_scores if person.keypoint_scores is not None else np.ones(len(person.keypoints))
    return [
        [round(float(x), 2), round(float(y), 2), round(float(s), 4)]
        for (x, y), s in zip(person.keypoints, scores, strict=True)
    ]


class _Scored(dict):
    def to_json(self) -> dict:
        return {"kind": "scored", **self}


def test_to_jsonable_fast_paths_match_the_generic_walk() -> None:
    value = {
        "people": [_result().people[0], {"nested": (1, 2.5, None, True, "x")}],
        1: np.float32(0.1),
        2.5: [np.int64(3), np.arange(3), Path("a/b"), _Scored(a=np.float64(2.0))],
        None: (),
    }
    assert to_jsonable(value) == _reference_to_jsonable(value)
    assert json.dumps(to_jsonable(value)) == json.dumps(_reference_to_jsonable(value))


def test_vectorised_keypoint_rounding_equals_python_round() -> None:
    rng = np.random.default_rng(0)
    for i in range(300):
        scale = 10.0 ** rng.uniform(-1, 4)
        keypoints = rng.uniform(-1, 1, (17, 2)) * scale
        if i % 3 == 0:  # exact halves of the last kept decimal: round half to even must agree
            keypoints = np.round(keypoints * 8) / 8
        scores = rng.uniform(0, 1, 17)
        if i % 4 == 0:
            scores = np.round(scores * 2**14) / 2**14
        dtype = [np.float32, np.float16, np.float64][i % 3]
        person = Person(np.zeros(4, np.float32), 0.5, keypoints.astype(dtype), scores.astype(dtype))
        assert repr(person.to_json()["keypoints"]) == repr(_reference_keypoints(person))
    no_scores = Person(np.zeros(4), 0.5, np.full((17, 2), 2.675, np.float32))
    assert no_scores.to_json()["keypoints"] == _reference_keypoints(no_scores)
    with pytest.raises(ValueError):
        Person(np.zeros(4), 0.5, np.zeros((17, 2), np.float32), np.zeros(16, np.float32)).to_json()


def test_plain_jsonl_lines_equal_converted_ones(tmp_path: Path) -> None:
    from rtpose.pipelines.video import FrameResult

    record = FrameResult("cam", 3, 0.123456, _result().people).to_json()
    record["extra"] = [np.float32(0.5), np.int64(2)]  # leftovers are still converted
    with JsonlWriter(tmp_path / "a.jsonl") as a, JsonlWriter(tmp_path / "b.jsonl") as b:
        a.write(record)
        b.write(record, plain=True)
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
