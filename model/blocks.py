"""Panoramic building blocks: ERP padding and resizing, the ERP token mixer, FiLM, residual blocks.

Longitude wraps around an ERP image, latitude does not: with `padding="circular"` every
convolution pads and every resize interpolates across the left/right edge (+-180 degrees),
and pads with zeros / clamps at the top and bottom rows (the poles). `padding="zeros"` pads
with zeros on all sides, as the method's reference code does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import Padding
from model.geometry import GeometryMaps


def wrap_longitude(x: Tensor, cols: int) -> Tensor:
    """(B,C,h,w) -> (B,C,h,w+2*cols): the last `cols` columns before the first, the first after the last."""
    # One concatenation: about twice as fast as F.pad(mode="circular"), forward and backward, on the CPU.
    return torch.cat((x[..., -cols:], x, x[..., :cols]), dim=-1)


def resize_erp(x: Tensor, size: tuple[int, int], padding: Padding) -> Tensor:
    """Bilinear resize of (B,C,h,w) maps to (B,C,*size) with pixel-centre alignment.

    Identical to `F.interpolate(..., mode="bilinear", align_corners=False)` inside the image.
    With circular padding the columns at the left/right edges interpolate across the seam
    instead of clamping, so the resize commutes with rolls by whole output/input periods.
    """
    h, w = x.shape[-2:]
    out_h, out_w = size
    if (h, w) == (out_h, out_w):
        return x
    if padding == "zeros":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    padded = wrap_longitude(x, 1)  # (B,C,h,w+2)
    if out_w % w == 0:
        # An integer width factor: interpolating the padded map then cropping one factor's worth of
        # columns on each side puts every output column exactly where F.interpolate would.
        scale = out_w // w
        wide = F.interpolate(padded, size=(out_h, out_w + 2 * scale), mode="bilinear", align_corners=False)
        return wide[..., scale : scale + out_w]  # (B,C,out_h,out_w)
    # Other factors: sample the output pixel centres from the padded map.
    ys = (torch.arange(out_h, device=x.device, dtype=x.dtype) + 0.5) * (h / out_h)  # input rows + 0.5
    xs = (torch.arange(out_w, device=x.device, dtype=x.dtype) + 0.5) * (w / out_w) + 1.0  # +1: padded column
    gy = 2.0 * ys / h - 1.0
    gx = 2.0 * xs / (w + 2) - 1.0
    grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), -1)  # (out_h,out_w,2) as (x, y)
    grid = grid.expand(x.shape[0], -1, -1, -1)  # (B,out_h,out_w,2)
    return F.grid_sample(padded, grid, mode="bilinear", padding_mode="border", align_corners=False)


class ErpConv2d(nn.Conv2d):
    """`nn.Conv2d` with 'same' padding that wraps in longitude (or is zero) and is zero in latitude.

    Odd kernels only; with stride s the output is (ceil(h/s), ceil(w/s)). The zero padding is
    the convolution's own; only the circular columns are padded by hand (one copy).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        *,
        padding: Padding,
        stride: int = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        assert kh % 2 == 1 and kw % 2 == 1, f"ErpConv2d needs odd kernels, got {kernel_size}"
        wrap = kw // 2 if padding == "circular" else 0
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=(kh // 2, kw // 2 - wrap),
            groups=groups,
            bias=bias,
        )
        self.wrap = wrap

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(wrap_longitude(x, self.wrap) if self.wrap else x)


