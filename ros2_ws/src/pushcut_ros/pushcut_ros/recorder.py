"""MCAP recording of ROS 2 messages (CDR), readable in Foxglove, without rosbag2.

Schemas are the ``ros2msg`` definitions of the installed message packages, with their
dependencies appended as rosbag2 does.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from mcap.writer import Writer
from rclpy.serialization import serialize_message

_BUILTIN = {"bool", "byte", "char", "float32", "float64", "int8", "uint8", "int16", "uint16", "int32",
            "uint32", "int64", "uint64", "string", "wstring"}


def _share_dirs() -> list[Path]:
    """The venv's share/ (ROS wheels) and every ament prefix's share/ (a ROS install)."""
    roots = {Path(sys.prefix) / "share"}
    for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if p:
            roots.add(Path(p) / "share")
    return [r for r in roots if r.exists()]


def _msg_file(pkg: str, name: str) -> str:
    for share in _share_dirs():
        f = share / pkg / "msg" / f"{name}.msg"
        if f.exists():
            return f.read_text()
    raise FileNotFoundError(f"no definition for {pkg}/msg/{name}")


def msg_definition(datatype: str) -> str:
    """Full ros2msg text of ``pkg/msg/Name`` with every nested type appended."""
    pkg, _, name = datatype.split("/")
    main = _msg_file(pkg, name)
    seen: dict[str, str] = {}
    todo = [(pkg, main)]
    while todo:
        cur_pkg, text = todo.pop()
        for line in text.splitlines():
            line = line.split("#")[0].strip()
            if not line:
                continue
            ftype = re.split(r"\s+", line)[0]
            base = re.sub(r"(\[.*\]|<=\d+)", "", ftype)
            if base in _BUILTIN or "=" in line.split()[1 if len(line.split()) > 1 else 0]:
                continue
            dep_pkg, dep = base.split("/") if "/" in base else (cur_pkg, base)
            key = f"{dep_pkg}/msg/{dep}"
            if key not in seen:
                seen[key] = _msg_file(dep_pkg, dep)
                todo.append((dep_pkg, seen[key]))
    parts = [main] + [f"{'=' * 80}\nMSG: {k.replace('/msg/', '/')}\n{v}" for k, v in seen.items()]
    return "\n".join(parts)


class McapRecorder:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "wb")  # noqa: SIM115 - held open until close()
        self._w = Writer(self._f)
        self._w.start(profile="ros2", library="pushcut")
        self._channels: dict[str, int] = {}
        self.count = 0

    def write(self, topic: str, datatype: str, msg, stamp_ns: int | None = None) -> None:
        if topic not in self._channels:
            schema = self._w.register_schema(name=datatype, encoding="ros2msg",
                                             data=msg_definition(datatype).encode())
            self._channels[topic] = self._w.register_channel(topic=topic, message_encoding="cdr", schema_id=schema)
        now = time.time_ns()
        self._w.add_message(self._channels[topic], log_time=now, publish_time=stamp_ns or now,
                            data=serialize_message(msg))
        self.count += 1

    def close(self) -> None:
        self._w.finish()
        self._f.close()
