"""Marigold surface normals (`diffusers.MarigoldNormalsPipeline`), an optional extra.

diffusers is not a core dependency: it is imported only when a Marigold teacher is
resolved or built (`pip install 'mtpano[marigold]'`).

Frames. Marigold predicts unit normals in a screen frame with x to the right, y to the
top and z facing the observer (diffusers' `MarigoldImageProcessor.visualize_normals`
documents these as the default axis directions). Our patch camera frame is OpenCV's:
x right, y down, z forward, away from the camera (docs/conventions.md). The two differ by
a half turn about x, so

    n_opencv = (n_x, -n_y, -n_z)

(a rotation, det +1). A surface that faces the camera, (0, 0, +1) in Marigold's frame,
becomes (0, 0, -1): facing the camera in ours too.

Determinism: the diffusion noise of each patch comes from its own generator, seeded with
`patch_seed(pano_id, rotation)`, so a patch gets the same prediction whatever batch it
lands in (up to float rounding, which depends on the batch size).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pipeline.teachers.base import Prediction, TeacherCameras, TeacherError, patch_seed
from pipeline.teachers.hf_common import ResolvedSource, autocast_dtype, read_json

PIPELINE_CLASS = "MarigoldNormalsPipeline"
# Marigold (x right, y up, z to the viewer) -> OpenCV camera (x right, y down, z forward).
_MARIGOLD_TO_OPENCV = (1.0, -1.0, -1.0)


def marigold_to_camera(normals: Tensor) -> Tensor:
    """(B,3,h,w) normals in Marigold's frame -> (B,3,h,w) in the OpenCV camera frame."""
    flip = torch.tensor(_MARIGOLD_TO_OPENCV, dtype=normals.dtype, device=normals.device)
    return normals * flip.view(1, 3, 1, 1)


def require_diffusers(spec: str) -> None:
    """Refuse in one line when diffusers is not installed."""
    if importlib.util.find_spec("diffusers") is None:
        raise TeacherError(
            f"normals teacher {spec}: Marigold needs diffusers, which is not installed; "
            "pip install 'mtpano[marigold]', or use --normal-teacher geometric"
        )


@dataclass(frozen=True)
class MarigoldConfig:
    """How the Marigold pipeline is run."""

    # Predictions averaged per patch; above 2 the teacher also returns a confidence.
    ensemble_size: int = 1
    # Denoising steps; None: the checkpoint's default_denoising_steps.
    num_inference_steps: int | None = None
    # Longer side the pipeline works at; None: the checkpoint's default_processing_resolution.
    processing_resolution: int | None = None


def describe_source(spec: str, source: ResolvedSource, config: MarigoldConfig | None = None) -> dict[str, Any]:
    """The store attributes of a Marigold teacher, read from model_index.json (no weights)."""
    cfg = config or MarigoldConfig()
    index = read_json(source.path, "model_index.json")
    if index.get("_class_name") != PIPELINE_CLASS:
        raise TeacherError(
            f"normals teacher {spec}: model_index.json describes a {index.get('_class_name')!r} pipeline; "
            f"this teacher needs {PIPELINE_CLASS}"
        )
    return {
        "spec": spec,
        "model_id": source.model_id,
        "revision": source.revision,
        "architecture": PIPELINE_CLASS,
        "frame_conversion": "marigold (x right, y up, z to viewer) -> opencv (x, -y, -z)",
        "ensemble_size": cfg.ensemble_size,
        "num_inference_steps": cfg.num_inference_steps or index.get("default_denoising_steps"),
        "processing_resolution": cfg.processing_resolution or index.get("default_processing_resolution"),
    }


class MarigoldNormalsTeacher:
    """Normals teacher on a Marigold normals checkpoint.

    predict(images (B,3,h,w) float RGB in [0,1], cameras) -> (B,3,h',w') float32 unit
    normals in each patch's OpenCV camera frame, at the pipeline's processing resolution
    (longer side = processing_resolution, same aspect ratio); a `Prediction` with
    confidence 1 - uncertainty when ensemble_size > 2.
    """

    task = "normals"

    def __init__(
        self,
        spec: str,
        source: ResolvedSource,
        device: torch.device | str,
        config: MarigoldConfig | None = None,
        batch_size: int = 4,
    ) -> None:
        require_diffusers(spec)
        from diffusers import MarigoldNormalsPipeline

        self.device = torch.device(device)
        self.batch_size = batch_size
        self.config = config or MarigoldConfig()
        self._info = describe_source(spec, source, self.config)
        dtype = autocast_dtype(self.device) or torch.float32
        try:
            pipe = MarigoldNormalsPipeline.from_pretrained(source.path, use_safetensors=True, trust_remote_code=False)
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise TeacherError(f"normals teacher {spec}: cannot load {PIPELINE_CLASS}: {first_line}") from None
        # Half precision on CUDA (bf16 where native), fp32 elsewhere.
        self.pipe = pipe.to(device=self.device, dtype=dtype)
        self.pipe.set_progress_bar_config(disable=True)

    def _generators(self, cameras: TeacherCameras) -> list[torch.Generator]:
        """One generator per (patch, ensemble member), in the pipeline's order."""
        gens = []
        for i, pano_id in enumerate(cameras.pano_ids):
            for member in range(self.config.ensemble_size):
                seed = patch_seed(pano_id, cameras.rotation[i], "marigold", member)
                gens.append(torch.Generator(device=self.device).manual_seed(seed))
        return gens

    def predict(self, images: Tensor, cameras: TeacherCameras) -> Tensor | Prediction:
        ensemble = self.config.ensemble_size
        with_confidence = ensemble > 2
        out = self.pipe(
            images.to(self.device),
            num_inference_steps=self.config.num_inference_steps,
            ensemble_size=ensemble,
            processing_resolution=self.config.processing_resolution,
            match_input_resolution=False,
            batch_size=images.shape[0] * ensemble,
            generator=self._generators(cameras),
            output_type="pt",
            output_uncertainty=with_confidence,
        )
        normals = marigold_to_camera(out.prediction.float())  # (B,3,h',w')
        if not with_confidence:
            return normals
        confidence = (1.0 - out.uncertainty.float()[:, 0]).clamp(0.0, 1.0)  # (B,h',w')
        return Prediction(normals, confidence)

    def describe(self) -> dict[str, Any]:
        return dict(self._info)
