"""The nodes with ComfyUI's modules stood in at the import boundary (tests/comfy_stub.py): schemas, the
model-management calls, progress and Cancel, the stage chain against pcdms_core, and errors users see."""

import asyncio
import json
import shutil
import types

import pytest
import torch

import comfy_stub
from helpers import CONFIGS, PARITY

from pcdms_core.loading.checkpoints import convert_checkpoint


async def _node_list(pack):
    extension = await pack.comfy_entrypoint()
    return await extension.get_node_list()


@pytest.fixture()
def env(tmp_path):
    modules = comfy_stub.install(tmp_path)
    models = tmp_path / "models"
    for name, file in [("s1", "s1_512.safetensors"), ("s2_paper", "s2_512.safetensors"),
                       ("s2_demo", "PCDMs_ckpt.safetensors"), ("s3", "s3_512.safetensors")]:
        convert_checkpoint(PARITY / "checkpoints" / f"{name}.pt", models / "pcdms" / file, config=CONFIGS[name])
    for folder, name in [("clip_vision", "clip_tiny"), ("dinov2", "dinov2_tiny")]:
        shutil.copy(PARITY / folder / "model.safetensors", models / "clip_vision" / f"{name}.safetensors")
        shutil.copy(PARITY / folder / "config.json", models / "clip_vision" / f"{name}.json")
    shutil.copy(PARITY / "vae" / "diffusion_pytorch_model.safetensors", models / "vae" / "vae_tiny.safetensors")
    shutil.copy(PARITY / "vae" / "config.json", models / "vae" / "vae_tiny.json")
    for name in ("pose_a.json", "pose_t1.json", "pose_b.txt"):
        shutil.copy(PARITY / "inputs" / name, tmp_path / "input" / name)
    pack = comfy_stub.import_pack()
    ns = types.SimpleNamespace(pack=pack, mm=modules["comfy.model_management"], tmp=tmp_path, fp=modules["folder_paths"])
    ns.nodes = {cls.define_schema().node_id: cls for cls in asyncio.run(_node_list(pack))}
    yield ns
    comfy_stub.uninstall(modules)


def run(ns, node_id, **inputs):
    return ns.nodes[node_id].execute(**inputs).result


