"""Trials as a LeRobot v3.0 dataset: ``pushcut-trials lerobot LOG OUT``.

Each trial of the log that has an MCAP recording becomes one episode: frames at ``fps`` (the
policy's action rate) from the first camera frame to the last message, each holding the latest
image of every recorded camera, the latest joint state of both arms (``observation.state``, the
policy's 14-dim layout, gripper normalised) and the latest command sent to them (``action``; the
measured state before the first command), all by the messages' own header stamps. ``next.success``
is 1 on the last frame of a successful trial (0 elsewhere), so the outcome travels with the
episode; its task string is the instruction of the trial's task.
"""

from __future__ import annotations

import bisect
from pathlib import Path

import numpy as np

from pushcut.deploy.piper.units import gripper_m_to_normalised
from pushcut.spec import ARMS, DOF_PER_ARM, dual_arm_names


def _stamp(msg) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


def read_recording(path: str | Path) -> dict[str, tuple[list[float], list]]:
    """Every message of an MCAP recording by topic, decoded: (header stamps in s, messages), in
    stamp order."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    by_topic: dict[str, list[tuple[float, object]]] = {}
    with open(path, "rb") as f:
        for _, channel, _, msg in make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages():
            by_topic.setdefault(channel.topic, []).append((_stamp(msg), msg))
    out = {}
    for topic, msgs in by_topic.items():
        msgs.sort(key=lambda m: m[0])
        out[topic] = ([m[0] for m in msgs], [m[1] for m in msgs])
    return out


def _latest(stamped: tuple[list[float], list], t: float):
    i = bisect.bisect_right(stamped[0], t) - 1
    return stamped[1][i] if i >= 0 else None


def _arm_vector(msg) -> np.ndarray:
    q = np.asarray(msg.position[:DOF_PER_ARM], dtype=np.float64)
    q[6] = gripper_m_to_normalised(q[6])
    return q


def _image(msg) -> np.ndarray:
    img = np.frombuffer(bytes(msg.data), dtype=np.uint8).reshape(msg.height, msg.step // 3, 3)[:, : msg.width]
    return img[..., ::-1] if msg.encoding == "bgr8" else img


def episode_frames(topics: dict, cameras: list[str], fps: int, success: bool) -> dict[str, np.ndarray] | None:
    """One trial's frames (None where a stream it needs is missing)."""
    none = ([], [])
    cams = {c: topics.get(f"/cameras/{c}/image_raw", none) for c in cameras}
    states = {a: topics.get(f"/{a}/joint_states", none) for a in ARMS}
    commands = {a: topics.get(f"/{a}/joint_command", none) for a in ARMS}
    if not all(s[0] for s in [*cams.values(), *states.values()]):
        return None
    start = max(s[0][0] for s in [*cams.values(), *states.values()])
    end = max(s[0][-1] for s in topics.values())
    times = start + np.arange(int((end - start) * fps) + 1) / fps
    frames: dict[str, list] = {"observation.state": [], "action": [], "next.success": [],
                               **{f"observation.images.{c}": [] for c in cameras}}
    for t in times:
        state = np.concatenate([_arm_vector(_latest(states[a], t)) for a in ARMS])
        cmd = [_latest(commands[a], t) for a in ARMS]
        frames["observation.state"].append(state)
        frames["action"].append(np.concatenate([_arm_vector(c) if c is not None else state[k * 7 : (k + 1) * 7]
                                                for k, c in enumerate(cmd)]))
        for c in cameras:
            frames[f"observation.images.{c}"].append(_image(_latest(cams[c], t)))
        frames["next.success"].append([0.0])
    if success:
        frames["next.success"][-1] = [1.0]
    return {k: np.stack(v) if "images" in k else np.asarray(v, dtype=np.float32) for k, v in frames.items()}


def export_trials(trials: list[dict], out: str | Path, fps: int = 25) -> Path:
    """The trials (rows of a trial log) that have a recording as a LeRobot dataset at ``out``."""
    from pushcut.lerobot import vector_feature, video_feature, write_dataset
    from pushcut.sim.tasks import TASKS

    rows = [r for r in trials if r.get("recording") and Path(r["recording"]).exists()]
    if not rows:
        raise SystemExit("no trial with a recording to export")
    episodes, tasks, cameras = [], [], None
    for row in rows:
        topics = read_recording(row["recording"])
        cameras = cameras or sorted(t.split("/")[2] for t in topics if t.startswith("/cameras/"))
        frames = episode_frames(topics, cameras, fps, row["outcome"] == "success")
        if frames is not None:
            episodes.append(frames)
            tasks.append(TASKS[row["task"]]().instruction)
    features = {"observation.state": vector_feature(dual_arm_names()), "action": vector_feature(dual_arm_names()),
                "next.success": vector_feature(["success"]),
                **{f"observation.images.{c}": video_feature(*episodes[0][f"observation.images.{c}"].shape[1:3], fps)
                   for c in cameras}}
    return write_dataset(out, episodes, tasks, features, fps, robot_type="piper_dual")
