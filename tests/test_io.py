"""Safe image I/O: formats, modes, orientation, and clear errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cellbench.errors import ImageReadError
from cellbench.io import image_size, read_image, read_mask, write_image, write_mask


def _rgb(h=20, w=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_png_round_trip_is_lossless(tmp_path):
    a = _rgb()
    write_image(tmp_path / "a.png", a)
    assert np.array_equal(read_image(tmp_path / "a.png"), a)
    assert image_size(tmp_path / "a.png") == (20, 30)


@pytest.mark.parametrize("ext", [".bmp", ".tif"])
def test_lossless_formats(tmp_path, ext):
    a = _rgb()
    write_image(tmp_path / f"a{ext}", a)
    assert np.array_equal(read_image(tmp_path / f"a{ext}"), a)


def test_jpeg_is_close(tmp_path):
    a = np.full((32, 32, 3), (200, 120, 160), np.uint8)
    write_image(tmp_path / "a.jpg", a, quality=95)
    assert np.abs(read_image(tmp_path / "a.jpg").astype(int) - a).max() <= 3


def test_grayscale_is_replicated(tmp_path):
    g = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (8, 8, 3) and np.array_equal(out[..., 1], g)


def test_rgba_is_composited_on_white(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 255
    a[..., 3] = 0  # fully transparent red -> white
    a[0, 0, 3] = 255  # one opaque red pixel
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[1, 1]) == (255, 255, 255)


def test_palette_image(tmp_path):
    rgb = np.zeros((6, 6, 3), np.uint8)
    rgb[:3] = (10, 200, 30)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    assert tuple(out[0, 0]) == (10, 200, 30) and tuple(out[5, 5]) == (0, 0, 0)


def test_16bit_grayscale_scaled_to_8bit(tmp_path):
    a = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    out = read_image(tmp_path / "g16.png")
    assert out[0, :, 0].tolist() == [0, 1, 255, 128]


def test_exif_orientation_applied(tmp_path):
    a = np.zeros((10, 20, 3), np.uint8)
    a[:, :10] = 255  # left half white
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW when displayed
    img.save(tmp_path / "r.jpg", exif=exif, quality=100)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (20, 10, 3)
    assert out[:10].mean() > 200 and out[10:].mean() < 50  # left half becomes the top half


def test_missing_empty_corrupt_truncated(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "junk.png").write_bytes(b"this is not an image" * 10)
    with pytest.raises(ImageReadError, match="junk.png"):
        read_image(tmp_path / "junk.png")
    write_image(tmp_path / "full.jpg", _rgb(64, 64))
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="trunc.jpg.*truncated or corrupt"):
        read_image(tmp_path / "trunc.jpg")


def test_unsupported_format_refused(tmp_path):
    Image.fromarray(_rgb()).save(tmp_path / "a.gif")
    with pytest.raises(ImageReadError, match="GIF is not supported"):
        read_image(tmp_path / "a.gif")


def test_decompression_bomb_guard(tmp_path):
    write_image(tmp_path / "big.png", _rgb(100, 100))
    with pytest.raises(ImageReadError, match="decompression-bomb"):
        read_image(tmp_path / "big.png", max_pixels=5000)


def test_mask_round_trip_and_mode_check(tmp_path):
    m = np.array([[0, 1, 2], [3, 4, 5]], np.uint8)
    write_mask(tmp_path / "m.png", m)
    assert np.array_equal(read_mask(tmp_path / "m.png"), m)
    write_image(tmp_path / "rgb.png", _rgb(2, 3))
    with pytest.raises(ImageReadError, match="single-channel"):
        read_mask(tmp_path / "rgb.png")


def test_write_is_atomic_and_validates(tmp_path):
    with pytest.raises(ValueError):
        write_image(tmp_path / "x.png", np.zeros((4, 4), np.uint8))
    assert not list(tmp_path.iterdir())


def test_multi_picture_jpeg_reads_its_first_frame(tmp_path):
    """MPO (CIPA DC-007: a JPEG followed by more pictures, as phones write) was refused as unsupported."""
    first = np.zeros((12, 10, 3), np.uint8)
    first[:, :5] = (200, 30, 30)
    first[:, 5:] = (30, 30, 200)
    second = np.full((12, 10, 3), 255, np.uint8)
    path = tmp_path / "phone.jpg"
    Image.fromarray(first).save(path, format="MPO", save_all=True, append_images=[Image.fromarray(second)])
    with Image.open(path) as im:
        assert im.format == "MPO" and im.n_frames == 2  # really a multi-picture file
        im.seek(0)
        reference = np.asarray(im.convert("RGB"))  # Pillow's decoding of the first picture
    got = read_image(path)
    assert got.shape == (12, 10, 3) and np.array_equal(got, reference)
    # the red/blue first picture (JPEG-compressed, chroma subsampled at the edge), not the white one
    assert np.abs(got[:, :3].astype(int) - first[:, :3]).max() < 10 and got[:, 7:, 2].min() > 180


def test_writes_get_the_umask(tmp_path):
    import os
    import stat

    old = os.umask(0o002)
    try:
        write_image(tmp_path / "a.png", _rgb())
        write_mask(tmp_path / "m.png", np.zeros((3, 3), np.uint8))
    finally:
        os.umask(old)
    assert {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {0o664}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "m.png"]  # no temporary left


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".tif"])
def test_write_planes_writes_the_bytes_write_image_writes(tmp_path, ext):
    from cellbench.io import write_planes

    rng = np.random.default_rng(3)
    hwc = rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)
    write_image(tmp_path / f"a{ext}", hwc, compress_level=1)
    write_planes(tmp_path / f"b{ext}", np.ascontiguousarray(hwc.transpose(2, 0, 1)), compress_level=1)
    assert (tmp_path / f"a{ext}").read_bytes() == (tmp_path / f"b{ext}").read_bytes()
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        write_planes(tmp_path / f"c{ext}", hwc)