def _image(name: str) -> torch.Tensor:
    from PIL import Image
    import numpy as np

    arr = np.asarray(Image.open(PARITY / "inputs" / name).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(arr)[None]


def test_every_node_is_registered_and_documented(env):
    expected = {
        "PCDMsCheckpointLoader", "PCDMsCLIPVisionLoader", "PCDMsDINOv2Loader", "PCDMsVAELoader",
        "PCDMsLoadPose", "PCDMsSelectPerson", "PCDMsAlignPose", "PCDMsRenderPose",
        "PCDMsEncodeSource", "PCDMsPrior", "PCDMsInpaint", "PCDMsRefine", "PCDMsAllStages",
        "PCDMsNativeLoader", "PCDMsInpaintConditioning", "PCDMsRefineConditioning", "PCDMsCropTarget", "PCDMsVAEDecode",
    }
    assert set(env.nodes) == expected
    for node_id, cls in env.nodes.items():
        schema = cls.define_schema()
        assert schema.display_name and schema.display_name.startswith("PCDMs"), node_id
        assert schema.category.startswith("PCDMs") and len(schema.description) > 40, node_id
        ids = [i.id for i in schema.inputs]
        assert len(ids) == len(set(ids)), node_id
        for inp in schema.inputs:
            assert inp.tooltip, f"{node_id}.{inp.id} has no tooltip"
        for out in schema.outputs:
            assert out.display_name, f"{node_id} has an unnamed output"


def test_seeds_steps_and_cfg_have_the_official_defaults(env):
    def inputs(node_id):
        return {i.id: i for i in env.nodes[node_id].define_schema().inputs}

    prior, inpaint, refine = inputs("PCDMsPrior"), inputs("PCDMsInpaint"), inputs("PCDMsRefine")
    assert (prior["steps"].default, prior["cfg"].default, prior["scheduler"].default) == (20, 1.0, "unclip")
    assert (inpaint["steps"].default, inpaint["cfg"].default, inpaint["scheduler"].default) == (20, 2.0, "auto")
    assert (refine["steps"].default, refine["cfg"].default, refine["scheduler"].default) == (20, 1.0, "unipc")
    assert refine["strength"].default == 1.0  # from pure noise, as officially
    for node in (prior, inpaint, refine):
        assert node["cfg"].io_type == "FLOAT" and node["seed"].extra["control_after_generate"] is True
    assert inpaint["vae"].io_type == "VAE,PCDMS_VAE"


def test_model_folder_is_registered_and_merged(tmp_path):
    modules = comfy_stub.install(tmp_path)
    try:
        extra = str(tmp_path / "elsewhere")
        modules["folder_paths"].folder_names_and_paths["pcdms"] = ([extra], {".pt"})
        comfy_stub.import_pack()
        paths, exts = modules["folder_paths"].folder_names_and_paths["pcdms"]
        assert paths[:2] == [extra, str(tmp_path / "models" / "pcdms")]
        assert {".pt", ".safetensors"} <= exts
        # the bundled demo models are listed by the pcdms, clip_vision and vae loaders
        demo_dir = comfy_stub.ROOT / "demo_models"
        for folder in ("pcdms", "clip_vision", "vae"):
            if (demo_dir / folder).is_dir():
                assert str(demo_dir / folder) in modules["folder_paths"].folder_names_and_paths[folder][0]
    finally:
        comfy_stub.uninstall(modules)


def _load(env):
    ckpt = lambda name: run(env, "PCDMsCheckpointLoader", ckpt_name=name, dtype="auto")[0]  # noqa: E731
    return types.SimpleNamespace(
        prior=ckpt("s1_512.safetensors"), inpaint=ckpt("s2_512.safetensors"), demo=ckpt("PCDMs_ckpt.safetensors"),
        refine=ckpt("s3_512.safetensors"),
        clip=run(env, "PCDMsCLIPVisionLoader", encoder_name="clip_tiny.safetensors", dtype="auto")[0],
        dino=run(env, "PCDMsDINOv2Loader", encoder_name="dinov2_tiny.safetensors", dtype="fp32")[0],
        vae=run(env, "PCDMsVAELoader", vae_name="vae_tiny.safetensors", dtype="auto")[0],
    )


def test_loader_lists_and_describes(env):
    schema = env.nodes["PCDMsCheckpointLoader"].define_schema()
    options = schema.inputs[0].options
    assert {"PCDMs_ckpt.safetensors", "s1_512.safetensors", "s2_512.safetensors", "s3_512.safetensors"} <= set(options)
    model, info = run(env, "PCDMsCheckpointLoader", ckpt_name="PCDMs_ckpt.safetensors", dtype="fp32")
    assert model.kind == "inpaint" and model.info.variant == "noprior"
    assert "without the prior" in info
    assert model.patcher.model.inner.variant == "noprior"  # the ModelPatcher holds our model in a thin holder


def test_paper_chain_equals_the_core_pipeline(env):
    from pcdms_core.pipeline import PCDMsPipeline, StageSettings
    from pcdms_core.pose.keypoints import load_pose

    m = _load(env)
    pose_src, _ = run(env, "PCDMsLoadPose", pose_file="pose_a.json", person=-1, canvas_width=0, canvas_height=0)
    pose_tgt, skeleton = run(env, "PCDMsLoadPose", pose_file="pose_t1.json", person=-1, canvas_width=0, canvas_height=0)
    assert skeleton.shape == (1, 256, 176, 3)
    image = _image("src_a.png")
    source = run(env, "PCDMsEncodeSource", image=image, dino=m.dino, clip=m.clip, width=64, height=64)[0]
    emb = run(env, "PCDMsPrior", model=m.prior, source=source, source_pose=pose_src, target_pose=pose_tgt,
              seed=9, steps=3, cfg=1.0, scheduler="unclip")[0]
    coarse, canvas = run(env, "PCDMsInpaint", model=m.inpaint, vae=m.vae, source=source, embedding=emb,
                         source_pose=pose_src, target_pose=pose_tgt, seed=9, steps=3, cfg=2.0, scheduler="auto",
                         batch_size=1)
    refined = run(env, "PCDMsRefine", model=m.refine, vae=m.vae, source=source, image=coarse, seed=9, steps=2,
                  cfg=1.0, cfg_rescale=-1.0, scheduler="unipc")[0]
    assert coarse.shape == (1, 64, 64, 3) and canvas.shape == (1, 64, 128, 3) and refined.shape == (1, 64, 64, 3)

    # The same run through pcdms_core alone (the nodes only translate).
    inner = lambda mm: mm.patcher.model.inner  # noqa: E731
    pipe = PCDMsPipeline(inpaint=inner(m.inpaint), vae=inner(m.vae), dino=inner(m.dino), prior=inner(m.prior),
                         clip=inner(m.clip), refine=inner(m.refine))
    ref = pipe(image.movedim(-1, 1), load_pose(PARITY / "inputs/pose_a.json"), load_pose(PARITY / "inputs/pose_t1.json"),
               size=(64, 64), seed=9, prior_settings=StageSettings(steps=3), inpaint_settings=StageSettings(steps=3),
               refine_settings=StageSettings(steps=2))
    assert torch.equal(emb, ref.prior_embedding)
    assert torch.equal(coarse, ref.coarse.movedim(1, -1))
    assert torch.equal(refined, ref.images.movedim(1, -1))
    # stage 3 started part way, from the coarse image (img2img)
    part_out = env.nodes["PCDMsRefine"].execute(model=m.refine, vae=m.vae, source=source, image=coarse, seed=9, steps=4,
                                                cfg=1.0, cfg_rescale=-1.0, scheduler="unipc", strength=0.5)
    part = part_out.result[0]
    # the node says why its progress counts 2 steps while its widget says 4
    assert "the last 2 of 4 steps run" in part_out.ui["text"][0]
    ref_part = pipe(image.movedim(-1, 1), load_pose(PARITY / "inputs/pose_a.json"),
                    load_pose(PARITY / "inputs/pose_t1.json"), size=(64, 64), seed=9,
                    prior_settings=StageSettings(steps=3), inpaint_settings=StageSettings(steps=3),
                    refine_settings=StageSettings(steps=4, strength=0.5))
    assert torch.equal(part, ref_part.images.movedim(1, -1)) and not torch.equal(part, refined)

    # Each stage asked model management for its model and the VAE together, and reported every step.
    loaded = [[p.model.inner.__class__.__name__ for p in call] for call in env.mm.load_calls]
    assert ["InpaintModel", "AutoencoderKL"] in loaded and ["RefineModel", "AutoencoderKL"] in loaded
    steps = [u[:2] for u in comfy_stub.ProgressBar.updates]
    assert steps[:3] == [(1, 3), (2, 3), (3, 3)] and len(steps) == 3 + 3 + 2 + 2  # the last run: 2 of its 4 steps


def test_all_stages_node_equals_the_separate_nodes(env):
    m = _load(env)
    pose_src = run(env, "PCDMsLoadPose", pose_file="pose_a.json", person=-1, canvas_width=0, canvas_height=0)[0]
    pose_tgt = run(env, "PCDMsLoadPose", pose_file="pose_t1.json", person=-1, canvas_width=0, canvas_height=0)[0]
    image = _image("src_a.png")
    final, coarse = run(env, "PCDMsAllStages", inpaint_model=m.inpaint, vae=m.vae, dino=m.dino, image=image,
                        source_pose=pose_src, target_pose=pose_tgt, prior_model=m.prior, clip=m.clip,
                        refine_model=m.refine, seed=4, width=64, height=64, inpaint_steps=2, batch_size=1)
    source = run(env, "PCDMsEncodeSource", image=image, dino=m.dino, clip=m.clip, width=64, height=64)[0]
    emb = run(env, "PCDMsPrior", model=m.prior, source=source, source_pose=pose_src, target_pose=pose_tgt,
              seed=4, steps=20, cfg=1.0, scheduler="unclip")[0]
    coarse2 = run(env, "PCDMsInpaint", model=m.inpaint, vae=m.vae, source=source, embedding=emb, source_pose=pose_src,
                  target_pose=pose_tgt, seed=4, steps=2, cfg=2.0, scheduler="auto", batch_size=1)[0]
    assert torch.equal(coarse, coarse2)
    assert final.shape == coarse.shape and not torch.equal(final, coarse)


def test_demo_with_a_skeleton_image_and_several_targets(env):
    m = _load(env)
    source = run(env, "PCDMsEncodeSource", image=_image("src_b.png"), dino=m.dino, clip=None, width=64, height=64)[0]
    pose_src = run(env, "PCDMsLoadPose", pose_file="pose_b.txt", person=-1, canvas_width=0, canvas_height=0)[0]
    targets = torch.cat([_image("pose_t2.png"), _image("pose_t2.png").flip(2)])
    coarse, canvas = run(env, "PCDMsInpaint", model=m.demo, vae=m.vae, source=source, source_pose=pose_src,
                         target_pose_image=targets, seed=1, steps=2, cfg=2.0, scheduler="auto", batch_size=2)
    assert coarse.shape == (4, 64, 64, 3)  # 2 targets x 2 images each, one source broadcast
    refined = run(env, "PCDMsRefine", model=m.refine, vae=m.vae, source=source, image=coarse, seed=1, steps=1,
                  cfg=1.0, cfg_rescale=-1.0, scheduler="unipc")[0]
    assert refined.shape == (4, 64, 64, 3)


def test_cancel_stops_within_one_step(env):
    m = _load(env)
    source = run(env, "PCDMsEncodeSource", image=_image("src_b.png"), dino=m.dino, clip=None, width=64, height=64)[0]
    pose = run(env, "PCDMsLoadPose", pose_file="pose_b.txt", person=-1, canvas_width=0, canvas_height=0)[0]
    calls = []
    m.demo.patcher.model.inner.register_forward_hook(lambda *a: calls.append(1))
    env.mm.interrupt = True  # what POST /interrupt sets
    with pytest.raises(comfy_stub.InterruptProcessingException):
        run(env, "PCDMsInpaint", model=m.demo, vae=m.vae, source=source, source_pose=pose, target_pose=pose,
            seed=1, steps=50, cfg=2.0, scheduler="auto", batch_size=1)
    assert len(calls) == 1


def test_comfyui_vae_adapter_matches_the_diffusers_vae(env):
    """ComfyUI's VAE object (first_stage_model with encoder / quant_conv / decode) through ComfyVAECodec."""
    core_vae = env.pack.pcdms_core  # the pack's own copy of the library, as ComfyUI imports it
    models = env.pack.nodes.bridge
    vae = _load(env).vae.patcher.model.inner

    class FirstStage:  # the shape of ComfyUI's AutoencoderKL, backed by the same weights
        encoder, quant_conv = vae.encoder, vae.quant_conv

        @staticmethod
        def decode(z):
            return vae.decoder(vae.post_quant_conv(z))

    comfy_vae = types.SimpleNamespace(
        first_stage_model=FirstStage(), latent_channels=4, downscale_ratio=8, vae_dtype=torch.float32,
        device=torch.device("cpu"), patcher="comfy-vae-patcher",
        memory_used_encode=lambda shape, dtype: 1, memory_used_decode=lambda shape, dtype: 2,
    )
    codec, patcher, memory = models.vae_for_stage(comfy_vae, (1, 3, 64, 128))
    assert patcher == "comfy-vae-patcher" and memory == 3
    x = torch.rand(1, 3, 64, 128) * 2 - 1
    a = core_vae.encode(codec, x, torch.Generator().manual_seed(3))
    b = core_vae.encode(vae, x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.equal(core_vae.decode(codec, a), core_vae.decode(vae, a))
    with pytest.raises(Exception, match="not a Stable Diffusion KL-f8 VAE"):
        models.vae_for_stage(types.SimpleNamespace(latent_channels=16, first_stage_model=None), (1, 3, 64, 64))


def test_errors_users_can_act_on(env):
    PCDMsError = env.pack.pcdms_core.errors.PCDMsError

    m = _load(env)
    source = run(env, "PCDMsEncodeSource", image=_image("src_a.png"), dino=m.dino, clip=m.clip, width=64, height=64)[0]
    pose = run(env, "PCDMsLoadPose", pose_file="pose_a.json", person=-1, canvas_width=0, canvas_height=0)[0]
    with pytest.raises(PCDMsError, match=r"PCDMs Prior got 's3_512.safetensors', which is a stage-3 refining checkpoint"):
        run(env, "PCDMsPrior", model=m.refine, source=source, source_pose=pose, target_pose=pose, seed=0, steps=2,
            cfg=1.0, scheduler="unclip")
    with pytest.raises(PCDMsError, match="was not found in models/pcdms"):
        run(env, "PCDMsCheckpointLoader", ckpt_name="gone.pt", dtype="auto")
    with pytest.raises(PCDMsError, match="nobody"):
        run(env, "PCDMsPrior", model=m.prior, source=source, source_pose=[{"people": [], "canvas_width": 8, "canvas_height": 8}],
            target_pose=pose, seed=0, steps=2, cfg=1.0, scheduler="unclip")
    with pytest.raises(PCDMsError, match="needs the prior's embedding"):
        run(env, "PCDMsInpaint", model=m.inpaint, vae=m.vae, source=source, source_pose=pose, target_pose=pose,
            seed=0, steps=2, cfg=2.0, scheduler="auto", batch_size=1)
    with pytest.raises(PCDMsError, match="connect the target pose"):
        run(env, "PCDMsInpaint", model=m.demo, vae=m.vae, source=source, source_pose=pose, seed=0, steps=2, cfg=2.0,
            scheduler="auto", batch_size=1)
    with pytest.raises(PCDMsError, match="68x64 is not usable: width and height must be positive multiples of 8"):
        run(env, "PCDMsEncodeSource", image=_image("src_a.png"), dino=m.dino, clip=None, width=68, height=64)
    with pytest.raises(PCDMsError, match="does not describe|is a CLIP vision model"):
        run(env, "PCDMsDINOv2Loader", encoder_name="clip_tiny.safetensors", dtype="auto")


def test_pose_nodes(env):
    def xy(frames):  # coordinates only: the output marks visible joints with confidence 1, like DWPose
        kps = frames[0]["people"][0]["pose_keypoints_2d"]
        return [v for i, v in enumerate(kps) if i % 3 != 2]

    two = json.loads((PARITY / "inputs/pose_a.json").read_text())
    person = two[0]["people"][0]
    small = {"pose_keypoints_2d": [v * 0.5 if i % 3 != 2 else v for i, v in enumerate(person["pose_keypoints_2d"])]}
    two[0]["people"] = [small, person]
    chosen = run(env, "PCDMsSelectPerson", pose_keypoint=two, person=0)[0]
    assert len(chosen[0]["people"]) == 1 and xy(chosen) == pytest.approx(xy([{"people": [small]}]))
    largest = run(env, "PCDMsSelectPerson", pose_keypoint=two, person=-1)[0]
    assert xy(largest) == pytest.approx(xy([{"people": [person]}]))
    aligned = run(env, "PCDMsAlignPose", target_pose=chosen, source_pose=largest, scale=True, center=True)[0]
    assert xy(aligned) == pytest.approx(xy(largest))
    image = run(env, "PCDMsRenderPose", pose_keypoint=largest, width=88, height=128, hands=True)[0]
    assert image.shape == (1, 128, 88, 3) and image.max() == 1.0
    schema = env.nodes["PCDMsLoadPose"].define_schema()
    # the input folder's pose files, including the examples the pack copies there for its workflows
    assert schema.inputs[0].options == ["pcdms_example_source_pose.json", "pcdms_example_target_pose.json",
                                        "pose_a.json", "pose_b.txt", "pose_t1.json"]
    assert env.nodes["PCDMsLoadPose"].validate_inputs(pose_file="missing.json").startswith("pose file not found")


def test_auto_dtype_follows_comfyuis_choice_for_each_role(env, monkeypatch):
    """"auto" asks ComfyUI for the model's role: the UNet choice for the networks, the text-encoder choice for the
    image encoders, the VAE choice for the VAE; on a CPU without fast half kernels our networks compute in fp32."""
    bridge = env.pack.nodes.bridge
    gpu = torch.device("cuda")
    for name in ("get_torch_device", "text_encoder_device", "vae_device"):
        monkeypatch.setattr(env.mm, name, lambda *a, **k: gpu)
    monkeypatch.setattr(env.mm, "unet_dtype", lambda *a, **k: torch.bfloat16)
    monkeypatch.setattr(env.mm, "text_encoder_dtype", lambda *a, **k: torch.float16)
    monkeypatch.setattr(env.mm, "vae_dtype", lambda *a, **k: torch.float32)
    assert [bridge.load_dtype("auto", role) for role in ("unet", "encoder", "vae")] == [
        torch.bfloat16, torch.float16, torch.float32]
    assert bridge.load_dtype("fp16", "vae") == torch.float16  # the user's choice wins
    cpu = torch.device("cpu")
    for name in ("get_torch_device", "text_encoder_device", "vae_device"):
        monkeypatch.setattr(env.mm, name, lambda *a, **k: cpu)
    monkeypatch.setattr(bridge, "cpu_has_fast_half", lambda dtype: False)
    assert bridge.load_dtype("auto", "unet") == torch.float32
    monkeypatch.setattr(bridge, "cpu_has_fast_half", lambda dtype: True)
    assert bridge.load_dtype("auto", "encoder") == torch.float16


def test_load_pose_canvas_needs_both_sides(env):
    with pytest.raises(env.pack.pcdms_core.InputError, match="give both"):
        run(env, "PCDMsLoadPose", pose_file="pose_a.json", person=-1, canvas_width=512, canvas_height=0)
    keypoints, skeleton = run(env, "PCDMsLoadPose", pose_file="pose_a.json", person=-1, canvas_width=0, canvas_height=0)
    assert keypoints and skeleton.ndim == 4


def test_source_tokens_rule_for_refining(env):
    """One helper decides which source tokens go with the images to refine, for the stage node and the native
    path alike: one source for all, or a whole number of images per source, in order."""
    from pcdms_core import SourceFeatures

    bridge, error = env.pack.nodes.bridge, env.pack.pcdms_core.InputError
    pixels = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    tokens = torch.arange(2.0).reshape(2, 1, 1)
    two = SourceFeatures(pixels=pixels, size=(8, 8), tokens=tokens)
    assert torch.equal(bridge.source_tokens(two, 4)[:, 0, 0], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert bridge.source_tokens(two, 2) is tokens
    with pytest.raises(error, match="3 images to refine but 2 sources"):
        bridge.source_tokens(two, 3)
    with pytest.raises(error, match="no DINOv2 tokens"):
        bridge.source_tokens(SourceFeatures(pixels=pixels, size=(8, 8)))
