"""Images are read as they are meant to be seen: upright by their EXIF orientation, deep images scaled by their
range and never clipped, files that are not regular files refused unopened (issue 28, item 4)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from fcvit.data import ImageFolderDataset, load_image
from fcvit.data.folder import BadImageError, to_8bit

ORIENTATION = 0x0112  # the EXIF tag


def _halves(width: int = 40, height: int = 20) -> Image.Image:
    """Red left half, blue right half."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 2, 0] = 255
    arr[:, width // 2 :, 2] = 255
    return Image.fromarray(arr)


def test_exif_orientation_is_applied(tmp_path):
    """Orientation 6 (a camera held upright): the stored 40 x 20 picture is shown turned 90 degrees clockwise, so
    its left (red) half is on top; and through an ImageFolder as well."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    (tmp_path / "cls").mkdir()
    path = tmp_path / "cls" / "camera.jpg"
    _halves().save(path, exif=exif, quality=95)
    assert Image.open(path).getexif()[ORIENTATION] == 6 and Image.open(path).size == (40, 20)
    for image in (load_image(path), ImageFolderDataset(tmp_path)[0][0]):
        arr = np.asarray(image, dtype=np.int16)
        assert image.size == (20, 40)
        top, bottom = arr[:20].mean((0, 1)), arr[20:].mean((0, 1))
        assert top[0] > 200 and top[2] < 50 and bottom[2] > 200 and bottom[0] < 50


def test_float_tiff_is_scaled_by_its_range(tmp_path):
    """0..1000 floats: stretched from min..max (not clipped at 255); 0..1 floats: times 255; NaN as the low end."""
    ramp = np.linspace(0, 1000, 32 * 32, dtype=np.float32).reshape(32, 32)
    Image.fromarray(ramp, "F").save(tmp_path / "wide.tiff")
    assert Image.open(tmp_path / "wide.tiff").mode == "F"
    grey = np.asarray(load_image(tmp_path / "wide.tiff", "L"), dtype=np.float64)
    np.testing.assert_allclose(grey, ramp * 255 / 1000, atol=0.5 + 1e-6)
    assert (grey == 255).mean() < 0.01  # clipped at 255, three quarters were white

    unit = np.full((4, 4), 0.5, np.float32)
    unit[0, 0] = np.nan
    Image.fromarray(unit, "F").save(tmp_path / "unit.tiff")
    grey = np.asarray(load_image(tmp_path / "unit.tiff", "L"))
    assert grey[0, 0] == 0 and (grey.flat[1:] == 128).all()  # 0..1 kept: 0.5 is mid grey, not stretched


def test_16_bit_images_scale_by_the_type_range(tmp_path):
    """16-bit PNG: 65535 is white, whatever the image holds (a dark image stays dark); as RGB too."""
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    grey = np.asarray(load_image(tmp_path / "deep.png", "L"), dtype=np.float64)
    np.testing.assert_allclose(grey, ramp / 257.0, atol=0.5 + 1e-9)
    rgb = np.asarray(load_image(tmp_path / "deep.png", "RGB"))
    assert rgb.shape == (64, 64, 3) and abs(rgb.mean() - 127.5) < 1
    Image.fromarray((ramp // 64).astype(np.uint16)).save(tmp_path / "dark.png")  # 0..1023 of 65535
    assert np.asarray(load_image(tmp_path / "dark.png", "L")).max() == 4


def test_32_bit_integers_scale_as_16_bit_when_they_fit():
    """A mode 'I' image within 0..65535 (older PIL's 16-bit PNG) as 16 bits; beyond it by its own min..max."""
    fits = Image.fromarray(np.array([[0, 65535]], np.int32), "I")
    assert np.asarray(to_8bit(fits)).tolist() == [[0, 255]]
    counts = Image.fromarray(np.array([[-5, 100_000, 200_000 - 5]], np.int32), "I")
    assert np.asarray(to_8bit(counts)).tolist() == [[0, 128, 255]]


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_non_regular_files_are_refused_unopened(tmp_path, kind):
    """A FIFO named like an image would block the reader in open(): refused from its status, before opening."""
    path = tmp_path / "x.png"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    what = "a FIFO" if kind == "fifo" else "a directory"
    with pytest.raises(BadImageError, match=f"x.png: it is {what}"):
        load_image(path)
