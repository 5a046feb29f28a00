"""DPT-style decoders: reassemble 4 token maps, fuse coarse to fine, predict at full ERP resolution.

The structure follows DPT as Depth Anything uses it on DINOv2 (reassemble to 4x, 2x, 1x and
1/2x the token grid, RefineNet-style fusion, a conv-upsample-conv head); every convolution
and resize pads / wraps horizontally as the config's `padding` says.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from model.blocks import ErpConv2d, resize_erp
from model.config import BridgeNetConfig, Padding

# Width of the last hidden layer of every output head (DPT's value).
HEAD_CHANNELS = 32
POSITIVE_TASKS = ("depth", "gradient", "edge_distance")


class TaskActivation(nn.Module):
    """The output domain of a task, applied to (B,C,H,W) raw predictions.

    depth, gradient, edge_distance: softplus (positive). normals: unit vectors along C
    (F.normalize). semantic (class logits) and points (world-frame metres): unchanged.
    """

    def __init__(self, task: str) -> None:
        super().__init__()
        self.task = task

    def forward(self, x: Tensor) -> Tensor:
        """(B,C,H,W) raw -> (B,C,H,W) in the task's domain."""
        if self.task in POSITIVE_TASKS:
            return F.softplus(x)
        if self.task == "normals":
            return F.normalize(x, dim=1)
        return x

    def extra_repr(self) -> str:
        return self.task


class ResidualConvUnit(nn.Module):
    """x + conv(relu(conv(relu(x)))), 3x3 convolutions at constant width."""

    def __init__(self, features: int, padding: Padding) -> None:
        super().__init__()
        self.conv1 = ErpConv2d(features, features, 3, padding=padding)
        self.conv2 = ErpConv2d(features, features, 3, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        """(B,F,h,w) -> (B,F,h,w)."""
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """One fusion step: add the refined skip level, refine, resize to the next level, project."""

    def __init__(self, features: int, padding: Padding, *, with_skip: bool) -> None:
        super().__init__()
        self.skip_unit = ResidualConvUnit(features, padding) if with_skip else None
        self.unit = ResidualConvUnit(features, padding)
        self.project = nn.Conv2d(features, features, 1)
        self.padding: Padding = padding

    def forward(self, x: Tensor, skip: Tensor | None, size: tuple[int, int]) -> Tensor:
        """x, skip: (B,F,h,w); returns (B,F,*size)."""
        if self.skip_unit is not None:
            assert skip is not None, "this fusion block fuses a skip level"
            x = x + self.skip_unit(skip)
        x = resize_erp(self.unit(x), size, self.padding)
        return self.project(x)


class OutputHead(nn.Module):
    """conv3x3 (F -> F/2), resize to the output size, conv3x3 (-> 32), ReLU, conv1x1, activation."""

    def __init__(self, task: str, features: int, out_channels: int, padding: Padding) -> None:
        super().__init__()
        self.reduce = ErpConv2d(features, features // 2, 3, padding=padding)
        self.refine = ErpConv2d(features // 2, HEAD_CHANNELS, 3, padding=padding)
        self.predict = nn.Conv2d(HEAD_CHANNELS, out_channels, 1)
        self.activation = TaskActivation(task)
        self.padding: Padding = padding

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """x: (B,F,h,w) fused features; returns (B,out_channels,*size)."""
        x = resize_erp(self.reduce(x), size, self.padding)
        return self.activation(self.predict(F.relu(self.refine(x))))


class AuxiliaryHead(nn.Module):
    """Light head of an auxiliary task: conv1x1 (F -> F/2), ReLU, conv1x1 at the fused resolution
    (8x the token grid), then the prediction is resized to the output size; activation last.

    Auxiliary maps are extra supervision: their heads read the fused features (which already
    carry 3x3 context) pixel-wise and skip the full-resolution convolutions of `OutputHead`.
    """

    def __init__(self, task: str, features: int, out_channels: int, padding: Padding) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(features, features // 2, 1)
        self.predict = nn.Conv2d(features // 2, out_channels, 1)
        self.activation = TaskActivation(task)
        self.padding: Padding = padding

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """x: (B,F,h,w) fused features; returns (B,out_channels,*size)."""
        prediction = self.predict(F.relu(self.reduce(x)))
        return self.activation(resize_erp(prediction, size, self.padding))


class DPTDecoder(nn.Module):
    """One main task's decoder, with the light heads of the auxiliary tasks that share it.

    Input: 4 levels (B,D,h,2h) on the token grid, shallow to deep. Output: task -> (B,C_t,H,W).
    """

    def __init__(self, config: BridgeNetConfig, head_tasks: tuple[str, ...]) -> None:
        """head_tasks: the main task, then the auxiliary tasks whose heads share this decoder."""
        super().__init__()
        dim, features, channels = config.hidden_size, config.decoder_features, config.reassemble_channels
        padding = config.padding
        self.project = nn.ModuleList(nn.Conv2d(dim, c, 1) for c in channels)
        self.resample = nn.ModuleList(
            [
                nn.ConvTranspose2d(channels[0], channels[0], 4, stride=4),  # 4x
                nn.ConvTranspose2d(channels[1], channels[1], 2, stride=2),  # 2x
                nn.Identity(),  # 1x
                ErpConv2d(channels[3], channels[3], 3, padding=padding, stride=2),  # 1/2x
            ]
        )
        self.level_convs = nn.ModuleList(ErpConv2d(c, features, 3, padding=padding, bias=False) for c in channels)
        # fusion[i] fuses level i; the deepest (3) starts the path and has no skip.
        self.fusion = nn.ModuleList(FusionBlock(features, padding, with_skip=i < 3) for i in range(4))
        main, *auxiliary = head_tasks
        self.heads = nn.ModuleDict({main: OutputHead(main, features, config.task_channels(main), padding)})
        self.heads.update(
            {task: AuxiliaryHead(task, features, config.task_channels(task), padding) for task in auxiliary}
        )

    def forward(self, levels: list[Tensor], size: tuple[int, int]) -> dict[str, Tensor]:
        """levels: 4 x (B,D,h,2h); size: (H, W) of the output. Returns task -> (B,C_t,H,W)."""
        maps = [
            conv(resample(project(x)))
            for x, project, resample, conv in zip(levels, self.project, self.resample, self.level_convs, strict=True)
        ]  # (B,F,4h,8h), (B,F,2h,4h), (B,F,h,2h), (B,F,h/2,h)
        path = self.fusion[3](maps[3], None, maps[2].shape[-2:])
        path = self.fusion[2](path, maps[2], maps[1].shape[-2:])
        path = self.fusion[1](path, maps[1], maps[0].shape[-2:])
        h, w = maps[0].shape[-2:]
        path = self.fusion[0](path, maps[0], (2 * h, 2 * w))  # (B,F,8h,16h)
        return {task: head(path, size) for task, head in self.heads.items()}
