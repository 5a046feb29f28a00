"""Input panoramas: decoding, conversion, 2:1 check, one-line errors and finding the files."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.images import (
    ImageError,
    decode_batch,
    decode_panorama,
    decode_samples,
    find_panoramas,
    read_panorama,
    rgb8,
    unit_rgb,
)

H, W = 32, 64


def _encode(suffix: str, image: np.ndarray, params: list[int] | None = None) -> bytes:
    """Encode an RGB(A) or grayscale array with OpenCV (which expects BGR(A))."""
    if image.ndim == 3:
        image = image[..., [2, 1, 0, 3][: image.shape[2]]]
    ok, buf = cv2.imencode(suffix, image, params or [])
    assert ok, suffix
    return buf.tobytes()


def _png(rows: np.ndarray, width: int, height: int, bit_depth: int, colour_type: int, extra: bytes = b"") -> bytes:
    """A PNG written by hand, for the kinds OpenCV cannot write (gray+alpha, palette)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 on every row
    body = chunk(b"IHDR", header) + extra + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def _blocks(height: int = H, width: int = W, seed: int = 0) -> np.ndarray:
    """(height,width,3) uint8 RGB of random constant-colour 16x16 blocks (JPEG keeps them nearly exact)."""
    colours = np.random.default_rng(seed).integers(0, 256, (height // 16, width // 16, 3), np.uint8)
    return np.kron(colours, np.ones((16, 16, 1), np.uint8))


def _write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def _one_line_error(source: str) -> str:
    with pytest.raises(ImageError) as info:
        read_panorama(source)
    message = str(info.value)
    assert message and "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------- decoding


JPEG_444 = [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]


@pytest.mark.parametrize(
    ("name", "params", "tolerance"),
    [
        ("pano.png", None, 0),
        ("pano.webp", [cv2.IMWRITE_WEBP_QUALITY, 101], 0),  # quality above 100: lossless
        ("pano.jpg", JPEG_444, 2),
        ("pano.jpeg", JPEG_444, 2),
        ("PANO.PNG", None, 0),
    ],
)
def test_8bit_colour_round_trip(tmp_path: Path, name: str, params: list[int] | None, tolerance: int) -> None:
    rgb = _blocks()
    rgb[:16, :16] = (255, 0, 0)  # a pure red block: channel order is RGB, not OpenCV's BGR
    source = _write(tmp_path / name, _encode(Path(name).suffix.lower(), rgb, params))
    out = read_panorama(source)
    assert out.shape == (H, W, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.abs(out * 255.0 - rgb).max() <= tolerance + 1e-3
    assert np.allclose(out[4:12, 4:12], (1.0, 0.0, 0.0), atol=tolerance / 255 + 1e-6)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_grayscale_is_replicated(tmp_path: Path, suffix: str) -> None:
    gray = _blocks()[..., 0]
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if suffix == ".jpg" else None
    out = read_panorama(_write(tmp_path / f"gray{suffix}", _encode(suffix, gray, params)))
    assert out.shape == (H, W, 3)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])
    assert np.abs(out[..., 0] * 255.0 - gray).max() <= (0 if suffix == ".png" else 2) + 1e-3


def test_rgba_alpha_is_dropped_not_applied(tmp_path: Path) -> None:
    rgb = _blocks()
    alpha = np.tile(np.array([0, 1, 128, 255], np.uint8), (H, W // 4))
    out = read_panorama(_write(tmp_path / "rgba.png", _encode(".png", np.dstack([rgb, alpha]))))
    assert out.shape == (H, W, 3)
    # Colour is kept as stored, even where the pixel is fully transparent (no premultiplication).
    assert np.array_equal(out * 255.0, rgb.astype(np.float32))


def test_16bit_precision_is_kept(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rgb16 = rng.integers(0, 65536, (H, W, 3), np.uint16)
    rgb16[0, :3, 0] = (1000, 1001, 1002)  # neighbours one 16-bit step apart: an 8-bit path merges them
    out = read_panorama(_write(tmp_path / "deep.png", _encode(".png", rgb16)))
    assert out.shape == (H, W, 3) and out.dtype == np.float32
    assert np.array_equal(np.round(out.astype(np.float64) * 65535.0), rgb16)
    assert len(np.unique(out[0, :3, 0])) == 3


def test_16bit_gray_and_rgba(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    gray16 = rng.integers(0, 65536, (H, W), np.uint16)
    out = read_panorama(_write(tmp_path / "gray16.png", _encode(".png", gray16)))
    assert np.array_equal(np.round(out * 65535.0), np.repeat(gray16[..., None], 3, axis=2))
    rgba16 = rng.integers(0, 65536, (H, W, 4), np.uint16)
    out = read_panorama(_write(tmp_path / "rgba16.png", _encode(".png", rgba16)))
    assert out.shape == (H, W, 3)
    assert np.array_equal(np.round(out * 65535.0), rgba16[..., :3])


def test_gray_alpha_and_palette_png(tmp_path: Path) -> None:
    gray = _blocks()[..., 1]
    pairs = np.dstack([gray, np.full_like(gray, 9)])  # (H,W,2) gray+alpha, colour type 4
    out = read_panorama(_write(tmp_path / "ga.png", _png(pairs.reshape(H, -1), W, H, 8, 4)))
    assert np.array_equal(out * 255.0, np.repeat(gray[..., None], 3, axis=2).astype(np.float32))

    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    index = np.tile(np.arange(3, dtype=np.uint8), (H, W // 3 + 1))[:, :W]
    plte = struct.pack(">I", palette.size) + b"PLTE" + palette.tobytes()
    plte += struct.pack(">I", zlib.crc32(b"PLTE" + palette.tobytes()))
    out = read_panorama(_write(tmp_path / "palette.png", _png(index, W, H, 8, 3, plte)))
    assert np.array_equal(out * 255.0, palette[index].astype(np.float32))


def test_samples_are_kept_as_stored(tmp_path: Path) -> None:
    """What a labelling worker gets: the file's samples (uint8 or uint16), not floats; 8-bit
    panoramas resized to 2:1 are resized in 16 bits. `unit_rgb` and `rgb8` convert them."""
    rgb = _blocks()
    samples = decode_samples(_encode(".png", rgb), ".png")
    assert samples.dtype == np.uint8 and np.array_equal(samples, rgb)
    assert np.array_equal(unit_rgb(samples), decode_panorama(_encode(".png", rgb), ".png"))
    rgb16 = np.random.default_rng(3).integers(0, 65536, (H, W, 3), np.uint16)
    samples16 = decode_samples(_encode(".png", rgb16), ".png")
    assert samples16.dtype == np.uint16 and np.array_equal(samples16, rgb16)
    assert np.array_equal(rgb8(samples16), np.round(rgb16 / 257.0).astype(np.uint8))
    assert rgb8(samples) is samples
    rows = np.linspace(0, 255, 100).astype(np.uint8)
    wide = np.repeat(np.repeat(rows[:, None, None], 202, axis=1), 3, axis=2)
    resized = decode_samples(_encode(".png", wide), ".png")
    assert resized.dtype == np.uint16 and resized.shape == (100, 200, 3)
    assert np.array_equal(resized[..., 0], np.repeat(rows[:, None].astype(np.uint16) * 257, 200, axis=1))
    source = _write(tmp_path / "pano.png", _encode(".png", rgb))
    batch = decode_batch({"source": np.array([source, str(tmp_path / "missing.png")], dtype=object)})
    assert batch["image"][0].dtype == np.uint8 and np.array_equal(batch["image"][0], rgb)
    assert batch["image"][1].shape == (0, 0, 3) and batch["error"][1].startswith("cannot read")


@pytest.mark.parametrize(("width", "height"), [(202, 100), (198, 100), (201, 100), (200, 101)])
def test_near_2to1_is_resized_to_exactly_2to1(width: int, height: int) -> None:
    rows = np.linspace(0, 255, height).astype(np.uint8)
    image = np.repeat(np.repeat(rows[:, None, None], width, axis=1), 3, axis=2)
    out = decode_panorama(_encode(".png", image), ".png")
    assert out.shape == (height, 2 * height, 3)
    if height == 100:  # only the width changes: every row keeps its value
        assert np.allclose(out[..., 0], rows[:, None] / 255.0, atol=1e-6)


@pytest.mark.parametrize(("width", "height"), [(203, 100), (197, 100), (200, 99), (200, 102), (100, 100)])
def test_beyond_1_percent_is_refused(tmp_path: Path, width: int, height: int) -> None:
    source = _write(tmp_path / "bad.png", _encode(".png", np.zeros((height, width, 3), np.uint8)))
    message = _one_line_error(source)
    assert "2:1" in message and f"{width}x{height}" in message


def test_tiny_image_is_refused(tmp_path: Path) -> None:
    source = _write(tmp_path / "tiny.png", _encode(".png", np.zeros((4, 8, 3), np.uint8)))
    assert "too small: 8x4" in _one_line_error(source)


def _truncated(suffix: str, params: list[int] | None = None, keep: float = 0.5) -> bytes:
    data = _encode(suffix, _blocks(), params)
    return data[: int(len(data) * keep)]


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("empty.png", b"", "empty file"),
        ("empty.jpg", b"", "empty file"),
        ("text.png", b"this is not an image, just some text\n" * 4, "not a PNG"),
        ("text.jpg", b"this is not an image, just some text\n" * 4, "not a JPEG"),
        ("text.webp", b"this is not an image, just some text\n" * 4, "not a WebP"),
        ("jpeg_named.png", _encode(".jpg", _blocks()), "not a PNG"),
        ("cut.png", _truncated(".png"), "truncated PNG"),
        ("cut_end.png", _truncated(".png", keep=0.95), "truncated PNG"),
        ("cut.jpg", _truncated(".jpg", JPEG_444), "truncated JPEG"),
        ("cut_end.jpg", _truncated(".jpg", JPEG_444, keep=0.98), "truncated JPEG"),
        ("cut.webp", _truncated(".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]), "truncated WebP"),
    ],
)
def test_bad_files_raise_one_line_errors(tmp_path: Path, name: str, data: bytes, expected: str) -> None:
    assert expected in _one_line_error(_write(tmp_path / name, data))


def test_corrupt_png_data_is_refused(tmp_path: Path) -> None:
    data = bytearray(_encode(".png", _blocks()))
    data[data.find(b"IDAT") + 20] ^= 0xFF  # complete file, damaged compressed data
    assert "cannot decode" in _one_line_error(_write(tmp_path / "corrupt.png", bytes(data)))


def test_missing_file_and_folder_are_read_errors(tmp_path: Path) -> None:
    message = _one_line_error(str(tmp_path / "nowhere" / "missing.png"))
    assert message.startswith("cannot read") and "FileNotFoundError" in message and "missing.png" in message
    (tmp_path / "folder.png").mkdir()
    assert _one_line_error(str(tmp_path / "folder.png")).startswith("cannot read")


def test_read_from_fsspec_url(tmp_path: Path) -> None:
    rgb = _blocks()
    source = _write(tmp_path / "pano.png", _encode(".png", rgb))
    assert np.array_equal(read_panorama(f"file://{source}") * 255.0, rgb.astype(np.float32))


# ---------------------------------------------------------------------------------------------- finding


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_find_in_nested_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _touch(data, "b.png", "a-b.jpg", "a/b.webp", "a/deeper/c.jpeg", "Z.JPG", "a_c.PNG")
    _touch(data, "notes.txt", "a/depth.tif", "a/anim.gif", "a/.png")
    (data / "folder.png").mkdir()
    found = find_panoramas(str(data))
    # Sorted by id (a plain string sort), not by path: "a-b" < "a/b" although a/ sorts first as a path.
    expected_ids = ["Z", "a-b", "a/b", "a/deeper/c", "a_c", "b"]
    assert [pano_id for pano_id, _ in found] == expected_ids
    sources = dict(found)
    assert sources["a/deeper/c"] == str(data / "a" / "deeper" / "c.jpeg")
    assert sources["Z"] == str(data / "Z.JPG")
    assert all(Path(source).is_file() for source in sources.values())


def test_find_in_list_file(tmp_path: Path) -> None:
    images = tmp_path.resolve() / "images"  # the list's paths come back resolved
    _touch(images, "a.png", "sub/b.jpg", "c.webp")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "todo.txt").write_text(
        f"# panoramas to label\n\n../images/sub/b.jpg\n   ../images/a.png  \n{images / 'c.webp'}\n\n# the end\n"
    )
    found = find_panoramas(str(lists / "todo.txt"))
    # Outside the list's folder, ids are whole paths: adding a path never renames the others.
    stem = (images / "a").as_posix().lstrip("/")
    assert found == [
        (stem, str(images / "a.png")),
        (stem[:-1] + "c", str(images / "c.webp")),
        (stem[:-1] + "sub/b", str(images / "sub" / "b.jpg")),
    ]
    (images / "todo.txt").write_text("a.png\nsub/b.jpg\n")
    inside = find_panoramas(str(images / "todo.txt"))
    assert inside == [("a", str(images / "a.png")), ("sub/b", str(images / "sub" / "b.jpg"))]


def test_list_file_with_urls(tmp_path: Path) -> None:
    (tmp_path / "urls.txt").write_text("s3://bucket/rooms/r2.jpg\ns3://bucket/rooms/r1.png\n")
    assert find_panoramas(str(tmp_path / "urls.txt")) == [
        ("bucket/rooms/r1", "s3://bucket/rooms/r1.png"),
        ("bucket/rooms/r2", "s3://bucket/rooms/r2.jpg"),
    ]


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    _touch(tmp_path / "data", "rooms/kitchen.png", "rooms/kitchen.jpg", "hall.png")
    with pytest.raises(ValueError, match="'rooms/kitchen'") as info:
        find_panoramas(str(tmp_path / "data"))
    assert "\n" not in str(info.value)
    # The same file listed twice is a duplicate id too, with the same clear message.
    (tmp_path / "twice.txt").write_text("data/hall.png\ndata/hall.png\n")
    with pytest.raises(ValueError, match="same panorama id 'data/hall'"):
        find_panoramas(str(tmp_path / "twice.txt"))


def test_nothing_to_find_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=re.escape("no .jpg/.jpeg/.png/.webp files found")):
        find_panoramas(str(tmp_path / "empty"))
    _touch(tmp_path / "others", "readme.txt", "scan.tif")
    with pytest.raises(ValueError, match=re.escape("no .jpg")):
        find_panoramas(str(tmp_path / "others"))
    (tmp_path / "comments.txt").write_text("# nothing yet\n\n")
    with pytest.raises(ValueError, match="holds no paths"):
        find_panoramas(str(tmp_path / "comments.txt"))
    with pytest.raises(FileNotFoundError, match="no such folder or list file") as info:
        find_panoramas(str(tmp_path / "missing"))
    assert str(tmp_path / "missing") in str(info.value) and "\n" not in str(info.value)
