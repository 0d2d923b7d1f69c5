"""Unusual but usable inputs give correct results, with the conversions written in the library's docstrings."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pcdms_core import as_uint8_batch


def _reopened(img: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    buf.seek(0)
    return Image.open(buf)


def test_a_16_bit_grayscale_png_is_scaled_not_clipped_to_white():
    ramp = (np.arange(64, dtype=np.uint16) * 1040).reshape(8, 8)  # 0 .. 65520
    png = _reopened(Image.fromarray(ramp))
    assert png.mode.startswith("I")  # how PIL opens a 16-bit PNG
    got = as_uint8_batch(png)
    assert got.shape == (1, 3, 8, 8)
    want = torch.from_numpy(np.rint(ramp / 257.0).astype(np.uint8))
    assert torch.equal(got[0, 0], want) and torch.equal(got[0, 1], want) and torch.equal(got[0, 2], want)
    assert got.min() == 0 and got.max() == 255  # the whole range, not all white


@pytest.mark.parametrize("mode", ["P", "CMYK", "LA", "RGBA", "1"])
def test_palette_cmyk_alpha_and_bilevel_images_convert_to_rgb(mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8))
    img = rgb.convert(mode)
    got = as_uint8_batch(img)
    assert got.shape == (1, 3, 6, 5) and got.dtype == torch.uint8
    assert torch.equal(got[0], torch.from_numpy(np.asarray(img.convert("RGB"))).permute(2, 0, 1))


def test_float_grayscale_in_0_1_is_scaled():
    img = Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32), "F")
    assert int(as_uint8_batch(img)[0, 0, 0, 0]) == 128


# --- files that are not checkpoints -------------------------------------------------------------------------------

@pytest.mark.parametrize("content, what", [
    (b"\x89PNG\r\n\x1a\n" + bytes(200), "a PNG image"),
    (b"\n  <!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>", "a web page"),
    (b"\xff\xd8\xff\xe0" + bytes(100), "a JPEG image"),
    (b'{"error": "quota exceeded"}', "a JSON file"),
    (b"hello, this is text" * 10, "not a PyTorch checkpoint"),
])
def test_a_file_that_is_not_a_checkpoint_is_named_and_never_called_a_code_pickle(tmp_path, content, what):
    from pcdms_core import CheckpointError, load_checkpoint

    path = tmp_path / "s2_512.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert what in msg and "Download the checkpoint again" in msg
    assert "weights_only" not in msg and "pickle" not in msg  # never advice to switch the safety off


def test_a_damaged_pickle_is_called_damaged_not_unsafe(tmp_path):
    from pcdms_core import CheckpointError, load_checkpoint

    path = tmp_path / "cut.pt"
    path.write_bytes(b"\x80\x02}q\x00(X\x06\x00\x00\x00moduleq\x01\xff\xfe garbage")
    with pytest.raises(CheckpointError, match="damaged") as err:
        load_checkpoint(path)
    assert "weights_only" not in str(err.value)


def test_a_safetensors_file_under_a_pt_name_loads_as_what_it_is(tmp_path):
    from pcdms_core import inspect_checkpoint, load_checkpoint, save_checkpoint

    from helpers import CONFIGS, PARITY

    model = load_checkpoint(PARITY / "checkpoints" / "s3.pt", config=CONFIGS["s3"])
    path = save_checkpoint(model, tmp_path / "s3.safetensors")
    renamed = path.rename(tmp_path / "s3_renamed.pt")
    assert inspect_checkpoint(renamed).variant == "refine"
