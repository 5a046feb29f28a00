"""Reading input panoramas: decode, validate and normalise, with one-line errors.

Accepted: 8- and 16-bit PNG, JPEG and WebP files, colour, grayscale or with alpha (the
last three are converted to RGB), 2:1 within a 1% tolerance (resized to exactly 2:1).
Everything else raises `ImageError` with a one-line reason, so a run records the
panorama as failed and goes on. A labelling run's decoding tasks hand the samples on as
stored (`decode_samples`, uint8 or uint16); `read_panorama` gives float RGB in [0,1].
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import cv2
import fsspec
import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
ASPECT_TOLERANCE = 0.01
# Smallest panorama worth labelling: below this no patch holds any detail.
MIN_HEIGHT = 16


class ImageError(ValueError):
    """An input file is not a usable panorama (the message is one line)."""


def _check_complete(data: bytes, suffix: str) -> None:
    """Reject files that were cut short: decoders fill the missing part with grey silently."""
    if suffix in (".jpg", ".jpeg"):
        if not data.startswith(b"\xff\xd8"):
            raise ImageError("not a JPEG file")
        # The end-of-image marker must follow the last start-of-scan: 0xFF 0xD9 cannot occur
        # inside entropy-coded data, and trailers after it (motion photos) are allowed.
        last_scan = data.rfind(b"\xff\xda")
        if last_scan < 0 or data.rfind(b"\xff\xd9") < last_scan:
            raise ImageError("truncated JPEG (no end-of-image marker after the last scan)")
    elif suffix == ".png":
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ImageError("not a PNG file")
        if b"IEND" not in data[-32:]:
            raise ImageError("truncated PNG (no IEND chunk)")
    elif suffix == ".webp":
        if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
            raise ImageError("not a WebP file")
        if int.from_bytes(data[4:8], "little") + 8 > len(data):
            raise ImageError("truncated WebP (shorter than its RIFF header says)")


def decode_samples(data: bytes, suffix: str) -> np.ndarray:
    """Decode an encoded panorama to its samples, as stored (no conversion to float: a
    labeller converts them while it pads the panorama for sampling, and an 8-bit panorama
    travels between processes at a quarter of its float size).

    Args:
        data: the file's bytes.
        suffix: its lower-case extension (".png", ".jpg", ...), used to check completeness.
    Returns:
        (H,W,3) RGB, uint8 (8-bit files) or uint16 (16-bit files, and panoramas resized to
        exactly 2:1, resized in 16 bits so that no 8-bit rounding is added), W = 2H exactly.
        `unit_rgb` gives the values in [0,1].
    Raises:
        ImageError: empty, unreadable, truncated, too small or not 2:1 within 1%.
    """
    if not data:
        raise ImageError("empty file")
    _check_complete(data, suffix)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError("cannot decode the image (corrupt or unsupported)")
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"unsupported sample type {image.dtype}")
    if image.ndim == 2:
        rgb = np.repeat(image[..., None], 3, axis=2)
    elif image.shape[2] == 4:
        rgb = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)  # alpha dropped: panoramas are opaque
    elif image.shape[2] == 3:
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif image.shape[2] == 1:
        rgb = np.repeat(image, 3, axis=2)
    else:
        raise ImageError(f"unsupported channel count {image.shape[2]}")
    H, W = rgb.shape[:2]
    if H < MIN_HEIGHT:
        raise ImageError(f"too small: {W}x{H}")
    # The small slack keeps an error of exactly 1% within the tolerance despite float rounding.
    if abs(W - 2 * H) > ASPECT_TOLERANCE * 2 * H * (1 + 1e-9):
        raise ImageError(f"not a 2:1 equirectangular panorama: {W}x{H}")
    if W != 2 * H:
        if rgb.dtype == np.uint8:
            rgb = rgb.astype(np.uint16) * np.uint16(257)  # 255 * 257 = 65535: the same values in 16 bits
        rgb = cv2.resize(rgb, (2 * H, H), interpolation=cv2.INTER_LINEAR)
    return rgb


def sample_scale(samples: np.ndarray) -> float:
    """The sample value of 1.0 for uint8 (255) or uint16 (65535) samples of `decode_samples`."""
    if samples.dtype == np.uint8:
        return 255.0
    assert samples.dtype == np.uint16, f"panorama samples are uint8 or uint16, got {samples.dtype}"
    return 65535.0


def unit_rgb(samples: np.ndarray) -> np.ndarray:
    """(H,W,3) uint8/uint16 samples (`decode_samples`) -> (H,W,3) float32 RGB in [0,1]."""
    out = samples.astype(np.float32)
    out /= sample_scale(samples)  # in place: no second full-size copy
    return out


def rgb8(samples: np.ndarray) -> np.ndarray:
    """(H,W,3) uint8/uint16 samples -> writable (H,W,3) uint8 RGB (16 bits rounded to 8)."""
    if samples.dtype == np.uint8:
        return samples if samples.flags.writeable else samples.copy()
    assert samples.dtype == np.uint16, f"panorama samples are uint8 or uint16, got {samples.dtype}"
    return np.round(samples.astype(np.float32) / np.float32(257.0)).astype(np.uint8)  # 65535 / 255 = 257


def decode_panorama(data: bytes, suffix: str) -> np.ndarray:
    """Decode an encoded panorama (see `decode_samples`) to (H,W,3) float32 RGB in [0,1], W = 2H."""
    return unit_rgb(decode_samples(data, suffix))


def read_samples(source: str) -> np.ndarray:
    """Read and decode a panorama from a local path or fsspec URL to its samples (see
    `decode_samples`).

    Raises:
        ImageError: the file is missing, unreadable or not a usable panorama.
    """
    try:
        with fsspec.open(source, "rb") as f:
            data = f.read()
    except (OSError, ValueError) as err:
        raise ImageError(f"cannot read: {err.__class__.__name__}: {err}".splitlines()[0]) from err
    return decode_samples(data, os.path.splitext(source)[1].lower())


def read_panorama(source: str) -> np.ndarray:
    """Read and decode a panorama from a local path or fsspec URL to (H,W,3) float32 RGB in
    [0,1], W = 2H (see `decode_samples`).

    Raises:
        ImageError: the file is missing, unreadable or not a usable panorama.
    """
    return unit_rgb(read_samples(source))


def resize_erp(image: np.ndarray, height: int) -> np.ndarray:
    """(H,W,C) ERP image resized to height x 2*height (area averaging when shrinking)."""
    if image.shape[0] == height:
        return image
    interpolation = cv2.INTER_AREA if image.shape[0] > height else cv2.INTER_LINEAR
    return cv2.resize(image, (2 * height, height), interpolation=interpolation)


def find_panoramas(data: str) -> list[tuple[str, str]]:
    """(pano_id, source) of every panorama in `data`, sorted by id.

    `data` is a folder (searched recursively for .jpg/.jpeg/.png/.webp; pano_id is the path
    relative to it without extension, `/` separators) or a text file with one path a line
    (blank lines and lines starting with # skipped; relative paths are relative to the
    file; pano_id is the path relative to the list file's folder without extension, or, for
    paths outside it and URLs, the whole path without extension: ids do not change when
    paths are added to the list, so a resumed run recognises what it has done).

    Raises:
        FileNotFoundError / ValueError with a one-line message (a usage error).
    """
    root = Path(data)
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{data}: no .jpg/.jpeg/.png/.webp files found")
        entries = [(p.relative_to(root).with_suffix("").as_posix(), str(p)) for p in files]
    elif root.is_file():
        lines = [line.strip() for line in root.read_text().splitlines()]
        paths = [line for line in lines if line and not line.startswith("#")]
        if not paths:
            raise ValueError(f"{data}: the list holds no paths")
        base = root.parent.resolve()
        entries = []
        for p in paths:
            if "://" in p:
                entries.append((os.path.splitext(p)[0].split("://", 1)[1], p))
                continue
            path = (root.parent / p).resolve()
            stem = path.with_suffix("")
            pano_id = stem.relative_to(base).as_posix() if stem.is_relative_to(base) else stem.as_posix().lstrip("/")
            entries.append((pano_id, str(path)))
    else:
        raise FileNotFoundError(f"{data}: no such folder or list file")
    # By id, not by path: path order puts "a/b" before "a-b", which differs from the ids' order.
    entries.sort()
    counts = Counter(pano_id for pano_id, _ in entries)
    duplicates = sorted(i for i, n in counts.items() if n > 1)
    if duplicates:
        raise ValueError(f"two files give the same panorama id {duplicates[0]!r} (same name, other extension?)")
    return entries


def decode_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """CPU preprocessing: read and decode the panoramas of a batch.

    Args:
        batch: "index" (K,) int, "pano_id" (K,) str, "source" (K,) str.
    Returns:
        the batch plus "image": K arrays (H,W,3) uint8 or uint16 RGB samples, ERP (see
        `decode_samples`; an empty (0,0,3) uint8 array when decoding failed), "error": (K,)
        str, "" when it worked, and "t_decode": (K,) float seconds.
    """
    images, errors, seconds = [], [], []
    for source in batch["source"]:
        start = time.perf_counter()
        try:
            images.append(read_samples(str(source)))
            errors.append("")
        except ImageError as err:
            images.append(np.zeros((0, 0, 3), np.uint8))
            errors.append(str(err))
        seconds.append(time.perf_counter() - start)
    return {**batch, "image": images, "error": np.array(errors, dtype=object), "t_decode": np.array(seconds)}
