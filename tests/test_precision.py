"""The warning for half precision on a CPU without fast kernels for it (fp16 / bf16 convolutions there run on a
reference path hundreds of times slower than fp32)."""

import warnings

import pytest
import torch

from pcdms_core import devices as precision
from pcdms_core.train import demo_models as demo
from pcdms_core.networks import vae as vae_ops
from pcdms_core.networks.encoders import ImageEncoder


@pytest.fixture
def no_fast_half(monkeypatch):
    """This CPU as one whose oneDNN has no fp16 / bf16 kernels, with no warning given yet."""
    monkeypatch.setattr(precision, "cpu_has_fast_half", lambda dtype: False)
    monkeypatch.setattr(precision, "_warned_half", set())


def _linear(dtype, device="cpu"):
    return torch.nn.Linear(2, 2, device=device, dtype=dtype)


@pytest.mark.parametrize("dtype,name", [(torch.bfloat16, "bf16"), (torch.float16, "fp16")])
def test_half_on_a_slow_cpu_warns_once_per_dtype_naming_the_fix(no_fast_half, dtype, name):
    with pytest.warns(RuntimeWarning, match=rf"runs in {name} on a CPU.*Load the models in fp32") as got:
        assert precision.model_device_dtype(_linear(dtype)) == (torch.device("cpu"), dtype)
    assert len(got) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second model of that dtype: no second warning
        precision.model_device_dtype(_linear(dtype))


def test_no_warning_for_fp32_other_devices_or_a_cpu_with_fast_kernels(no_fast_half, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision.model_device_dtype(_linear(torch.float32))
        precision.model_device_dtype(_linear(torch.float16, device="meta"))  # computes elsewhere: not our concern
        monkeypatch.setattr(precision, "cpu_has_fast_half", lambda dtype: True)
        precision.model_device_dtype(_linear(torch.bfloat16))


def test_the_probe_asks_onednn(monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_fp16_supported", lambda: True, raising=False)
    assert precision.cpu_has_fast_half(torch.bfloat16) is False
    assert precision.cpu_has_fast_half(torch.float16) is True

    def missing():
        raise RuntimeError("no such operator")

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", missing)
    assert precision.cpu_has_fast_half(torch.bfloat16) is True  # cannot tell: no warning rather than a wrong one


def test_the_vae_and_the_image_encoders_check_before_computing(no_fast_half):
    vae = demo.build_vae().to(torch.bfloat16).eval()
    z = torch.randn(1, vae.config.latent_channels, 4, 4)
    with pytest.warns(RuntimeWarning, match="bf16"):
        image = vae_ops.decode(vae, z)
    side = 4 * vae_ops.downscale_factor(vae)
    assert image.shape == (1, 3, side, side) and image.dtype == torch.float32

    encoder = ImageEncoder(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)), "clip").to(torch.float16)
    with pytest.warns(RuntimeWarning, match="fp16"):
        out = encoder(torch.rand(1, 3, 2, 2))
    assert out.dtype == torch.float16 and out.shape == (1, 3)
