"""The panoramic neck: geometry-aware grouping and the cross-group bridge with gradient truncation.

Per group (invariant and variant, or one shared group), on the token grid:
  grouping    y_l = x_l + stack_l(x_l) for the 4 encoder levels x_l (zero-init residual).
  aggregation a = block(sum_l reduce_l(y_l)): the group's generic map.
  heads       per task of the group: feature f_t = gelu(conv3x3(a)), coarse prediction conv1x1(f_t).
  attention   a' = a + attn(query a, keys/values [pool(f_t) for every task of every group]);
              in each bridge the other group's f_t are detached when gradients are truncated.
  injection   per decoded task t: b_t = a' + adapter_t(a'); z_{t,l} = y_l + inject_l(b_t),
              with zero-initialised adapters and 1x1 injections.
The decoders read z_{t,l}; at init z_{t,l} = x_l, the plain encoder features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.blocks import ErpConv2d, GroupStack, PanoBlock
from model.config import BridgeNetConfig, Padding
from model.decoder import TaskActivation
from model.geometry import ErpGeometry, GeometryMaps


class TaskHead(nn.Module):
    """Light auxiliary head of the bridge: a task feature and the task's coarse prediction."""

    def __init__(self, task: str, channels: int, out_channels: int, padding: Padding) -> None:
        super().__init__()
        self.feature = ErpConv2d(channels, channels, 3, padding=padding)
        self.predict = nn.Conv2d(channels, out_channels, 1)
        self.activation = TaskActivation(task)

    def forward(self, generic: Tensor) -> tuple[Tensor, Tensor]:
        """generic: (B,C,h,w). Returns the feature (B,C,h,w) and the prediction (B,C_t,h,w)."""
        feature = F.gelu(self.feature(generic))
        return feature, self.activation(self.predict(feature))


class CrossTaskAttention(nn.Module):
    """Pre-norm transformer block whose queries are the generic map's pixels and whose keys and
    values are the pixels of all task features, average-pooled by `memory_stride` (global
    context at 1/stride^2 of the cost). No position encoding: it commutes with half-turn rolls
    whenever the pooling windows do (h divisible by the stride)."""

    def __init__(self, channels: int, heads: int, memory_stride: int) -> None:
        super().__init__()
        self.heads = heads
        self.memory_stride = memory_stride
        self.norm_query = nn.LayerNorm(channels)
        self.norm_memory = nn.LayerNorm(channels)
        self.query = nn.Linear(channels, channels)
        self.key_value = nn.Linear(channels, 2 * channels)
        self.out = nn.Linear(channels, channels)
        self.norm_mlp = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, 4 * channels), nn.GELU(), nn.Linear(4 * channels, channels))

    def forward(self, generic: Tensor, task_features: list[Tensor]) -> Tensor:
        """generic: (B,C,h,w); task_features: T x (B,C,h,w). Returns (B,C,h,w)."""
        B, C, h, w = generic.shape
        x = generic.flatten(2).transpose(1, 2)  # (B,C,h,w) -> (B,h*w,C)
        pooled = [F.avg_pool2d(f, self.memory_stride, ceil_mode=True) for f in task_features]  # T x (B,C,h',w')
        memory = torch.cat([f.flatten(2) for f in pooled], dim=2).transpose(1, 2)  # (B,T*h'*w',C)
        q = self.query(self.norm_query(x)).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B,heads,h*w,C/heads)
        kv = self.key_value(self.norm_memory(memory)).unflatten(-1, (2, self.heads, -1))  # (B,T*h'*w',2,heads,C/heads)
        k, v = kv.permute(2, 0, 3, 1, 4)  # 2 x (B,heads,T*h'*w',C/heads)
        attended = F.scaled_dot_product_attention(q, k, v)  # (B,heads,h*w,C/heads)
        x = x + self.out(attended.transpose(1, 2).flatten(2))  # (B,h*w,heads,C/heads) -> (B,h*w,C)
        x = x + self.mlp(self.norm_mlp(x))
        return x.transpose(1, 2).reshape(B, C, h, w)  # (B,h*w,C) -> (B,C,h,w)


class TaskAdapter(nn.Module):
    """b + conv1x1(gelu(conv1x1(b))) on (B,C,h,w): specialises the bridge output to one task.

    The last convolution is zero-initialised (the adapter starts as the identity)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.hidden = nn.Conv2d(channels, channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(B,C,h,w) -> (B,C,h,w)."""
        return x + self.out(F.gelu(self.hidden(x)))


