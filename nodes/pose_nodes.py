"""Pose nodes: load keypoints from a file, pick a person, align a target pose to the source body, render."""

from __future__ import annotations

import os

import torch

import folder_paths
from comfy_api.latest import io

from ..pcdms_core.pose.keypoints import align_pose, load_pose, poses_from_keypoints, poses_to_keypoints, render_pose
from ..pcdms_core.errors import InputError
from .bridge import images_out, output, reported
from .types import PoseKeypoint

CATEGORY = "PCDMs/pose"
POSE_SUFFIXES = (".json", ".txt", ".csv")
PERSON_TOOLTIP = "Which person when there are several: -1 picks the largest; 0, 1, ... the order in the file."


def _person(index: int):
    return "largest" if index < 0 else index


def pose_files() -> list[str]:
    root = folder_paths.get_input_directory()
    out = []
    for base, _, files in os.walk(root):
        for f in files:
            if f.lower().endswith(POSE_SUFFIXES):
                out.append(os.path.relpath(os.path.join(base, f), root).replace(os.sep, "/"))
    return sorted(out)


def _render(poses, size=None, hands: bool = True) -> torch.Tensor:
    """One skeleton image per pose as an IMAGE, all at ``size`` or the first pose's canvas (a batch shares one size)."""
    size = size or poses[0].canvas
    return images_out(torch.stack([render_pose(p, size, hands=hands) for p in poses]).float() / 255)


class PCDMsLoadPose(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PCDMsLoadPose",
            display_name="PCDMs Load Pose",
            category=CATEGORY,
            description=(
                "Reads keypoints from a file in ComfyUI's input folder: POSE_KEYPOINT / OpenPose .json (pixel or "
                "normalised coordinates), or a DeepFashion keypoint .txt (normalized_pose_txt) / GFLA annotation line."
            ),
            inputs=[
                io.Combo.Input("pose_file", options=pose_files(), tooltip="A .json, .txt or .csv file in ComfyUI's input folder."),
                io.Int.Input("person", default=-1, min=-1, max=99, tooltip=PERSON_TOOLTIP),
                io.Int.Input("canvas_width", default=0, min=0, max=8192,
                             tooltip="Only for OpenPose files in pixels, which do not say their image size (0: not needed)."),
                io.Int.Input("canvas_height", default=0, min=0, max=8192,
                             tooltip="Only for OpenPose files in pixels: the image height (0: not needed)."),
            ],
            outputs=[
                PoseKeypoint.Output(display_name="pose_keypoint"),
                io.Image.Output(display_name="skeleton", tooltip="The pose drawn on its own canvas, for preview."),
            ],
        )

    @classmethod
    def execute(cls, pose_file, person, canvas_width, canvas_height) -> io.NodeOutput:
        path = folder_paths.get_annotated_filepath(pose_file)
        if (canvas_width > 0) != (canvas_height > 0):
            raise InputError(
                f"PCDMs Load Pose: canvas_width is {canvas_width} and canvas_height {canvas_height}; give both (the "
                "size the keypoints were measured on) or leave both at 0 to use the file's own canvas size"
            )
        canvas = (canvas_width, canvas_height) if canvas_width > 0 else None
        with reported("PCDMs Load Pose") as said:
            pose = load_pose(path, person=_person(person), canvas=canvas)
        return output(poses_to_keypoints([pose]), _render([pose]), said=said)

    @classmethod
    def fingerprint_inputs(cls, pose_file, **kwargs):
        path = folder_paths.get_annotated_filepath(pose_file)
        return os.path.getmtime(path) if os.path.exists(path) else pose_file

    @classmethod
    def validate_inputs(cls, pose_file):
        # Only pose_file is named: ComfyUI reports a failed check once per argument it passes in, so a
        # ``**kwargs`` here would repeat the message for every input of the node.
        if pose_file is not None and not folder_paths.exists_annotated_filepath(pose_file):
            return f"pose file not found in ComfyUI's input folder: {pose_file}"
        return True


class PCDMsSelectPerson(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PCDMsSelectPerson",
            display_name="PCDMs Select Person",
            category=CATEGORY,
            description="Keeps one person per frame of a POSE_KEYPOINT (e.g. from DWPose on a group photo).",
            inputs=[
                PoseKeypoint.Input("pose_keypoint", tooltip="Keypoints from DWPose, OpenPose or PCDMs Load Pose."),
                io.Int.Input("person", default=-1, min=-1, max=99, tooltip=PERSON_TOOLTIP),
            ],
            outputs=[PoseKeypoint.Output(display_name="pose_keypoint")],
        )

    @classmethod
    def execute(cls, pose_keypoint, person) -> io.NodeOutput:
        return io.NodeOutput(poses_to_keypoints(poses_from_keypoints(pose_keypoint, person=_person(person))))


class PCDMsAlignPose(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PCDMsAlignPose",
            display_name="PCDMs Align Pose",
            category=CATEGORY,
            description=(
                "Moves the target skeleton onto the source body: scales it to the source's size (neck to ankles) and "
                "centres it on the source's torso, on the source's canvas. Helps when the target pose comes from a "
                "photo of someone of another size or framing."
            ),
            inputs=[
                PoseKeypoint.Input("target_pose", tooltip="The pose to move (each frame is aligned)."),
                PoseKeypoint.Input("source_pose", tooltip="The source person's keypoints (first frame used)."),
                io.Boolean.Input("scale", default=True, tooltip="Match the source's body size."),
                io.Boolean.Input("center", default=True, tooltip="Match the source's torso centre."),
            ],
            outputs=[PoseKeypoint.Output(display_name="pose_keypoint")],
        )

    @classmethod
    def execute(cls, target_pose, source_pose, scale, center) -> io.NodeOutput:
        source = poses_from_keypoints(source_pose)[0]
        aligned = [align_pose(t, source, scale=scale, center=center) for t in poses_from_keypoints(target_pose)]
        return io.NodeOutput(poses_to_keypoints(aligned))


class PCDMsRenderPose(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PCDMsRenderPose",
            display_name="PCDMs Render Pose",
            category=CATEGORY,
            description=(
                "Draws keypoints as the skeleton image stage 2 reads (DWPose / ControlNet style: limbs, joints, "
                "hands; no face), pixel for pixel like the official OpenCV drawing."
            ),
            inputs=[
                PoseKeypoint.Input("pose_keypoint", tooltip="Keypoints to draw (one image per frame)."),
                io.Int.Input("width", default=0, min=0, max=8192, tooltip="0: the pose's own canvas size."),
                io.Int.Input("height", default=0, min=0, max=8192, tooltip="0: the pose's own canvas size."),
                io.Boolean.Input("hands", default=True, tooltip="Draw hand keypoints when the pose has them."),
            ],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def execute(cls, pose_keypoint, width, height, hands) -> io.NodeOutput:
        poses = poses_from_keypoints(pose_keypoint, min_joints=1)
        size = (width, height) if width > 0 and height > 0 else None
        return io.NodeOutput(_render(poses, size, hands))


NODES = [PCDMsLoadPose, PCDMsSelectPerson, PCDMsAlignPose, PCDMsRenderPose]
