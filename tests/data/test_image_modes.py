"""Every image mode decodes with its full tonal range through the one loader (data.base.load_image).

Each reference is numpy arithmetic on the values written into the file, never PIL's conversion.
"""
import numpy as np
import pytest
from PIL import Image

from deepmetric.data.base import load_image


def _ramp16():
    return np.array([[0, 1, 128, 129, 385, 1000], [30000, 32767, 40000, 65278, 65534, 65535]], dtype=np.uint16)


def _round_div_257(v):
    return np.floor(v.astype(np.float64) / 257 + 0.5).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_16_bit_grayscale_keeps_every_tone(tmp_path, fmt):
    values = _ramp16()
    path = tmp_path / f"g16.{fmt}"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")  # the file really is 16-bit
    got = np.asarray(load_image(path, "L"))
    np.testing.assert_array_equal(got, _round_div_257(values))
    assert len(np.unique(got)) > 2  # not binarised (PIL's convert gives only 0 and 255 here)
    rgb = np.asarray(load_image(path, "RGB"))
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], _round_div_257(values))


def test_32_bit_integer_mode_is_read_as_16_bit_samples(tmp_path):
    values = np.array([[-5, 0, 257, 65535, 70000, 1285]], dtype=np.int32)
    path = tmp_path / "i32.tiff"
    Image.fromarray(values, mode="I").save(path)
    assert Image.open(path).mode == "I"
    np.testing.assert_array_equal(np.asarray(load_image(path, "L")), [[0, 0, 1, 255, 255, 5]])


def test_cmyk_jpeg_free_tiff_matches_the_subtractive_formula(tmp_path):
    rng = np.random.default_rng(0)
    cmyk = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    path = tmp_path / "c.tiff"
    Image.fromarray(cmyk, mode="CMYK").save(path)
    got = np.asarray(load_image(path, "RGB")).astype(int)
    ref = np.round((255 - cmyk[..., :3].astype(float)) * (255 - cmyk[..., 3:].astype(float)) / 255)
    assert np.abs(got - ref).max() <= 1


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparency_is_composited_onto_white(tmp_path, mode):
    rng = np.random.default_rng(1)
    channels = 4 if mode == "RGBA" else 2
    arr = rng.integers(0, 256, (4, 6, channels), dtype=np.uint8)
    path = tmp_path / "a.png"
    Image.fromarray(arr, mode=mode).save(path)
    colour, alpha = arr[..., :-1].astype(float), arr[..., -1:].astype(float) / 255
    ref = colour * alpha + 255 * (1 - alpha)
    got = np.asarray(load_image(path, "RGB")).astype(float)
    if mode == "LA":
        ref = np.repeat(ref, 3, axis=2)
    assert np.abs(got - ref).max() <= 1


def test_palette_image_with_and_without_a_transparent_entry(tmp_path):
    palette = np.array([[10, 20, 30], [200, 100, 0], [0, 0, 255]], dtype=np.uint8)
    index = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    img = Image.fromarray(index, mode="P")
    img.putpalette(palette.flatten().tolist())
    img.save(tmp_path / "p.png")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "p.png", "RGB")), palette[index])
    img.save(tmp_path / "pt.png", transparency=1)  # entry 1 transparent: shows white
    ref = palette[index].copy()
    ref[index == 1] = 255
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "pt.png", "RGB")), ref)
    grey = np.asarray(load_image(tmp_path / "p.png", "L")).astype(float)
    luma = palette[index] @ np.array([299, 587, 114]) / 1000  # ITU-R 601-2, as PIL documents for "L"
    assert np.abs(grey - luma).max() <= 1


@pytest.mark.parametrize("orientation, turn", [(3, 2), (6, -1), (8, 1)])  # EXIF tag -> np.rot90 turns
def test_exif_rotated_jpeg_is_turned_upright(tmp_path, orientation, turn):
    stored = np.zeros((16, 32, 3), dtype=np.uint8)
    stored[:8, :8] = 255  # a white corner block shows which way is up
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "r.jpg"
    Image.fromarray(stored).save(path, quality=100, exif=exif)
    got = np.asarray(load_image(path, "RGB")).astype(int)
    ref = np.rot90(stored, turn).astype(int)
    assert got.shape == ref.shape
    assert np.abs(got - ref).mean() < 3  # JPEG noise only


def test_first_frame_of_an_animation(tmp_path):
    frames = [Image.new("L", (4, 4), v) for v in (40, 200)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert np.asarray(load_image(tmp_path / "a.gif", "L")).max() == 40


def test_uploaded_bytes_decode_like_files(tmp_path):
    import io

    from deepmetric.serve.app import decode_image
    from deepmetric.data.base import to_mode

    values = _ramp16()
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="PNG")
    got = np.asarray(to_mode(decode_image(buf.getvalue(), max_pixels=10**6), "L"))
    np.testing.assert_array_equal(got, _round_div_257(values))
