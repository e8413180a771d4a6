"""A dataset pushcut writes, read by LeRobot's own ``LeRobotDataset`` (lerobot 0.4.4, the last
release for Python 3.11, in an environment of its own, installed without its pins: it imports
torchvision, which beside this project's CPU torch means the 5 GB CUDA build of torch 2.14.1, and
decodes videos with torchcodec on Debian's FFmpeg libraries; hence ``slow``, run by ``make
test-all``)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pushcut.sim import demos
from pushcut.sim.config import EnvConfig

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["torch==2.14.1", "torchvision==0.29.1", "torchcodec", "accelerate", "datasets>=4.0,<4.2",
            "huggingface-hub<0.36", "pyarrow", "av", "jsonlines", "packaging", "draccus==0.10.0", "einops", "deepdiff",
            "imageio", "termcolor", "pandas", "gymnasium"]
READER = r"""
import json, sys
from lerobot.datasets.lerobot_dataset import LeRobotDataset
ds = LeRobotDataset("local/pushcut", root=sys.argv[1], video_backend="torchcodec")
item = ds[3]
print(json.dumps({"frames": ds.num_frames, "episodes": ds.num_episodes, "fps": ds.fps,
                  "features": sorted(ds.features), "video_keys": ds.meta.video_keys,
                  "image": list(item["observation.images.head"].shape), "state": list(item["observation.state"].shape),
                  "task": item["task"]}))
"""


@pytest.fixture(scope="session")
def lerobot_python() -> str:
    env = ROOT / ".cache" / "lerobot-0.4.4"
    python = env / "bin" / "python"
    ready = env / "ready"
    if subprocess.run(["dpkg", "-s", "ffmpeg"], capture_output=True, check=False).returncode:  # torchcodec's FFmpeg
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "ffmpeg"], check=True, capture_output=True)
    if not ready.exists() or ready.read_text() != " ".join(PACKAGES):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PACKAGES], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "lerobot==0.4.4"], check=True)
        ready.write_text(" ".join(PACKAGES))
    return str(python)


@pytest.mark.slow
def test_lerobots_own_loader_reads_a_dataset_pushcut_wrote(lerobot_python, tmp_path):
    env = EnvConfig(task="click_bell", image_size=(64, 64), max_steps=60)
    root = demos.record(demos.DemosConfig(env=env, num_episodes=2, chunk_len=10, obs_offsets=(),
                                          out_dir=str(tmp_path), format="lerobot"), progress=False)
    info = json.loads((root / "meta" / "info.json").read_text())
    out = subprocess.run([lerobot_python, "-c", READER, str(root)], check=False, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["frames"] == info["total_frames"] and got["episodes"] == 2 and got["fps"] == 25
    assert {"observation.state", "action", "observation.images.head"} <= set(got["features"])
    assert got["video_keys"] == ["observation.images.head"]
    assert got["image"] == [3, 64, 64] and got["state"] == [14] and got["task"] == "click the bell"
