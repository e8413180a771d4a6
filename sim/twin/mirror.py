"""The workcell's left-right mirror symmetry, for augmenting dual-arm demos.

The twin is symmetric about the plane x = 0: the two Pipers stand at x = -0.3 and +0.3, the head
camera sits at x = 0 looking along +y, the light and the table (an odd number of checker squares
across) are centred, and the tasks draw their objects from ranges symmetric in x. Mirroring an
episode therefore gives another valid episode of the same task: the other arm does what the
first did, on the mirrored scene.

For one Piper the mirror image of a pose is the pose with joints 1, 4 and 6 (the base yaw and
the two wrist rolls) negated and 2, 3 and 5 (the pitches) kept; the TCP then lands within 3 mm of
the mirrored position (the links' small lateral offsets). The head image mirrors by flipping its
columns; the wrist cameras are not symmetric within their arm, so mirroring refuses them.
"""

from __future__ import annotations

import numpy as np

from pushcut import spec

JOINT_SIGNS = np.array([-1.0, 1.0, 1.0, -1.0, 1.0, -1.0, 1.0])  # j1..j6, gripper: one arm's mirror image
MIRRORABLE_CAMERAS = (spec.HEAD_CAMERA,)


def mirror_dual_arm(x: np.ndarray) -> np.ndarray:
    """(..., 14) dual-arm joints (actions or proprio) -> the mirror image: arms swapped, each
    mirrored by ``JOINT_SIGNS``. The joint limits are symmetric in the negated joints, so a
    command within limits stays within them."""
    x = np.asarray(x)
    if x.shape[-1] != spec.DUAL_ARM_DIM:
        raise ValueError(f"expected {spec.DUAL_ARM_DIM} dual-arm dims, got shape {x.shape}")
    n = spec.DOF_PER_ARM
    left, right = x[..., :n], x[..., n:]
    return np.concatenate([right * JOINT_SIGNS, left * JOINT_SIGNS], axis=-1).astype(x.dtype)


def mirror_image(image: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) head-camera image(s) -> the view of the mirrored scene (columns reversed)."""
    return np.ascontiguousarray(np.asarray(image)[..., ::-1, :])


def mirror_episode(episode: dict[str, np.ndarray], cameras: tuple[str, ...]) -> dict[str, np.ndarray]:
    """A demo episode (``pushcut.sim.demos`` arrays) -> its mirror image, with the images of
    ``cameras`` only (any other camera's would not be mirrored)."""
    unsupported = sorted(set(cameras) - set(MIRRORABLE_CAMERAS))
    if unsupported:
        raise ValueError(f"cannot mirror camera(s) {unsupported}: only {list(MIRRORABLE_CAMERAS)} is symmetric "
                         "about the workcell's centre plane")
    out = {k: v for k, v in episode.items() if not k.startswith("images_")}
    out["actions"] = mirror_dual_arm(episode["actions"])
    out["obs_proprio"] = mirror_dual_arm(episode["obs_proprio"])
    for cam in cameras:
        out[f"images_{cam}"] = mirror_image(episode[f"images_{cam}"])
    return out
