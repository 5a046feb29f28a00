"""Tiny randomly initialised models of the real teacher architectures, saved the way real
checkpoints are (safetensors weights, config and processor JSON), for tests that load them
through the same `hf:` path as real checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from spherical.ade20k import ADE20K_CLASSES

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def save_tiny_depth_anything(directory: Path, metric: bool, input_size: int = 56) -> Path:
    """A random Depth Anything V2 (DINOv2 backbone, hidden 32, 2 layers) saved to `directory`."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    torch.manual_seed(0)
    backbone = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=14,
        image_size=input_size,
        out_features=["stage1", "stage2"],
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[16, 32],
        reassemble_factors=[2, 1],
        fusion_hidden_size=16,
        head_hidden_size=16,
        depth_estimation_type="metric" if metric else "relative",
        max_depth=20,
    )
    DepthAnythingForDepthEstimation(config).save_pretrained(directory, safe_serialization=True)
    processor = {
        "image_processor_type": "DPTImageProcessor",
        "size": {"height": input_size, "width": input_size},
        "keep_aspect_ratio": True,
        "ensure_multiple_of": 14,
        "image_mean": IMAGENET_MEAN,
        "image_std": IMAGENET_STD,
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(processor))
    return directory


def ade_like_labels() -> dict[int, str]:
    """150 ADE20K names, padded with whitespace as some converted configs have them."""
    return {i: f" {name} " if i % 7 == 0 else name for i, name in enumerate(ADE20K_CLASSES)}


def save_tiny_mask2former(directory: Path, short_side: int = 64) -> Path:
    """A random Mask2Former (Swin embed 16, one layer per stage, hidden 32, 10 queries) over
    150 ADE-like classes saved to `directory`; the processor config uses 0-255 means."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    torch.manual_seed(0)
    backbone = SwinConfig(
        image_size=short_side,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    id2label = ade_like_labels()
    config = Mask2FormerConfig(
        backbone_config=backbone,
        feature_size=32,
        mask_feature_size=32,
        hidden_dim=32,
        encoder_feedforward_dim=32,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        dim_feedforward=32,
        num_queries=10,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
    )
    Mask2FormerForUniversalSegmentation(config).save_pretrained(directory, safe_serialization=True)
    processor = {
        "image_processor_type": "Mask2FormerImageProcessor",
        "size": {"shortest_edge": short_side},
        "size_divisor": 32,
        "image_mean": [v * 255 for v in IMAGENET_MEAN],
        "image_std": [v * 255 for v in IMAGENET_STD],
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(processor))
    return directory


def save_tiny_marigold(directory: Path, processing_resolution: int = 32) -> Path:
    """A random MarigoldNormalsPipeline (tiny UNet, VAE, CLIP text encoder and a two-token
    vocabulary) saved to `directory` with safetensors weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, MarigoldNormalsPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=8,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=32,
    )
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
        set_alpha_to_one=False,
        steps_offset=1,
        clip_sample=False,
        timestep_spacing="trailing",
    )
    text_config = CLIPTextConfig(
        vocab_size=60,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    vocab_dir = directory.parent / f"{directory.name}_vocab"
    vocab_dir.mkdir(parents=True)
    (vocab_dir / "vocab.json").write_text(json.dumps(vocab))
    (vocab_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"), model_max_length=77)
    pipe = MarigoldNormalsPipeline(
        unet=unet,
        vae=vae,
        scheduler=scheduler,
        text_encoder=CLIPTextModel(text_config),
        tokenizer=tokenizer,
        prediction_type="normals",
        use_full_z_range=True,
        default_denoising_steps=2,
        default_processing_resolution=processing_resolution,
    )
    pipe.save_pretrained(directory, safe_serialization=True)
    return directory
