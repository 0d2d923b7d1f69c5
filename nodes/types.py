"""The socket types of the pack. ``POSE_KEYPOINT`` is comfyui_controlnet_aux's; the others are ours."""

from comfy_api.latest import io

PcdmsModel = io.Custom("PCDMS_MODEL")  # a stage checkpoint: prior, inpainting (paper or no-prior) or refining
PcdmsClip = io.Custom("PCDMS_CLIP")  # CLIP ViT-H/14 vision tower with PCDMs' preprocessing
PcdmsDino = io.Custom("PCDMS_DINO")  # DINOv2-giant with PCDMs' preprocessing
PcdmsVae = io.Custom("PCDMS_VAE")  # a diffusers-format VAE from the PCDMs VAE Loader
PcdmsSource = io.Custom("PCDMS_SOURCE")  # the source image encoded once: pixels, CLIP embedding, DINOv2 tokens
PcdmsEmbedding = io.Custom("PCDMS_EMBEDDING")  # the prior's predicted target CLIP embedding
PoseKeypoint = io.Custom("POSE_KEYPOINT")  # list of frames {"people": [...], "canvas_width", "canvas_height"}
