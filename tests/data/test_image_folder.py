"""The image-folder loader: classes from sub-folders, square crops, range, and clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from difflab.data.image_folder import load_image_folder


def test_classes_from_subfolders_and_centre_crop(tmp_path: Path) -> None:
    (tmp_path / "cats").mkdir()
    (tmp_path / "dogs").mkdir()
    wide = np.zeros((20, 40, 3), dtype=np.uint8)
    wide[:, 6:34] = 255  # a white band a little wider than the centre square the crop keeps
    Image.fromarray(wide).save(tmp_path / "cats" / "a.png")
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "dogs" / "b.jpg")
    data = load_image_folder(tmp_path, resolution=8)
    assert data.images.shape == (2, 3, 8, 8)
    assert data.class_names == ("cats", "dogs") and data.labels.tolist() == [0, 1]
    assert data.images[0].min() > 0.9 and data.images[1].max() < -0.9  # white -> 1, black -> -1


def test_grey_and_errors(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 8), 128, dtype=np.uint8)).save(tmp_path / "x.png")
    data = load_image_folder(tmp_path, resolution=8, channels=1)
    assert data.images.shape == (1, 1, 8, 8) and data.class_names == ("",)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        load_image_folder(tmp_path, resolution=8)
    with pytest.raises(ValueError, match="does not exist"):
        load_image_folder(tmp_path / "missing", resolution=8)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        load_image_folder(empty, resolution=8)
