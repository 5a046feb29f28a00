"""`py:` teacher plugins that misbehave on purpose, for the pipeline's reliability tests."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pipeline.teachers.base import TeacherCameras
from pipeline.teachers.sim import SimTeacher, parse_sim_spec

# Every patch's depth gets this many NaN and this many +inf values, in two corners.
HOLE = 6


class HoleyDepth:
    """Perfect simulated depth with a HOLE x HOLE block of NaN and one of +inf per patch."""

    task = "depth"

    def __init__(self) -> None:
        self.sim = SimTeacher("depth", parse_sim_spec("sim", "depth"))

    def predict(self, images: Tensor, cameras: TeacherCameras) -> Tensor:
        depth = self.sim.predict(images, cameras).clone()
        depth[:, :HOLE, :HOLE] = math.nan
        depth[:, -HOLE:, -HOLE:] = math.inf
        return depth


class WrongShapeSemantic:
    """Returns probabilities without the class axis: a plugin bug the pipeline must name."""

    task = "semantic"

    def predict(self, images: Tensor, cameras: TeacherCameras) -> Tensor:
        return torch.ones(images.shape[0], images.shape[2], images.shape[3])


def holey_depth() -> HoleyDepth:
    return HoleyDepth()


def wrong_shape_semantic() -> WrongShapeSemantic:
    return WrongShapeSemantic()
