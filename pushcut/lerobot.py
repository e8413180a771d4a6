"""LeRobot datasets (format v3.0) written and read with the ecosystem's libraries: pyarrow for the
parquet tables, PyAV for the videos.

Layout (LeRobot's ``LeRobotDataset`` reads it as it writes it)::

    meta/info.json                               codebase_version "v3.0", fps, features, totals, paths
    meta/stats.json                              per feature: min, max, mean, std, count (images per channel, 0-1)
    meta/tasks.parquet                           task string (the index) -> task_index
    meta/episodes/chunk-000/file-000.parquet     per episode: length, tasks, its rows and video span
    data/chunk-000/file-000.parquet              per frame: the non-video features, timestamp,
                                                 frame_index, episode_index, index, task_index
    videos/<key>/chunk-000/file-000.mp4          every episode's frames of one camera, one after another

Frames are at ``fps`` (one per action: the policy's action rate). Videos are AV1 (``libsvtav1``,
yuv420p), LeRobot's default. One data file and one video file per camera hold every episode (well
under LeRobot's 100 MB / 500 MB per file for the datasets written here).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
CODEC, PIX_FMT = "libsvtav1", "yuv420p"
INDEX_FEATURES = {"timestamp": {"dtype": "float32", "shape": [1], "names": None},
                  "frame_index": {"dtype": "int64", "shape": [1], "names": None},
                  "episode_index": {"dtype": "int64", "shape": [1], "names": None},
                  "index": {"dtype": "int64", "shape": [1], "names": None},
                  "task_index": {"dtype": "int64", "shape": [1], "names": None}}


class LeRobotFormatError(ValueError):
    """A dataset that is not LeRobot v3.0 as this module reads it, or does not fit what it is asked for."""


def vector_feature(names: Sequence[str]) -> dict:
    return {"dtype": "float32", "shape": [len(names)], "names": list(names)}


def video_feature(height: int, width: int, fps: int) -> dict:
    return {"dtype": "video", "shape": [height, width, 3], "names": ["height", "width", "channels"],
            "info": {"video.height": height, "video.width": width, "video.codec": "av1", "video.pix_fmt": PIX_FMT,
                     "video.is_depth_map": False, "video.fps": fps, "video.channels": 3, "has_audio": False}}


def _stats(x: np.ndarray) -> dict:
    """min, max, mean, std, count over the first axis (images: per channel, scaled to 0-1)."""
    if x.ndim == 4:  # (N, H, W, 3) uint8 -> per channel, shaped (3, 1, 1) as LeRobot keeps them
        x = x.astype(np.float64).transpose(0, 3, 1, 2) / 255.0
        axes, keep = (0, 2, 3), lambda v: v.reshape(3, 1, 1).tolist()
    else:
        axes, keep = (0,), lambda v: np.atleast_1d(v).tolist()
    return {"min": keep(x.min(axes)), "max": keep(x.max(axes)), "mean": keep(x.mean(axes)),
            "std": keep(x.std(axes)), "count": [int(x.shape[0])]}


def _write_video(path: Path, frames: np.ndarray, fps: int) -> None:
    os.environ.setdefault("SVT_LOG", "1")  # the AV1 encoder's own log: errors only
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(CODEC, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], PIX_FMT
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def read_video(path: Path) -> np.ndarray:
    """Every frame of ``path`` as (N, H, W, 3) uint8 RGB."""
    import av

    with av.open(str(path)) as f:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in f.decode(video=0)])


def write_dataset(root: str | Path, episodes: Sequence[Mapping[str, np.ndarray]], tasks: Sequence[str],
                  features: Mapping[str, dict], fps: int, robot_type: str) -> Path:
    """Write ``episodes`` (each: every feature of ``features`` as an array with one row per frame)
    with their task strings as a LeRobot v3.0 dataset at ``root`` (replaced atomically)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    videos = [k for k, f in features.items() if f["dtype"] == "video"]
    vectors = [k for k, f in features.items() if f["dtype"] != "video"]
    task_index = {t: i for i, t in enumerate(dict.fromkeys(tasks))}
    lengths = [len(e[vectors[0]]) for e in episodes]
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(int)
    columns: dict[str, list] = {k: [] for k in [*vectors, *INDEX_FEATURES]}
    for e, (ep, task) in enumerate(zip(episodes, tasks, strict=True)):
        n = lengths[e]
        for k in vectors:
            columns[k].extend(np.asarray(ep[k], dtype=np.float32))
        columns["timestamp"].extend((np.arange(n) / fps).astype(np.float32))
        columns["frame_index"].extend(range(n))
        columns["episode_index"].extend([e] * n)
        columns["index"].extend(range(starts[e], starts[e + 1]))
        columns["task_index"].extend([task_index[task]] * n)
    table = pa.table({k: (pa.array(v, type=pa.list_(pa.float32(), len(v[0]))) if k in vectors else pa.array(v))
                      for k, v in columns.items()})
    (tmp / "data/chunk-000").mkdir(parents=True)
    pq.write_table(table, tmp / DATA_PATH.format(chunk_index=0, file_index=0))
    for key in videos:
        _write_video(tmp / VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0),
                     np.concatenate([np.asarray(ep[key]) for ep in episodes]), fps)
    (tmp / "meta/episodes/chunk-000").mkdir(parents=True)
    tasks_table = pd.DataFrame({"task_index": list(task_index.values())}, index=list(task_index))
    tasks_table.to_parquet(tmp / "meta/tasks.parquet")
    rows = {"episode_index": list(range(len(episodes))), "tasks": [[t] for t in tasks], "length": lengths,
            "data/chunk_index": [0] * len(episodes), "data/file_index": [0] * len(episodes),
            "dataset_from_index": starts[:-1].tolist(), "dataset_to_index": starts[1:].tolist(),
            "meta/episodes/chunk_index": [0] * len(episodes), "meta/episodes/file_index": [0] * len(episodes)}
    for key in videos:
        rows |= {f"videos/{key}/chunk_index": [0] * len(episodes), f"videos/{key}/file_index": [0] * len(episodes),
                 f"videos/{key}/from_timestamp": (starts[:-1] / fps).tolist(),
                 f"videos/{key}/to_timestamp": (starts[1:] / fps).tolist()}
    pq.write_table(pa.table(rows), tmp / EPISODES_PATH)
    stats = {k: _stats(np.concatenate([np.asarray(ep[k]) for ep in episodes])) for k in [*vectors, *videos]}
    (tmp / "meta/stats.json").write_text(json.dumps(stats, indent=2))
    info = {"codebase_version": CODEBASE_VERSION, "robot_type": robot_type, "total_episodes": len(episodes),
            "total_frames": int(starts[-1]), "total_tasks": len(task_index), "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": 100, "video_files_size_in_mb": 500, "fps": fps,
            "splits": {"train": f"0:{len(episodes)}"}, "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if videos else None, "features": {**features, **INDEX_FEATURES}}
    (tmp / "meta/info.json").write_text(json.dumps(info, indent=4))
    if root.exists():
        shutil.rmtree(root)
    os.replace(tmp, root)
    return root


def read_dataset(root: str | Path) -> tuple[dict, list[dict[str, np.ndarray]], list[str]]:
    """``(info, episodes, tasks)`` of a LeRobot v3.0 dataset: per episode every feature as an array,
    videos decoded to (N, H, W, 3) uint8; refused with the reason where a file is missing or the
    version, the frame counts or the video spans do not add up."""
    import pyarrow.parquet as pq

    root = Path(root)
    info_path = root / "meta/info.json"
    if not info_path.exists():
        raise LeRobotFormatError(f"{root} is not a LeRobot dataset: no meta/info.json")
    info = json.loads(info_path.read_text())
    if info.get("codebase_version") != CODEBASE_VERSION:
        raise LeRobotFormatError(f"{info_path}: codebase_version {info.get('codebase_version')!r}; "
                                 f"this reads {CODEBASE_VERSION} (convert older datasets with LeRobot's own tools)")
    features = info["features"]
    videos = [k for k, f in features.items() if f["dtype"] == "video"]
    vectors = [k for k, f in features.items() if f["dtype"] not in ("video", "image") and k not in INDEX_FEATURES]
    for rel in [EPISODES_PATH, "meta/tasks.parquet"]:
        if not (root / rel).exists():
            raise LeRobotFormatError(f"{root}: {rel} is missing")
    eps = pq.read_table(root / EPISODES_PATH).to_pylist()
    tables: dict[tuple[int, int], dict] = {}
    frames: dict[tuple[str, int, int], np.ndarray] = {}
    out, tasks = [], []
    for ep in eps:
        loc = (ep["data/chunk_index"], ep["data/file_index"])
        if loc not in tables:
            path = root / info["data_path"].format(chunk_index=loc[0], file_index=loc[1])
            if not path.exists():
                raise LeRobotFormatError(f"{root}: {path.relative_to(root)} is missing")
            tables[loc] = pq.read_table(path).to_pydict()
        table, rows = tables[loc], slice(ep["dataset_from_index"], ep["dataset_to_index"])
        base = table["index"][0]
        rows = slice(rows.start - base, rows.stop - base)
        episode = {k: np.asarray(table[k][rows], dtype=np.float32) for k in vectors}
        if len(episode[vectors[0]]) != ep["length"]:
            raise LeRobotFormatError(f"{root}: episode {ep['episode_index']} lists {ep['length']} frames, "
                                     f"its data holds {len(episode[vectors[0]])}")
        for key in videos:
            vloc = (key, ep[f"videos/{key}/chunk_index"], ep[f"videos/{key}/file_index"])
            if vloc not in frames:
                path = root / info["video_path"].format(video_key=key, chunk_index=vloc[1], file_index=vloc[2])
                if not path.exists():
                    raise LeRobotFormatError(f"{root}: {path.relative_to(root)} is missing")
                frames[vloc] = read_video(path)
            first = round(ep[f"videos/{key}/from_timestamp"] * info["fps"])
            episode[key] = frames[vloc][first : first + ep["length"]]
            if len(episode[key]) != ep["length"]:
                raise LeRobotFormatError(f"{root}: {key} holds {len(episode[key])} frames of episode "
                                         f"{ep['episode_index']}, which has {ep['length']}")
        out.append(episode)
        tasks.append(ep["tasks"][0])
    return info, out, tasks