class ErpTokenMixer(nn.Module):
    """Latitude-adaptive spatial mixing of (B,C,h,2h) ERP features.

    Near the equator ERP pixels are nearly square and a dense 3x3 convolution fits; towards
    the poles a row covers ever less of the sphere, so the mixer blends in a horizontally
    wide depthwise convolution (3 x `wide_kernel`). Per row:
    out = (1 - |ray_y|) * dense(x) + |ray_y| * wide(x). With `erp_mixer` off, dense alone.
    """

    def __init__(self, channels: int, *, erp_mixer: bool, wide_kernel: int, padding: Padding) -> None:
        super().__init__()
        self.dense = ErpConv2d(channels, channels, 3, padding=padding)
        self.wide = (
            ErpConv2d(channels, channels, (3, wide_kernel), padding=padding, groups=channels) if erp_mixer else None
        )

    def forward(self, x: Tensor, pole_weight: Tensor) -> Tensor:
        """x: (B,C,h,w); pole_weight: (1,1,h,1) |ray_y| per row. Returns (B,C,h,w)."""
        dense = self.dense(x)
        if self.wide is None:
            return dense
        return torch.lerp(dense, self.wide(x), pole_weight.to(dense.dtype))  # autocast: the convs may be bf16


class GeometryFiLM(nn.Module):
    """Per-pixel scale and shift of (B,C,h,w) features from the 5-channel geometry code.

    out = x * (1 + scale) + shift with (scale, shift) = conv1x1(gelu(conv1x1(code))); the last
    convolution is zero-initialised, so the modulation starts as the identity.
    """

    def __init__(self, channels: int, code_channels: int = 5) -> None:
        super().__init__()
        self.hidden = nn.Conv2d(code_channels, channels, 1)
        self.out = nn.Conv2d(channels, 2 * channels, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, code: Tensor) -> Tensor:
        """x: (B,C,h,w); code: (1,5,h,w). Returns (B,C,h,w)."""
        scale, shift = self.out(F.gelu(self.hidden(code))).chunk(2, dim=1)  # (1,2C,h,w) -> 2 x (1,C,h,w)
        return x * (1.0 + scale) + shift


class PanoBlock(nn.Module):
    """Residual block x + proj(gelu(film(norm(mixer(x))))) on (B,C,h,2h) ERP features.

    `proj` (1x1) is zero-initialised: the block starts as the identity. `film` exists only
    in geometry-modulated blocks.
    """

    def __init__(self, channels: int, *, modulated: bool, erp_mixer: bool, wide_kernel: int, padding: Padding) -> None:
        super().__init__()
        self.mixer = ErpTokenMixer(channels, erp_mixer=erp_mixer, wide_kernel=wide_kernel, padding=padding)
        self.norm = nn.GroupNorm(1, channels)
        self.film = GeometryFiLM(channels) if modulated else None
        self.proj = nn.Conv2d(channels, channels, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, geometry: GeometryMaps) -> Tensor:
        """x: (B,C,h,2h); geometry of the same grid. Returns (B,C,h,2h)."""
        y = self.norm(self.mixer(x, geometry.pole_weight))
        if self.film is not None:
            y = self.film(y, geometry.code)
        return x + self.proj(F.gelu(y))


class GroupStack(nn.Module):
    """One level of one group: x + out(blocks(in(x))) on (B,D,h,2h) encoder features.

    The 1x1 projections move between the encoder width D and the group width; `out` is
    zero-initialised, so at init the stack returns the encoder features unchanged.
    """

    def __init__(
        self,
        dim: int,
        channels: int,
        num_blocks: int,
        *,
        modulated: bool,
        erp_mixer: bool,
        wide_kernel: int,
        padding: Padding,
    ) -> None:
        super().__init__()
        self.project_in = nn.Conv2d(dim, channels, 1)
        self.blocks = nn.ModuleList(
            PanoBlock(channels, modulated=modulated, erp_mixer=erp_mixer, wide_kernel=wide_kernel, padding=padding)
            for _ in range(num_blocks)
        )
        self.project_out = nn.Conv2d(channels, dim, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.zeros_(self.project_out.weight)
        nn.init.zeros_(self.project_out.bias)

    def forward(self, x: Tensor, geometry: GeometryMaps) -> Tensor:
        """x: (B,D,h,2h) one level's features; geometry of the same grid. Returns (B,D,h,2h)."""
        y = self.project_in(x)
        for block in self.blocks:
            y = block(y, geometry)
        return x + self.project_out(y)