class GroupBridge(nn.Module):
    """The bridge of one group (see the module docstring)."""

    def __init__(
        self, config: BridgeNetConfig, tasks: tuple[str, ...], decoded: tuple[str, ...], modulated: bool
    ) -> None:
        super().__init__()
        dim, channels, padding = config.hidden_size, config.bridge_channels, config.padding
        self.reduce = nn.ModuleList(nn.Conv2d(dim, channels, 1) for _ in range(4))
        self.aggregate = PanoBlock(
            channels,
            modulated=modulated,
            erp_mixer=config.erp_mixer,
            wide_kernel=config.wide_kernel,
            padding=padding,
        )
        self.heads = nn.ModuleDict({t: TaskHead(t, channels, config.task_channels(t), padding) for t in tasks})
        self.attention = CrossTaskAttention(channels, config.bridge_heads, config.bridge_memory_stride)
        self.adapters = nn.ModuleDict({t: TaskAdapter(channels) for t in decoded})
        self.inject = nn.ModuleList(nn.Conv2d(channels, dim, 1) for _ in range(4))
        self._init_weights()

    def _init_weights(self) -> None:
        for conv in self.inject:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def summarise(
        self, levels: list[Tensor], geometry: GeometryMaps
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """levels: 4 x (B,D,h,w) group features. Returns the generic map (B,C,h,w) and, per
        task of the group, its feature (B,C,h,w) and coarse prediction (B,C_t,h,w)."""
        generic = self.aggregate(sum(r(x) for r, x in zip(self.reduce, levels, strict=True)), geometry)
        features, coarse = {}, {}
        for task, head in self.heads.items():
            features[task], coarse[task] = head(generic)
        return generic, features, coarse

    def inject_into(self, levels: list[Tensor], generic: Tensor, memory: list[Tensor]) -> dict[str, list[Tensor]]:
        """Decoder inputs of the group's decoded tasks: task -> 4 x (B,D,h,w).

        memory: the task features the generic map attends to (T x (B,C,h,w)).
        """
        bridged = self.attention(generic, memory)
        out = {}
        for task, adapter in self.adapters.items():
            adapted = adapter(bridged)
            out[task] = [x + inject(adapted) for x, inject in zip(levels, self.inject, strict=True)]
        return out


class PanoramicNeck(nn.Module):
    """Grouping and bridges between the encoder and the decoders, on the token grid."""

    def __init__(self, config: BridgeNetConfig) -> None:
        super().__init__()
        groups = config.group_tasks()
        decoded = config.decoder_heads()
        self.task_group = {task: config.group_of(task) for task in decoded}
        self.truncate = config.gradient_truncation
        # The invariant group must not see absolute position; the variant and shared ones may.
        modulated = {g: config.geometry_modulation and g != "invariant" for g in groups}
        self.geometry = ErpGeometry()
        self.grouping = (
            nn.ModuleDict(
                {
                    g: nn.ModuleList(
                        GroupStack(
                            config.hidden_size,
                            config.group_channels,
                            config.group_blocks,
                            modulated=modulated[g],
                            erp_mixer=config.erp_mixer,
                            wide_kernel=config.wide_kernel,
                            padding=config.padding,
                        )
                        for _ in range(4)
                    )
                    for g in groups
                }
            )
            if config.use_grouping
            else None
        )
        self.bridges = (
            nn.ModuleDict(
                {
                    g: GroupBridge(config, tasks, tuple(t for t in decoded if t in tasks), modulated[g])
                    for g, tasks in groups.items()
                }
            )
            if config.use_bridge
            else None
        )

    def forward(self, levels: list[Tensor]) -> tuple[dict[str, list[Tensor]], dict[str, Tensor]]:
        """levels: 4 x (B,D,h,2h) encoder features.

        Returns the decoder inputs (decoded task -> 4 x (B,D,h,2h)) and the bridge heads'
        coarse predictions (task -> (B,C_t,h,2h); empty without the bridge).
        """
        geometry = self.geometry(levels[0])
        if self.grouping is None:
            grouped = {g: levels for g in set(self.task_group.values())}
        else:
            grouped = {
                g: [stack(x, geometry) for stack, x in zip(stacks, levels, strict=True)]
                for g, stacks in self.grouping.items()
            }
        if self.bridges is None:
            return {task: grouped[g] for task, g in self.task_group.items()}, {}
        summaries = {g: bridge.summarise(grouped[g], geometry) for g, bridge in self.bridges.items()}
        coarse = {task: c for _, _, group_coarse in summaries.values() for task, c in group_coarse.items()}
        inputs: dict[str, list[Tensor]] = {}
        for g, bridge in self.bridges.items():
            # Gradient truncation: information from the other group, not its gradients.
            memory = [
                f if (other == g or not self.truncate) else f.detach()
                for other, (_, features, _) in summaries.items()
                for f in features.values()
            ]
            inputs.update(bridge.inject_into(grouped[g], summaries[g][0], memory))
        return inputs, coarse
