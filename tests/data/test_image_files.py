"""Unreadable images (skip with same-class substitute vs strict), scan(), and colour-mode conversion."""
import warnings

import numpy as np
import pytest
from PIL import Image

from deepmetric.data.base import BadImage, DatasetError, UnreadableImageError, UnreadableImageWarning, to_mode
from deepmetric.data.cub import CUB200
from layouts import colour, make_cub, write_not_an_image, write_truncated_jpeg, write_zero_byte

BREAKERS = {"zero_byte": write_zero_byte, "truncated": write_truncated_jpeg, "not_an_image": write_not_an_image,
            "missing": lambda p: p.unlink()}


def _cub(tmp_path, per_class=3):
    root = make_cub(tmp_path, classes=(1, 2, 101), per_class=per_class)
    return root, CUB200(root, "train")


@pytest.mark.parametrize("kind", sorted(BREAKERS))
def test_bad_image_is_replaced_by_the_next_image_of_the_same_class(tmp_path, kind):
    root, ds = _cub(tmp_path)
    bad = 3  # class 2 (label 1), k = 0
    BREAKERS[kind](ds.paths[bad])
    with pytest.warns(UnreadableImageWarning) as rec:
        img, y = ds[bad]
    assert y == 1 and int(ds.labels[bad]) == 1
    assert np.abs(np.asarray(img, dtype=int) - colour(2, 1)).max() <= 6  # the k = 1 image of the same class
    msg = str(rec[0].message)
    assert str(ds.paths[bad]) in msg and "1 unreadable image(s)" in msg and str(ds.paths[4]) in msg
    # warned once per file: a second read is silent
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img2, _ = ds[bad]
    assert np.array_equal(np.asarray(img2), np.asarray(img))


def test_count_grows_and_the_last_member_wraps_to_the_first(tmp_path):
    root, ds = _cub(tmp_path)
    write_zero_byte(ds.paths[5])  # last image of class 2
    write_zero_byte(ds.paths[0])
    with pytest.warns(UnreadableImageWarning, match="1 unreadable"):
        img, y = ds[5]
    assert y == 1 and np.abs(np.asarray(img, dtype=int) - colour(2, 0)).max() <= 6  # wrapped to k = 0
    with pytest.warns(UnreadableImageWarning, match="2 unreadable"):
        ds[0]
    assert ds.bad_files == {ds.paths[5], ds.paths[0]}


def test_substitute_skips_other_bad_members(tmp_path):
    root, ds = _cub(tmp_path)
    write_zero_byte(ds.paths[3])
    write_not_an_image(ds.paths[4])
    with pytest.warns(UnreadableImageWarning):
        img, y = ds[3]
    assert y == 1 and np.abs(np.asarray(img, dtype=int) - colour(2, 2)).max() <= 6


def test_whole_class_unreadable_is_an_error_naming_the_class(tmp_path):
    root, ds = _cub(tmp_path, per_class=2)
    write_zero_byte(ds.paths[2])
    write_zero_byte(ds.paths[3])
    with pytest.warns(UnreadableImageWarning), pytest.raises(DatasetError, match=r"every image of class 1 \('Bird_2'\).*unreadable"):
        ds[2]


@pytest.mark.parametrize("kind", sorted(BREAKERS))
def test_strict_raises_naming_the_file(tmp_path, kind):
    root = make_cub(tmp_path, classes=(1, 2), per_class=2)
    ds = CUB200(root, "train", strict=True)
    BREAKERS[kind](ds.paths[1])
    ds[0]
    with pytest.raises(UnreadableImageError, match=r"cannot read image .*Bird_1_0001_2\.jpg \(item 1") as e:
        ds[1]
    assert isinstance(e.value, DatasetError) and isinstance(e.value, ValueError)


def test_scan_reports_every_bad_file_up_front(tmp_path):
    root, ds = _cub(tmp_path)
    write_zero_byte(ds.paths[1])
    write_truncated_jpeg(ds.paths[5])
    report = ds.scan()
    assert [r.index for r in report] == [1, 5] and all(isinstance(r, BadImage) for r in report)
    assert report[0].path == ds.paths[1] and report[1].error.startswith("OSError")
    assert ds.bad_files == {ds.paths[1], ds.paths[5]}
    assert CUB200(root, "test").scan() == []


def test_transform_receives_the_substitute(tmp_path):
    root = make_cub(tmp_path, classes=(1,), per_class=2)
    seen = []
    ds = CUB200(root, "train", transform=lambda im: seen.append(im.getpixel((0, 0))) or "t")
    write_zero_byte(ds.paths[0])
    with pytest.warns(UnreadableImageWarning):
        assert ds[0] == ("t", 0)
    assert np.abs(np.array(seen[0]) - colour(1, 1)).max() <= 6


# ------------------------------------------------------------------------------------------ conversion


def _saved(tmp_path, image, name):
    p = tmp_path / name
    image.save(p)
    return p


def test_rgba_gray_cmyk_palette_files_become_rgb(tmp_path):
    root = make_cub(tmp_path, classes=(1,), per_class=4)
    ds = CUB200(root, "train")
    # RGBA with half-transparent red over white -> (255, 128, 128) roughly; fully opaque pixel unchanged
    rgba = Image.new("RGBA", (12, 10), (255, 0, 0, 128))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    Image.Image.save(rgba, ds.paths[0].with_suffix(".png"))
    ds.paths[0] = ds.paths[0].with_suffix(".png")
    Image.new("L", (12, 10), 77).save(ds.paths[1])
    # CMYK: TIFF keeps it lossless; C=255 -> R = 0
    cmyk_path = ds.paths[2].with_suffix(".tif")
    Image.new("CMYK", (12, 10), (255, 0, 0, 0)).save(cmyk_path)
    ds.paths[2] = cmyk_path
    pal = Image.new("P", (12, 10), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal_path = ds.paths[3].with_suffix(".png")
    pal.save(pal_path)
    ds.paths[3] = pal_path
    out = [np.asarray(ds[i][0]) for i in range(4)]
    assert all(ds[i][0].mode == "RGB" for i in range(4))
    assert tuple(out[0][0, 0]) == (0, 0, 255)
    assert np.abs(out[0][5, 5].astype(int) - (255, 127, 127)).max() <= 1
    assert (out[1] == 77).all()
    assert tuple(out[2][3, 3]) == (0, 255, 255)
    assert tuple(out[3][2, 2]) == (10, 200, 30)


def test_palette_with_transparency_is_composited_on_white():
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.putpixel((1, 1), 1)
    pal.info["transparency"] = 0
    rgb = np.asarray(to_mode(pal, "RGB"))
    assert tuple(rgb[0, 0]) == (255, 255, 255) and tuple(rgb[1, 1]) == (10, 200, 30)
    assert to_mode(Image.new("RGB", (2, 2), (9, 9, 9)), "L").mode == "L"
