"""The official image preprocessing and the CLIP / DINOv2 features, against the official numbers."""

import pytest
import torch

from pcdms_core.networks import encoders
from pcdms_core.pose.keypoints import load_pose, pose_vector

from helpers import PARITY, assert_close


def _stats(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return torch.tensor([x.sum(), x.abs().sum(), (x * x).sum(), x.min(), x.max(), x.numel()], dtype=torch.float64)


@pytest.mark.parametrize("name", ["src_a", "src_b"])
def test_clip_crop_is_bit_exact(inputs, refs, name):
    crop = encoders.clip_crop_u8(inputs(f"{name}.png"), (512, 512))
    assert crop.dtype == torch.uint8
    assert torch.equal(crop[0], refs("preprocess")[f"pre.{name}.s512.clip_crop_u8"])


@pytest.mark.parametrize("name", ["src_a", "src_b"])
@pytest.mark.parametrize("side", [512, 64])
def test_encoder_pixels_and_features(models, refs, inputs, name, side):
    r = refs("preprocess")
    img = inputs(f"{name}.png")
    pixels = encoders.preprocess(img, (side, side))
    assert pixels.shape == (1, 3, 224, 224) and pixels.dtype == torch.float32
    # The stored statistics are of the official CLIPImageProcessor output, summed in float64: bit-exact.
    assert torch.equal(_stats(pixels), r[f"pre.{name}.s{side}.clip_pixel_values_stats"])
    assert_close(models("clip_vision").encode(img, (side, side)), r[f"pre.{name}.s{side}.clip_image_embeds"])
    assert_close(models("dinov2").encode(img, (side, side)), r[f"pre.{name}.s{side}.dino_last_hidden_state"])


@pytest.mark.parametrize("name", ["pose_a", "pose_t1", "pose_b", "pose_t2"])
def test_stage1_pose_vectors(refs, name):
    expected = refs("preprocess")[f"pre.pose.{name}.stage1_vec"][0]
    # From the normalized_pose_txt file: exactly the official read_coordinates_file values.
    from_txt = pose_vector(load_pose(PARITY / "inputs" / f"{name}.txt"))
    assert torch.equal(from_txt, expected)
    # From the POSE_KEYPOINT JSON (pixels / canvas): equal up to the txt file's 6 decimals.
    from_json = pose_vector(load_pose(PARITY / "inputs" / f"{name}.json"))
    assert_close(from_json, expected, atol=1e-6, rtol=0)
