"""Test stand-in for comfyui_controlnet_aux's DWPose Estimator (node id DWPreprocessor).

The real node downloads its detector weights from a hub, which these machines cannot reach. This stand-in
has the same inputs and outputs and returns a fixed person (the parity set's pose_b, scaled to the image),
so the workflow that uses DWPose can run end to end. Loaded only by the tests, never by the pack.
"""

import json
import os

import numpy as np
import torch

HERE = os.path.dirname(__file__)


class DWPreprocessor:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"image": ("IMAGE",)},
            "optional": {
                "detect_hand": (["enable", "disable"], {"default": "enable"}),
                "detect_body": (["enable", "disable"], {"default": "enable"}),
                "detect_face": (["enable", "disable"], {"default": "enable"}),
                "resolution": ("INT", {"default": 512, "min": 64, "max": 16384, "step": 64}),
                "bbox_detector": (["None", "yolox_l.torchscript.pt", "yolox_l.onnx", "yolo_nas_l_fp16.onnx",
                                   "yolo_nas_m_fp16.onnx", "yolo_nas_s_fp16.onnx"], {"default": "yolox_l.onnx"}),
                "pose_estimator": (["dw-ll_ucoco_384_bs5.torchscript.pt", "dw-ll_ucoco_384.onnx", "dw-ll_ucoco.onnx"],
                                   {"default": "dw-ll_ucoco_384_bs5.torchscript.pt"}),
                "scale_stick_for_xinsr_cn": (["disable", "enable"], {"default": "disable"}),
            },
        }

    RETURN_TYPES = ("IMAGE", "POSE_KEYPOINT")
    FUNCTION = "estimate_pose"
    CATEGORY = "ControlNet Preprocessors/Faces and Poses Estimators"

    def estimate_pose(self, image, **kwargs):
        with open(os.path.join(HERE, "pose.json")) as fh:
            frame = json.load(fh)[0]
        w0, h0 = frame["canvas_width"], frame["canvas_height"]
        out = []
        for img in image:
            h, w = img.shape[0], img.shape[1]
            kps = np.array(frame["people"][0]["pose_keypoints_2d"], dtype=np.float64).reshape(-1, 3)
            kps[:, 0] *= w / w0
            kps[:, 1] *= h / h0
            out.append({"people": [{"pose_keypoints_2d": kps.ravel().tolist(), "face_keypoints_2d": None,
                                    "hand_left_keypoints_2d": None, "hand_right_keypoints_2d": None}],
                        "canvas_width": w, "canvas_height": h})
        return (torch.zeros_like(image), out)


NODE_CLASS_MAPPINGS = {"DWPreprocessor": DWPreprocessor}
NODE_DISPLAY_NAME_MAPPINGS = {"DWPreprocessor": "DWPose Estimator (test stand-in)"}
