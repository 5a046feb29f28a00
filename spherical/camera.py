"""Pinhole patch cameras (OpenCV frame) looking out from the panorama's centre.

A patch camera has a world-from-camera rotation R, a horizontal field of view and a pixel
size (h, w). Square pixels, principal point at the image centre, focal length
f = (w/2) / tan(fov_x/2). Pixel (i, j) (row, col) has the camera ray
c = ((j + 0.5 - w/2)/f, (i + 0.5 - h/2)/f, 1); its world direction is R c.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from spherical.rotation import ypr_to_matrix


def focal_from_fov(fov_x_deg: Tensor | float, width: int) -> Tensor:
    """Focal length in pixels of a pinhole of horizontal FoV `fov_x_deg` and `width` pixels."""
    fov = torch.as_tensor(fov_x_deg, dtype=torch.float64)
    return (width / 2.0) / torch.tan(torch.deg2rad(fov) / 2.0)


def fov_from_focal(focal: Tensor | float, size: int) -> Tensor:
    """Field of view in degrees spanned by `size` pixels at focal length `focal` (pixels)."""
    f = torch.as_tensor(focal, dtype=torch.float64)
    return torch.rad2deg(2.0 * torch.atan((size / 2.0) / f))


@dataclass(frozen=True)
class PatchCameras:
    """A batch of N pinhole patch cameras of one pixel size.

    Fields:
        rotation: (N,3,3) float world-from-camera rotations (a camera direction c is the
            world direction R c).
        fov_x_deg: (N,) float horizontal fields of view, degrees, in (0, 180).
        height: patch height h in pixels.
        width: patch width w in pixels.
    """

    rotation: Tensor
    fov_x_deg: Tensor
    height: int
    width: int

    def __post_init__(self) -> None:
        if self.rotation.ndim != 3 or self.rotation.shape[1:] != (3, 3):
            raise ValueError(f"rotation must be (N,3,3), got {tuple(self.rotation.shape)}")
        if self.fov_x_deg.shape != self.rotation.shape[:1]:
            raise ValueError(
                f"fov_x_deg must be (N,) with N={self.rotation.shape[0]}, got {tuple(self.fov_x_deg.shape)}"
            )
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"patch size must be positive, got {self.height}x{self.width}")
        if bool(((self.fov_x_deg <= 0) | (self.fov_x_deg >= 180)).any()):
            raise ValueError("fov_x_deg must lie in (0, 180) degrees")

    @classmethod
    def from_ypr(
        cls,
        yaw_deg: Tensor | list[float],
        pitch_deg: Tensor | list[float],
        roll_deg: Tensor | list[float] | float = 0.0,
        *,
        fov_x_deg: Tensor | list[float] | float,
        height: int,
        width: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> PatchCameras:
        """Cameras from yaw/pitch/roll angles in degrees (broadcast to a common N)."""

        def as_vec(x: Tensor | list[float] | float) -> Tensor:
            return torch.as_tensor(x, dtype=torch.float64).reshape(-1)

        yaw, pitch, roll, fov = torch.broadcast_tensors(
            as_vec(yaw_deg), as_vec(pitch_deg), as_vec(roll_deg), as_vec(fov_x_deg)
        )
        rotation = ypr_to_matrix(torch.deg2rad(yaw), torch.deg2rad(pitch), torch.deg2rad(roll))
        return cls(
            rotation=rotation.to(dtype=dtype, device=device),
            fov_x_deg=fov.to(dtype=dtype, device=device).clone(),
            height=height,
            width=width,
        )

    def __len__(self) -> int:
        return self.rotation.shape[0]

    def __getitem__(self, index: int | slice | Tensor | list[int]) -> PatchCameras:
        if isinstance(index, int):
            index = slice(index, index + 1)
        return PatchCameras(self.rotation[index], self.fov_x_deg[index], self.height, self.width)

    @property
    def dtype(self) -> torch.dtype:
        return self.rotation.dtype

    @property
    def device(self) -> torch.device:
        return self.rotation.device

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> PatchCameras:
        """The same cameras on another device and/or floating dtype."""
        dtype = dtype or self.dtype
        return PatchCameras(
            self.rotation.to(device=device, dtype=dtype),
            self.fov_x_deg.to(device=device, dtype=dtype),
            self.height,
            self.width,
        )

    @property
    def focal(self) -> Tensor:
        """(N,) focal lengths in pixels, in the cameras' dtype."""
        fov = torch.deg2rad(self.fov_x_deg.to(torch.float64))
        return ((self.width / 2.0) / torch.tan(fov / 2.0)).to(self.dtype)

    @property
    def fov_y_deg(self) -> Tensor:
        """(N,) vertical fields of view in degrees."""
        return fov_from_focal(self.focal.to(torch.float64), self.height).to(self.dtype)

    def intrinsics(self) -> Tensor:
        """(N,3,3) pinhole matrices K mapping camera rays to continuous pixel coordinates."""
        f = self.focal
        K = torch.zeros(len(self), 3, 3, dtype=self.dtype, device=self.device)
        K[:, 0, 0] = f
        K[:, 1, 1] = f
        K[:, 0, 2] = self.width / 2.0
        K[:, 1, 2] = self.height / 2.0
        K[:, 2, 2] = 1.0
        return K

    def _pixel_offsets(self) -> tuple[Tensor, Tensor]:
        """Camera-ray components of the pixel centres: a (N,w) = (j + 0.5 - w/2)/f over columns
        and b (N,h) = (i + 0.5 - h/2)/f over rows, so that c(i, j) = (a_j, b_i, 1)."""
        f = self.focal[:, None]  # (N,1)
        j = torch.arange(self.width, dtype=self.dtype, device=self.device) + (0.5 - self.width / 2)
        i = torch.arange(self.height, dtype=self.dtype, device=self.device) + (0.5 - self.height / 2)
        return j / f, i / f

    def camera_rays(self) -> Tensor:
        """(N,h,w,3) camera-frame rays of the pixel centres, with c_z = 1 (not unit length)."""
        a, b = self._pixel_offsets()
        cx = a[:, None, :].expand(-1, self.height, -1)  # (N,h,w)
        cy = b[:, :, None].expand(-1, -1, self.width)  # (N,h,w)
        return torch.stack((cx, cy, torch.ones_like(cx)), -1)

    def ray_norms(self) -> Tensor:
        """(N,h,w) lengths ||c|| of the c_z = 1 camera rays: range = z-depth * ||c||."""
        return torch.linalg.vector_norm(self.camera_rays(), dim=-1)

    def world_directions(self, out: Tensor | None = None) -> Tensor:
        """(3,N,h,w) world-frame components d_x, d_y, d_z of d = R c for the c_z = 1 camera
        rays of the pixel centres, component-major (`dx, dy, dz = cameras.world_directions()`).
        Not unit length (||d|| = ||c||): for angles (longitude, latitude, projection) the
        length does not matter.

        The rays are separable, c = (a_j, b_i, 1), so d = R[:,0] a_j + R[:,1] b_i + R[:,2] is
        an outer sum of a per-column and a per-row term: one add per pixel and component,
        no per-pixel matrix product (and no matmul, which a TF32 setting would degrade).

        Args:
            out: optional (3,N,h,w) tensor of the cameras' dtype to write into.
        """
        a, b = self._pixel_offsets()  # (N,w), (N,h)
        R = self.rotation.permute(1, 2, 0).contiguous()  # (3,3,N): R[k, m, n]
        per_col = R[:, 0, :, None] * a  # (3,N,w)
        per_row = R[:, 1, :, None] * b + R[:, 2, :, None]  # (3,N,h)
        return torch.add(per_col[:, :, None, :], per_row[:, :, :, None], out=out)  # (3,N,h,w)

    def world_rays(self) -> Tensor:
        """(N,h,w,3) unit world-frame rays of the pixel centres."""
        rays = torch.stack(tuple(self.world_directions()), -1)  # (3,N,h,w) -> (N,h,w,3)
        return rays / torch.linalg.vector_norm(rays, dim=-1, keepdim=True)

    def optical_axes(self) -> Tensor:
        """(N,3) unit world directions of the optical axes (R e_z)."""
        return self.rotation[:, :, 2]

    def project(self, world_dirs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Project world directions into every camera.

        Args:
            world_dirs: (N, ..., 3) world directions, one set per camera (not necessarily unit).
        Returns:
            x, y: (N, ...) continuous pixel coordinates (pixel centres at j + 0.5, i + 0.5).
            z: (N, ...) camera-frame depth of the direction; only z > 0 is in front.
        """
        n = len(self)
        flat = world_dirs.reshape(n, -1, 3)  # (N,M,3)
        cam = torch.einsum("nba,nmb->nma", self.rotation, flat)  # R^T d, (N,M,3)
        f = self.focal[:, None]  # (N,1)
        z = cam[..., 2]
        x = f * cam[..., 0] / z + self.width / 2.0
        y = f * cam[..., 1] / z + self.height / 2.0
        shape = world_dirs.shape[:-1]
        return x.reshape(shape), y.reshape(shape), z.reshape(shape)

    def max_half_angle(self) -> Tensor:
        """(N,) angle in radians between the optical axis and the patch corners."""
        half_w = self.width / 2.0
        half_h = self.height / 2.0
        return torch.atan(math.hypot(half_w, half_h) / self.focal)
