"""expand_sources: files, folders, globs; nothing the user named disappears silently."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtpose.decode.image import decode_image
from rtpose.errors import ImageDecodeError
from rtpose.sources.files import expand_sources


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    (tmp_path / "imgs").mkdir()
    for name in ("b.jpg", "a.PNG", "c.jpeg", "notes.txt"):
        (tmp_path / "imgs" / name).write_bytes(b"x")
    (tmp_path / "imgs" / "sub").mkdir()
    (tmp_path / "imgs" / "sub" / "d.jpg").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    return tmp_path


def test_folder_sorted_images_only_not_recursive(tree: Path) -> None:
    items = expand_sources([tree / "imgs"])
    assert [p.name for p in items] == ["a.PNG", "b.jpg", "c.jpeg"]


def test_glob_and_recursive_glob(tree: Path) -> None:
    assert [p.name for p in expand_sources(str(tree / "imgs" / "*.jp*g"))] == ["b.jpg", "c.jpeg"]
    assert [p.name for p in expand_sources(str(tree / "imgs" / "**" / "*.jpg"))] == ["b.jpg", "d.jpg"]


def test_explicit_file_kept_whatever_extension_and_order_kept(tree: Path) -> None:
    notes = tree / "imgs" / "notes.txt"
    items = expand_sources([notes, tree / "imgs" / "b.jpg", tree / "imgs"])
    assert items == [notes, tree / "imgs" / "b.jpg", tree / "imgs" / "a.PNG", tree / "imgs" / "c.jpeg"]


def test_missing_path_empty_folder_and_empty_glob_become_failing_items(tree: Path) -> None:
    missing = tree / "missing.jpg"
    pattern = str(tree / "imgs" / "*.gif")
    items = expand_sources([missing, tree / "empty", pattern, tree / "imgs" / "b.jpg"])
    assert items == [missing, tree / "empty", Path(pattern), tree / "imgs" / "b.jpg"]
    with pytest.raises(ImageDecodeError, match="file not found"):
        decode_image(items[0])
    with pytest.raises(ImageDecodeError, match="is a folder"):
        decode_image(items[1])
    with pytest.raises(ImageDecodeError, match="file not found"):
        decode_image(items[2])


def test_real_image_folder(coco_val: tuple[Path, Path]) -> None:
    items = expand_sources([coco_val[1]])
    assert len(items) == 60
    assert items == sorted(items)
    assert all(p.suffix == ".jpg" for p in items)
