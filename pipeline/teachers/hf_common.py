"""Loading and pre-processing shared by the Hugging Face teachers.

Weights are safetensors only and no repository code is ever run (`use_safetensors=True`,
`trust_remote_code=False`). `resolve_hf_source` turns the body of an `hf:` spec into a local
directory once, on the driver: a local directory is checked and fingerprinted, a hub id is
fetched with `huggingface_hub.snapshot_download` (or found in its cache). Workers then load
from that directory and never touch the network.

Pre-processing runs in torch on the teacher's device (no torchvision, no PIL processors):
`ImagePreprocessor` resizes (B,3,h,w) RGB in [0,1] to the model's input size and normalises
it with the mean/std of the checkpoint's `preprocessor_config.json`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.teachers.base import Task, TeacherError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Files fetched from the hub: configs, weights, tokenizer vocabularies. Never pickles or code.
HUB_ALLOW_PATTERNS = ("*.json", "*.safetensors", "*.txt")
_OPTION = {"depth": "--depth-teacher", "semantic": "--semantic-teacher", "normals": "--normal-teacher"}
_HASH_CHUNK = 1 << 23


def teacher_option(task: Task) -> str:
    """The command-line option that selects the teacher of `task`."""
    return _OPTION[task]


@dataclass(frozen=True)
class ResolvedSource:
    """Where the weights of an `hf:` teacher are, once resolved on the driver.

    Fields:
        path: local directory holding config and safetensors weights (a hub snapshot or the
            user's directory).
        model_id: the hub id, or the local directory as the user gave it.
        revision: the hub snapshot's commit hash, or "sha256:<16 hex>" of a local directory's
            weight files.
    """

    path: str
    model_id: str
    revision: str


def _split_revision(body: str) -> tuple[str, str | None]:
    """`owner/name@revision` -> (`owner/name`, `revision`); no `@` -> (body, None)."""
    model_id, sep, revision = body.partition("@")
    return model_id, (revision if sep else None)


def _looks_like_path(body: str) -> bool:
    """A spec body meant as a directory (a hub id is `name` or `owner/name`)."""
    return body.startswith(("/", "./", "../", "~", ".\\")) or body.count("/") > 1 or "\\" in body


def weights_fingerprint(directory: Path) -> str:
    """ "sha256:<first 16 hex>" over the relative names and bytes of all *.safetensors below
    `directory`, in sorted order (so a renamed or edited weight file changes it)."""
    digest = hashlib.sha256()
    for file in sorted(directory.rglob("*.safetensors")):
        digest.update(file.relative_to(directory).as_posix().encode())
        with file.open("rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:16]


def _check_directory(directory: Path, prefix: str, required_file: str) -> None:
    if not (directory / required_file).is_file():
        raise TeacherError(f"{prefix}: {directory} has no {required_file}; expected a model saved with save_pretrained")
    if not any(directory.rglob("*.safetensors")):
        raise TeacherError(
            f"{prefix}: {directory} has no *.safetensors weights (pickled .bin/.pt weights are refused); "
            "save the model with save_pretrained(..., safe_serialization=True)"
        )


def resolve_hf_source(spec_body: str, task: Task, *, required_file: str = "config.json") -> ResolvedSource:
    """Resolve the body of an `hf:` spec (a local directory or a hub id, optionally
    `owner/name@revision`) to a local directory of safetensors weights.

    Args:
        spec_body: what follows `hf:`.
        task: the teacher's task, for the error messages.
        required_file: the file that marks a saved model ("config.json" for transformers,
            "model_index.json" for a diffusers pipeline).
    Raises:
        TeacherError: one line naming the task and the model, and what to do.
    """
    prefix = f"{task} teacher hf:{spec_body}"
    if not spec_body:
        raise TeacherError(f"{task} teacher hf: needs a model id or a local directory (hf:MODEL_ID_OR_LOCAL_DIR)")
    local = Path(spec_body).expanduser()
    if local.is_dir():
        _check_directory(local, prefix, required_file)
        return ResolvedSource(str(local.resolve()), spec_body, weights_fingerprint(local))
    model_id, revision = _split_revision(spec_body)
    if _looks_like_path(model_id):
        raise TeacherError(f"{prefix}: no such directory")
    if not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", model_id):
        raise TeacherError(f"{prefix}: not a directory and not a model id of the form owner/name")

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    download = f"hf download {model_id}" + (f" --revision {revision}" if revision else "")
    try:
        snapshot = Path(snapshot_download(model_id, revision=revision, allow_patterns=list(HUB_ALLOW_PATTERNS)))
    except RevisionNotFoundError:
        raise TeacherError(f"{prefix}: the model hub has no revision {revision!r} of {model_id}") from None
    except RepositoryNotFoundError:
        raise TeacherError(
            f"{prefix}: the model hub has no model {model_id} (or it is gated or private); "
            f"check the id, or pass a local directory: {teacher_option(task)} hf:DIR"
        ) from None
    except Exception:  # offline mode, no network, hub errors: all mean "cannot get the weights here"
        raise TeacherError(
            f"{prefix}: weights not found locally and the model hub is unreachable; download the model where "
            f"the hub is reachable ({download} --local-dir DIR) and pass {teacher_option(task)} hf:DIR"
        ) from None
    _check_directory(snapshot, prefix, required_file)
    # Hub snapshots live in .../snapshots/<commit hash>.
    return ResolvedSource(str(snapshot), model_id, snapshot.name)


def read_json(directory: str | Path, name: str) -> dict[str, Any]:
    """A JSON file of a model directory as a dict; {} when the file is absent."""
    path = Path(directory) / name
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise TeacherError(f"cannot read {path}: {err}") from None


def check_model_type(config: dict[str, Any], expected: str, prefix: str, what: str) -> None:
    """Refuse a checkpoint of another architecture with one clear line."""
    found = config.get("model_type")
    if found != expected:
        raise TeacherError(f"{prefix}: config.json describes a {found!r} model; this teacher needs {what} ({expected})")


@dataclass(frozen=True)
class PreprocessConfig:
    """What a checkpoint's `preprocessor_config.json` says about its input.

    Fields:
        mean, std: per-channel normalisation of RGB in [0,1].
        size: the processor's `size` entry (int or dict), or None when absent.
        multiple: input sides must be multiples of this (ensure_multiple_of / size_divisor).
        keep_aspect_ratio: DPT-style resizing keeps the aspect ratio.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: int | dict[str, int] | None
    multiple: int
    keep_aspect_ratio: bool


def read_preprocess_config(directory: str | Path, default_multiple: int) -> PreprocessConfig:
    """Read `preprocessor_config.json` of a model directory, with ImageNet defaults.

    Means and stds written for 0-255 pixels (some Mask2Former conversions) are rescaled
    to [0,1] inputs.
    """
    cfg = read_json(directory, "preprocessor_config.json")
    mean = [float(v) for v in cfg.get("image_mean", IMAGENET_MEAN)]
    std = [float(v) for v in cfg.get("image_std", IMAGENET_STD)]
    if max(mean) > 1.0:
        mean = [v / 255.0 for v in mean]
        std = [v / 255.0 for v in std]
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise TeacherError(f"{directory}/preprocessor_config.json: need 3 image_mean and 3 positive image_std values")
    multiple = int(cfg.get("ensure_multiple_of") or cfg.get("size_divisor") or default_multiple)
    return PreprocessConfig(
        mean=(mean[0], mean[1], mean[2]),
        std=(std[0], std[1], std[2]),
        size=cfg.get("size"),
        multiple=max(1, multiple),
        keep_aspect_ratio=bool(cfg.get("keep_aspect_ratio", True)),
    )


def round_to_multiple(value: float, multiple: int) -> int:
    """The nearest positive multiple of `multiple`."""
    return max(multiple, round(value / multiple) * multiple)


class ImagePreprocessor(nn.Module):
    """Resize and normalise (B,3,h,w) float RGB in [0,1] for a model.

    The mean and std are buffers, so the module follows the teacher to its device.
    """

    def __init__(self, mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor, size: tuple[int, int]) -> Tensor:
        """(B,3,h,w) RGB in [0,1] -> (B,3,H,W) float32 normalised, (H,W) = size."""
        x = images.float()
        if tuple(x.shape[-2:]) != tuple(size):
            downscale = size[0] < x.shape[-2] or size[1] < x.shape[-1]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=downscale)
        return (x - self.mean) / self.std


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA devices that support it, else fp16 on CUDA; None (fp32) elsewhere."""
    if device.type != "cuda":
        return None
    # Emulated bf16 (pre-Ampere) is slower than fp16, so only native support counts.
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


@contextlib.contextmanager
def inference_context(device: torch.device) -> Iterator[None]:
    """No autograd, and mixed precision on CUDA (fp32 on CPU).

    `no_grad` rather than `inference_mode`: the pipeline edits teacher outputs in place
    (masking NaN/inf), which inference tensors forbid.
    """
    dtype = autocast_dtype(device)
    with torch.no_grad():
        if dtype is None:
            yield
        else:
            with torch.autocast(device_type="cuda", dtype=dtype):
                yield


def load_pretrained(model_class: type, source: ResolvedSource, device: torch.device, prefix: str) -> nn.Module:
    """`model_class.from_pretrained` on a resolved local directory, safetensors only, no
    remote code, in eval mode on `device`."""
    import transformers  # here, not at the top: a run without hub teachers never pays for importing it

    # Workers load once each; per-tensor loading bars from every worker would bury the run's own bar.
    transformers.utils.logging.disable_progress_bar()
    try:
        model = model_class.from_pretrained(source.path, use_safetensors=True, trust_remote_code=False)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TeacherError(f"{prefix}: cannot load {model_class.__name__} from {source.path}: {first_line}") from None
    return model.to(device).eval()
