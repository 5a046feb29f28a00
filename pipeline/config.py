"""Configuration of a labelling run: what decides the labels, and how the run is executed."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.fusion import FusionConfig
from spherical.layouts import DEFAULT_LAYOUT, Layout, parse_layout

DEFAULT_PATCH_SIZE = 518  # Depth Anything's native input: patches reach the teacher unresized
DEFAULT_ERP_HEIGHT = 512


@dataclass(frozen=True)
class LabelConfig:
    """Everything that decides a store's labels (a store refuses a run whose config differs)."""

    # Teacher specs per task: preset name, hf:..., py:..., sim[:...], geometric (normals) or none.
    depth_teacher: str = "quality"
    semantic_teacher: str = "quality"
    normal_teacher: str = "quality"
    # Patch layout: cube | icosahedron | fibonacci:N | random:N.
    layout: str = DEFAULT_LAYOUT
    # Horizontal FoV of every patch in degrees; None keeps the layout's default.
    fov_deg: float | None = None
    # Seed of random:N layouts.
    layout_seed: int = 0
    # Patch side in pixels (patches are square).
    patch_size: int = DEFAULT_PATCH_SIZE
    # Label height H; labels are H x 2H.
    erp_height: int = DEFAULT_ERP_HEIGHT
    # Also store the teachers' raw patch outputs and cameras.
    keep_patches: bool = False
    # Re-projection weights, alignment and confidence.
    fusion: FusionConfig = field(default_factory=FusionConfig)

    def teacher_specs(self) -> dict[str, str]:
        return {"depth": self.depth_teacher, "semantic": self.semantic_teacher, "normals": self.normal_teacher}

    def patch_layout(self) -> Layout:
        return parse_layout(self.layout, self.fov_deg, seed=self.layout_seed)


@dataclass(frozen=True)
class RunOptions:
    """How a labelling or prediction run executes (does not change what it writes)."""

    # Ray workers: one per GPU when GPUs are present, else CPU workers; None = all devices.
    workers: int | None = None
    # Address of a running Ray cluster to join; None starts a local one.
    address: str | None = None
    # Replace a store made with another configuration.
    overwrite: bool = False
    # Panoramas per worker call: teacher batches span their patches.
    panoramas_per_call: int = 2
    # Torch threads per CPU worker; None divides the machine's cores between the workers.
    threads_per_worker: int | None = None
    # Seconds between manifest consolidations while the run goes on.
    consolidate_every_s: float = 30.0
    # Label in this process, one call at a time, without Ray (debugging a teacher plugin).
    in_process: bool = False
    # Workers keep the memory they free for reuse instead of handing it back to the system
    # (glibc; `pipeline.memory`): CPU teachers and large temporaries stop faulting in fresh
    # pages, and a worker holds its peak while it runs. In this process: while the run lasts.
    keep_freed_memory: bool = True
