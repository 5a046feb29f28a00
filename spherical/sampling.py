"""ERP -> perspective patch sampling (gnomonic projection).

Longitude wraps: the ERP is padded with one column from the opposite edge on each side,
so a patch straddling +-180 degrees interpolates across the seam. Latitude does not fold:
the row beyond a pole is the first row read at the opposite longitude (rolled by W/2),
which is where a ray that crosses the pole lands.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from spherical.camera import PatchCameras
from spherical.erp import erp_width

SampleMode = Literal["bilinear", "nearest"]


def pad_erp(erp: Tensor) -> Tensor:
    """Pad an ERP image by one pixel on every side with its spherical neighbours.

    Args:
        erp: (..., H, W) ERP images, e.g. (B,C,H,W), W = 2H.
    Returns:
        (..., H+2, W+2): columns wrap around in longitude; the padded top/bottom rows are the
        first/last rows shifted by half a turn (the pixels across the pole).
    """
    *lead, H, W = erp.shape
    if erp_width(H) != W:
        raise ValueError(f"ERP images must be 2:1, got {H}x{W}")
    # One allocation filled in place: the padded copy of a large ERP is tens of MB.
    padded = erp.new_empty(*lead, H + 2, W + 2)
    padded[..., 1:-1, 1:-1] = erp
    return _fill_border(padded)


def pad_samples(samples: Tensor, scale: float, out: Tensor | None = None) -> Tensor:
    """Pad an image's integer samples as `pad_erp` does, converted to [0,1] on the way (into
    the padded buffer, without a float copy, its padded copy and their allocations).

    Args:
        samples: (H,W,C) integer ERP samples, channels last as decoded, W = 2H: uint8, or
            int32 holding 16-bit ones (torch's uint16 lacks arithmetic kernels on some devices).
        scale: the sample value of 1.0 (255 for 8-bit samples, 65535 for 16-bit ones).
        out: optional (1,C,H+2,W+2) float32 buffer on the samples' device to write into (a
            caller's, reused from image to image: a fresh one is tens of MB of page faults),
            best in channels-last memory (`padded_buffer`).
    Returns:
        (1,C,H+2,W+2) float32 in [0,1], samples / scale exactly (`out` when given).
    """
    H, W, C = samples.shape
    if erp_width(H) != W:
        raise ValueError(f"ERP images must be 2:1, got {H}x{W}")
    if samples.is_floating_point():
        raise ValueError(f"samples must be integers, got {samples.dtype}")
    if out is None:
        out = padded_buffer(H, C, samples.device)
    elif out.shape != (1, C, H + 2, W + 2) or out.dtype != torch.float32:
        raise ValueError(f"out must be (1, {C}, {H + 2}, {W + 2}) float32, got {tuple(out.shape)} {out.dtype}")
    # Converted, then divided in place: torch's divide-while-converting loop is slower than
    # the two plain passes (a 2048x1024 8-bit panorama: 5.5 -> 3.8 ms), with the same values.
    out[0, :, 1:-1, 1:-1].copy_(samples.permute(2, 0, 1)).div_(scale)  # (H,W,C) -> (C,H,W)
    return _fill_border(out)


def padded_buffer(erp_height: int, channels: int, device: torch.device | str = "cpu") -> Tensor:
    """An empty (1,C,H+2,W+2) float32 padded ERP in channels-last memory, for `pad_samples`:
    the decoded samples' channels are interleaved too, so converting them reads and writes in
    order, and `grid_sample` reads it as fast as planar memory (a 2048x1024 panorama's 20
    patches of 518 x 518: 44 ms -> 37 ms to pad and sample, 2 threads)."""
    H = erp_height
    return torch.empty(1, channels, H + 2, erp_width(H) + 2, device=device, memory_format=torch.channels_last)


def _fill_border(padded: Tensor) -> Tensor:
    """Write the one-pixel border of (..., H+2, W+2) padded ERPs from their interior (see `pad_erp`)."""
    W = padded.shape[-1] - 2
    padded[..., 0, 1:-1] = torch.roll(padded[..., 1, 1:-1], W // 2, dims=-1)  # across the north pole
    padded[..., -1, 1:-1] = torch.roll(padded[..., -2, 1:-1], W // 2, dims=-1)  # across the south pole
    padded[..., 0] = padded[..., -2]  # longitude wraps, pole rows included
    padded[..., -1] = padded[..., 1]
    return padded


# Patch pixels per grid_sample call (four 518x518 patches on two threads). Larger calls
# need fresh buffers of tens of MB, which cost more in page faults than the maths; smaller
# ones multiply the parallel sections, which a busy machine makes slow.
_CHUNK_PIXELS = 3 << 19


def _patch_grid(cameras: PatchCameras, erp_height: int) -> Tensor:
    """(N,h,w,2) grid_sample coordinates of every patch pixel in a padded ERP (see `pad_erp`).

    With x = (lon + pi) W / (2 pi) and y = (pi/2 - lat) H / pi (`lonlat_to_pixel`), the
    normalised coordinates in the (H+2, W+2) padded image, 2 (x + 1) / (W + 2) - 1 and
    2 (y + 1) / (H + 2) - 1, reduce to pure scalings of longitude and latitude. lon = +pi
    (x = W) needs no wrap to x = 0: both read the same two columns of the padded image.
    """
    H, W = erp_height, erp_width(erp_height)
    N, h, w = len(cameras), cameras.height, cameras.width
    # One buffer, few passes: (d_x, d_y, d_z, hypot(d_x, d_z)), then atan2 of its two halves
    # gives (lon, -lat) in place; the directions need not be unit for atan2.
    buffer = torch.empty(4, N, h, w, dtype=cameras.dtype, device=cameras.device)
    cameras.world_directions(out=buffer[:3])
    torch.hypot(buffer[0], buffer[2], out=buffer[3])
    angles = torch.atan2(buffer[:2], buffer[2:], out=buffer[:2])  # (2,N,h,w): lon, -lat
    scale = torch.tensor([W / (math.pi * (W + 2)), 2.0 * H / (math.pi * (H + 2))], dtype=cameras.dtype)
    angles.mul_(scale.to(cameras.device)[:, None, None, None])  # lon W / (pi (W + 2)), -lat 2H / (pi (H + 2))
    return angles.permute(1, 2, 3, 0)  # (N,h,w,2), a strided view that grid_sample reads as is


def erp_sampling_grid(cameras: PatchCameras, erp_height: int) -> Tensor:
    """grid_sample grid that reads every patch pixel from a padded ERP (see `pad_erp`).

    Returns:
        (N*h, w, 2) normalised (x, y) coordinates for `F.grid_sample(align_corners=False)`
        on a (H+2, W+2) padded ERP; the N patches are stacked along the rows.
    """
    return _patch_grid(cameras, erp_height).flatten(0, 1)  # (N,h,w,2) -> (N*h,w,2)


def patch_sampling_grid(cameras: PatchCameras, erp_height: int) -> Tensor:
    """(N,h,w,2) grid_sample coordinates of every patch pixel in a padded ERP of height
    `erp_height` (see `pad_erp`), in the cameras' dtype: what `erp_to_patches` reads with,
    computed once for a layout and an ERP size. Contiguous: grid_sample reads it 10-19% faster
    than the strided view (a 2048x1024 panorama's 20 patches of 518 x 518: 33-55 ms ->
    28-44 ms), and it keeps half the memory of the buffer the view is of."""
    return _patch_grid(cameras, erp_height).contiguous()


def erp_to_patches(
    erp: Tensor,
    cameras: PatchCameras,
    mode: SampleMode = "bilinear",
    grid: Tensor | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """Sample perspective patches from ERP images.

    Args:
        erp: (B,C,H,W) ERP images, W = 2H. Floating images are interpolated with `mode`;
            integer label maps must use mode="nearest" and keep their dtype.
        cameras: N patch cameras of size (h, w); every image is sampled by all of them.
        mode: "bilinear" for images and continuous maps, "nearest" for labels.
        grid: the cameras' `patch_sampling_grid` for height H, in the work dtype (float32, or
            float64 for float64 images), when already computed.
        out: optional (B,N,C,h,w) tensor of float32 or float64 `erp`'s dtype to write the
            patches into (a caller's buffer reused from image to image: a fresh one of tens
            of MB costs more in page faults than the sampling).
    Returns:
        (B,N,C,h,w) patches in the dtype of `erp`, on its device (`out` when given).
    """
    if erp.ndim != 4:
        raise ValueError(f"erp must be (B,C,H,W), got {tuple(erp.shape)}")
    is_float = erp.is_floating_point()
    if not is_float and mode != "nearest":
        raise ValueError("integer label maps can only be sampled with mode='nearest'")
    if out is not None and (out.dtype != erp.dtype or not is_float):
        raise ValueError("out must be of a float32 or float64 erp's dtype")
    # Coordinates and interpolation in float32 at least: half precision cannot address
    # pixels of a 2048-wide ERP exactly.
    work_dtype = torch.float64 if erp.dtype == torch.float64 else torch.float32
    out = patches_from_padded(pad_erp(erp.to(work_dtype)), cameras, grid=grid, out=out, mode=mode)
    if is_float:
        return out.to(erp.dtype)
    return out.round_().to(erp.dtype)


def patches_from_padded(
    padded: Tensor,
    cameras: PatchCameras,
    *,
    grid: Tensor | None = None,
    out: Tensor | None = None,
    mode: SampleMode = "bilinear",
) -> Tensor:
    """Sample perspective patches from padded ERP images (`pad_erp`, `pad_samples`).

    Args:
        padded: (B,C,H+2,W+2) float32 or float64 padded ERP images, W = 2H.
        cameras, grid, mode: as for `erp_to_patches`.
        out: optional (B,N,C,h,w) tensor of `padded`'s dtype to write the patches into.
    Returns:
        (B,N,C,h,w) patches in `padded`'s dtype, on its device (`out` when given).
    """
    B, C, H, _ = padded.shape
    H -= 2
    N, h, w = len(cameras), cameras.height, cameras.width
    work_dtype = padded.dtype
    assert work_dtype in (torch.float32, torch.float64), f"padded ERPs are float32 or float64, got {work_dtype}"
    cameras = cameras.to(device=padded.device, dtype=work_dtype)
    # The B images become channels of one input, so that one grid serves all of them.
    padded = padded.reshape(1, B * C, H + 2, padded.shape[-1])  # (B,C,H+2,W+2) -> (1,B*C,H+2,W+2)
    if out is None:
        out = torch.empty(B, N, C, h, w, dtype=work_dtype, device=padded.device)
    elif out.shape != (B, N, C, h, w) or out.dtype != work_dtype:
        raise ValueError(f"out must be ({B}, {N}, {C}, {h}, {w}) {work_dtype}, got {tuple(out.shape)} {out.dtype}")
    # Several patches per call, as batch rows of one expanded (not copied) input: the CPU
    # kernel parallelises over batch rows only, so a call takes a multiple of the thread count.
    threads = torch.get_num_threads()
    step = threads * max(1, _CHUNK_PIXELS // (threads * h * w))
    for start in range(0, N, step):
        chunk = cameras[start : start + step]
        sampled = F.grid_sample(
            padded.expand(len(chunk), -1, -1, -1),
            _patch_grid(chunk, H) if grid is None else grid[start : start + step].to(padded.device, work_dtype),
            mode=mode,
            # Every point lies half a pixel inside the padded image's outer pixel centres, so no
            # read falls outside it and the padding mode changes nothing; "zeros" skips the
            # clamping (4 patches: 9-15 ms -> 8-12 ms, the same values).
            padding_mode="zeros",
            align_corners=False,
        )  # (k,B*C,h,w)
        out[:, start : start + len(chunk)] = sampled.unflatten(1, (B, C)).transpose(0, 1)  # (B,k,C,h,w)
    return out
