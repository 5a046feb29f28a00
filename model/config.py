"""BridgeNet configuration: one typed dataclass, named presets, the task table.

Tasks split into two groups by how they behave when the panorama is rotated about the
vertical axis: rotation-invariant tasks (depth, semantic segmentation and the auxiliary
image-gradient and edge-distance maps) and rotation-variant tasks (world-frame surface
normals and the auxiliary 3-D point map).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

Padding = Literal["circular", "zeros"]

MAIN_TASKS: tuple[str, ...] = ("depth", "semantic", "normals")
INVARIANT_TASKS: tuple[str, ...] = ("depth", "semantic")
VARIANT_TASKS: tuple[str, ...] = ("normals",)
# Auxiliary tasks of each group: extra supervision, present when their group has a main task.
INVARIANT_AUX_TASKS: tuple[str, ...] = ("gradient", "edge_distance")
VARIANT_AUX_TASKS: tuple[str, ...] = ("points",)
# Output channels of every task but `semantic`, whose channels are `num_classes`.
TASK_CHANNELS: dict[str, int] = {"depth": 1, "normals": 3, "gradient": 1, "edge_distance": 1, "points": 3}


@dataclass(frozen=True)
class BridgeNetConfig:
    """Every size and design choice of BridgeNet; the trainer runs ablations by flipping switches.

    The defaults are the `small` preset with every panoramic addition on. Parameter names
    below are `BridgeNet.named_parameters()` prefixes; <g> is a group (`invariant`,
    `variant`, or `shared` when `dual_groups` is False), <l> a level 0..3, <t> a task.

    Switches and the parameters each one adds (+) when turned on:
      use_grouping: + `neck.grouping.<g>.<l>.*` (per level: 1x1 in-projection, `group_blocks`
          residual blocks, zero-initialised 1x1 out-projection).
      use_bridge: + `neck.bridges.<g>.*` (per group: per-level 1x1 reductions, an aggregation
          block, one head per task of the group, the cross-attention block, one adapter per
          decoded task, per-level zero-initialised 1x1 injections).
      dual_groups: two groups `invariant` and `variant` instead of one `shared` group: the
          grouping stacks and the group-level bridge parts (reductions, aggregation block,
          attention, injections) exist twice; task heads and adapters are the same set,
          split between the two bridges. Needs a main task in each group.
      gradient_truncation: no parameters; in each bridge the other group's task features
          are detached (needs `use_bridge` and `dual_groups`).
      geometry_modulation: + `*.film.*` (a 1x1-GELU-1x1 map from the 5-channel geometry code
          to a per-pixel scale and shift) in every block of the variant or shared group: its
          grouping blocks and its bridge aggregation block. The invariant group is never
          modulated. Needs `use_grouping` or `use_bridge`.
      erp_mixer: + `*.mixer.wide.*` (a depthwise 3 x `wide_kernel` convolution) in every
          residual block; without it the blocks mix with the dense 3x3 convolution alone.
          Needs `use_grouping` or `use_bridge`.
      padding: no parameters; horizontal padding and resampling of every convolution and
          resize outside the encoder (including the resize of the input to the encoder's
          size): "circular" wraps in longitude, "zeros" does not.
      aux_tasks: + `neck.bridges.<g>.heads.{gradient,edge_distance,points}.*` (when the
          bridge is on) and the light decoder heads `decoders.<t>.heads.<aux>.*` (gradient
          and edge distance on the first invariant main task's decoder, points on the
          normals decoder).
      tasks: each main task adds `decoders.<t>.*`, and with the bridge
          `neck.bridges.<g>.heads.<t>.*` and `neck.bridges.<g>.adapters.<t>.*`.
    """

    # --- Encoder: DINOv2 through transformers' Dinov2Model / Dinov2WithRegistersModel.
    # Width of the ViT tokens (DINOv2 S/B/L: 384/768/1024).
    hidden_size: int = 384
    # Number of transformer blocks.
    num_layers: int = 12
    # Attention heads per block.
    num_heads: int = 6
    # Side of the square patches in pixels; the token grid is (H/p, W/p).
    patch_size: int = 14
    # Image side the position embeddings were made for ((image_size/p)^2 positions); they
    # are interpolated to the actual, non-square token grid.
    encoder_image_size: int = 518
    # Register tokens after the CLS token; > 0 selects Dinov2WithRegistersModel.
    num_register_tokens: int = 0
    # The 0-based transformer blocks whose outputs feed the 4 levels, shallow to deep.
    encoder_layers: tuple[int, int, int, int] = (2, 5, 8, 11)
    # Directory of a transformers checkpoint (`save_pretrained` layout) to initialise the
    # encoder from; None initialises it at random. Used at construction only.
    encoder_checkpoint: str | None = None

    # --- DPT decoders, one per main task.
    # Width of the fusion path.
    decoder_features: int = 64
    # Channels of the 4 reassembled levels (at 4x, 2x, 1x and 1/2x the token grid).
    reassemble_channels: tuple[int, int, int, int] = (48, 96, 192, 384)

    # --- Tasks.
    # Main tasks, a subset of MAIN_TASKS: each gets a decoder and an output.
    tasks: tuple[str, ...] = MAIN_TASKS
    # Semantic classes (ADE20K-150 by default).
    num_classes: int = 150
    # Auxiliary tasks on/off: image gradient and edge distance (invariant), point map (variant).
    aux_tasks: bool = True

    # --- Panoramic additions (see the class docstring for the parameters of each switch).
    # Geometry-aware grouping: residual stacks per level and group on the encoder features.
    use_grouping: bool = True
    # Two groups (invariant, variant) or one shared group.
    dual_groups: bool = True
    # Width of the grouping stacks.
    group_channels: int = 96
    # Residual blocks per grouping stack.
    group_blocks: int = 2
    # FiLM of the variant (or shared) group's blocks by ray direction and longitude/latitude.
    geometry_modulation: bool = True
    # Latitude-adaptive mixing (dense 3x3 blended with a wide depthwise conv by |ray_y|).
    erp_mixer: bool = True
    # Width of the depthwise convolution used near the poles (odd).
    wide_kernel: int = 9
    # Horizontal padding of every convolution and resize outside the encoder.
    padding: Padding = "circular"
    # Bridge: aggregation, task heads, cross-attention, injection and adapters.
    use_bridge: bool = True
    # Width of the bridge.
    bridge_channels: int = 96
    # Heads of the bridge's cross-attention.
    bridge_heads: int = 4
    # Average-pooling stride of the task features the bridge attends to: 1 keeps every
    # token, 2 keeps a quarter of the keys and of the attention's cost.
    bridge_memory_stride: int = 2
    # Detach the other group's task features inside each bridge.
    gradient_truncation: bool = True

    def __post_init__(self) -> None:
        # JSON and keyword overrides may give lists; the config stays hashable and comparable.
        for name in ("encoder_layers", "reassemble_channels", "tasks"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self._validate()

    def _validate(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        layers = self.encoder_layers
        increasing = list(layers) == sorted(set(layers))
        if len(layers) != 4 or not increasing or not 0 <= layers[0] <= layers[-1] < self.num_layers:
            raise ValueError(f"encoder_layers must be 4 increasing blocks in [0, {self.num_layers}), got {layers}")
        if len(self.reassemble_channels) != 4:
            raise ValueError(f"reassemble_channels must have 4 entries, got {self.reassemble_channels}")
        if self.num_register_tokens < 0:
            raise ValueError(f"num_register_tokens must be >= 0, got {self.num_register_tokens}")
        unknown = [t for t in self.tasks if t not in MAIN_TASKS]
        if not self.tasks or unknown or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks must be distinct names from {MAIN_TASKS}, got {self.tasks}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {self.num_classes}")
        if self.padding not in ("circular", "zeros"):
            raise ValueError(f"padding must be 'circular' or 'zeros', got {self.padding!r}")
        if self.wide_kernel < 3 or self.wide_kernel % 2 == 0:
            raise ValueError(f"wide_kernel must be odd and >= 3, got {self.wide_kernel}")
        if self.bridge_memory_stride < 1:
            raise ValueError(f"bridge_memory_stride must be >= 1, got {self.bridge_memory_stride}")
        if self.bridge_channels % self.bridge_heads:
            raise ValueError(
                f"bridge_channels {self.bridge_channels} is not divisible by bridge_heads {self.bridge_heads}"
            )
        has_neck = self.use_grouping or self.use_bridge
        # A switch that is on must act on something: an ablation table must not list a
        # design choice that the network silently ignored.
        for switch in ("dual_groups", "geometry_modulation", "erp_mixer"):
            if getattr(self, switch) and not has_neck:
                raise ValueError(f"{switch}=True needs use_grouping or use_bridge; set {switch}=False")
        if self.gradient_truncation and not (self.use_bridge and self.dual_groups):
            raise ValueError(
                "gradient_truncation=True needs use_bridge=True and dual_groups=True "
                "(it detaches the other group's task features in each bridge); set gradient_truncation=False"
            )
        if self.dual_groups and not (self.group_has_main_task("invariant") and self.group_has_main_task("variant")):
            raise ValueError(
                f"dual_groups=True needs an invariant task {INVARIANT_TASKS} and a variant task {VARIANT_TASKS}, "
                f"got tasks={self.tasks}; set dual_groups=False"
            )

    # --- Presets and serialisation.

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> BridgeNetConfig:
        """The named preset (`tiny`, `small`, `base`, `large`) with fields overridden by keyword."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise TypeError(f"BridgeNetConfig has no field(s) {unknown}")
        return cls(**{**PRESETS[name], **overrides})

    def baseline(self) -> BridgeNetConfig:
        """The same encoder, decoders and tasks with every panoramic addition off.

        That is DINOv2 + one DPT decoder per task with zero padding and no auxiliary tasks:
        the reference the panoramic additions are measured against.
        """
        return dataclasses.replace(
            self,
            aux_tasks=False,
            use_grouping=False,
            use_bridge=False,
            dual_groups=False,
            gradient_truncation=False,
            geometry_modulation=False,
            erp_mixer=False,
            padding="zeros",
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BridgeNetConfig:
        """Inverse of `to_dict`. Every field must be given: a default standing in for a missing
        entry could silently build another architecture than the one saved."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = sorted(set(data) - fields), sorted(fields - set(data))
        if unknown or missing:
            raise ValueError(f"BridgeNetConfig dict: unknown field(s) {unknown}, missing field(s) {missing}")
        return cls(**data)

    # --- Task layout derived from the switches.

    def group_has_main_task(self, group: str) -> bool:
        members = INVARIANT_TASKS if group == "invariant" else VARIANT_TASKS
        return any(t in self.tasks for t in members)

    @property
    def aux_task_names(self) -> tuple[str, ...]:
        """Auxiliary tasks present: those of each group that has a main task, when enabled."""
        if not self.aux_tasks:
            return ()
        present = INVARIANT_AUX_TASKS if self.group_has_main_task("invariant") else ()
        return present + (VARIANT_AUX_TASKS if self.group_has_main_task("variant") else ())

    def task_channels(self, task: str) -> int:
        """Output channels of a main or auxiliary task."""
        return self.num_classes if task == "semantic" else TASK_CHANNELS[task]

    def group_of(self, task: str) -> str:
        """The group a main or auxiliary task belongs to."""
        if not self.dual_groups:
            return "shared"
        return "invariant" if task in INVARIANT_TASKS + INVARIANT_AUX_TASKS else "variant"

    def group_tasks(self) -> dict[str, tuple[str, ...]]:
        """Group name -> its main and auxiliary tasks, in a fixed order."""
        groups: dict[str, tuple[str, ...]] = {}
        for task in tuple(t for t in MAIN_TASKS if t in self.tasks) + self.aux_task_names:
            group = self.group_of(task)
            groups[group] = (*groups.get(group, ()), task)
        return groups

    def decoder_heads(self) -> dict[str, tuple[str, ...]]:
        """Main task -> the tasks whose output heads share its decoder (itself first).

        Invariant auxiliary heads sit on the first invariant main task's decoder, the point
        map on the normals decoder.
        """
        heads = {task: (task,) for task in MAIN_TASKS if task in self.tasks}
        for aux in self.aux_task_names:
            members = INVARIANT_TASKS if aux in INVARIANT_AUX_TASKS else VARIANT_TASKS
            trunk = next(t for t in members if t in self.tasks)
            heads[trunk] = (*heads[trunk], aux)
        return heads


# Sizes follow DINOv2 ViT-S/B/L/14 and the DPT decoders Depth Anything pairs with them;
# `tiny` is a random-init model for tests.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "hidden_size": 32,
        "num_layers": 4,
        "num_heads": 2,
        "encoder_image_size": 56,
        "encoder_layers": (0, 1, 2, 3),
        "decoder_features": 16,
        "reassemble_channels": (8, 16, 32, 32),
        "group_channels": 16,
        "group_blocks": 2,
        "bridge_channels": 16,
        "bridge_heads": 2,
    },
    "small": {
        "hidden_size": 384,
        "num_layers": 12,
        "num_heads": 6,
        "encoder_image_size": 518,
        "encoder_layers": (2, 5, 8, 11),
        "decoder_features": 64,
        "reassemble_channels": (48, 96, 192, 384),
        "group_channels": 96,
        "group_blocks": 2,
        "bridge_channels": 96,
        "bridge_heads": 4,
    },
    "base": {
        "hidden_size": 768,
        "num_layers": 12,
        "num_heads": 12,
        "encoder_image_size": 518,
        "encoder_layers": (2, 5, 8, 11),
        "decoder_features": 128,
        "reassemble_channels": (96, 192, 384, 768),
        "group_channels": 128,
        "group_blocks": 2,
        "bridge_channels": 128,
        "bridge_heads": 4,
    },
    "large": {
        "hidden_size": 1024,
        "num_layers": 24,
        "num_heads": 16,
        "encoder_image_size": 518,
        "encoder_layers": (4, 11, 17, 23),
        "decoder_features": 256,
        "reassemble_channels": (256, 512, 1024, 1024),
        "group_channels": 192,
        "group_blocks": 2,
        "bridge_channels": 192,
        "bridge_heads": 8,
    },
}
