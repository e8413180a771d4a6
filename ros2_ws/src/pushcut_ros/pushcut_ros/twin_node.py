"""twin_node: the MuJoCo twin behind the robot's topics, so the whole stack runs without hardware.

Publishes what the robot would (camera images, both arms' joint states) plus the task's success
and episode-done signals. Time in the twin is driven by the commands: each pair of left/right
commands (same stamp) advances the physics by one control period toward them, so the dry run
executes the policy's smoothed path as ``pushcut-eval`` does, however fast the host is; with no
commands the twin holds still, like a robot waiting for its controller. ``/twin/reset`` (Int64
seed) starts a seeded episode and is answered on ``/twin/ready`` with the same seed. While
``/estop`` is true it ignores commands, as e-stopped arms do.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Int64

from pushcut.sim.config import EnvConfig
from pushcut.sim.twin.env import TwinEnv
from pushcut.spec import ARMS

from .conversions import arm_array, arm_state_msg, image_msg, join_state, split_action, stamp_to_s
from .inputs import StateInput, TopicAudit
from .spin import spin_main
from .topics import ESTOP_TOPIC, camera_topic, joint_command_topic, joint_states_topic


class TwinNode(Node):
    def __init__(self, **kwargs):
        super().__init__("twin", **kwargs)
        self.declare_parameter("task", "click_bell")
        self.declare_parameter("cameras", ["head"])
        self.declare_parameter("image_height", 64)
        self.declare_parameter("image_width", 64)
        self.declare_parameter("command_hz", 50)
        self.declare_parameter("camera_hz", 25)
        self.declare_parameter("max_steps", 0)  # 0: the task's own step limit
        self.declare_parameter("speed_percent", 100)  # the joints' speed (EnvConfig.speed_percent): the bundle's
        p = {n: self.get_parameter(n).value for n in ("task", "cameras", "image_height", "image_width",
                                                       "command_hz", "camera_hz", "max_steps", "speed_percent")}
        # NOTE: an EGL context is bound to the thread that made it, and executors move callbacks
        # between threads: every call into the env runs on this one thread.
        self._sim = ThreadPoolExecutor(max_workers=1, thread_name_prefix="twin")
        cfg = EnvConfig(task=p["task"], cameras=tuple(p["cameras"]),
                        image_size=(p["image_height"], p["image_width"]), max_steps=p["max_steps"] or None,
                        speed_percent=p["speed_percent"])
        self.env = self._sim.submit(TwinEnv, cfg).result()
        if self.env.cfg.physics_hz % p["command_hz"]:
            raise ValueError(f"command_hz {p['command_hz']} must divide the twin's physics rate "
                             f"{self.env.cfg.physics_hz}")
        self.physics_per_tick = self.env.cfg.physics_hz // p["command_hz"]
        self.image_pubs = {c: self.create_publisher(Image, camera_topic(c), 10) for c in p["cameras"]}
        self.state_pubs = {a: self.create_publisher(JointState, joint_states_topic(a), 10) for a in ARMS}
        self.success_pub = self.create_publisher(Bool, "/twin/success", 10)
        self.ready_pub = self.create_publisher(Int64, "/twin/ready", 10)
        self.done_pub = self.create_publisher(Bool, "/twin/done", 10)
        self.commands: dict[str, tuple[float, np.ndarray]] = {}
        self.applied_stamp = -1.0
        self.steps_applied = 0
        for arm in ARMS:
            self.create_subscription(JointState, joint_command_topic(arm), lambda m, a=arm: self._on_command(a, m), 10)
        self.create_subscription(Int64, "/twin/reset", self._on_reset, 10)
        self.estopped = False
        self.audit = TopicAudit(self)
        self.estop_input = StateInput(self, Bool, ESTOP_TOPIC, lambda m: setattr(self, "estopped", m.data),
                                      audit=self.audit)
        self.active = False
        self.timer = self.create_timer(1.0 / p["camera_hz"], lambda: self._sim.submit(self._publish, True).result())

    def _on_command(self, arm: str, msg: JointState) -> None:
        if self.estopped:
            return
        try:
            self.commands[arm] = (stamp_to_s(msg.header.stamp), arm_array(msg))
        except ValueError as exc:
            self.get_logger().warning(f"ignoring malformed command for {arm}: {exc}", throttle_duration_sec=1.0)
            return
        stamps = {self.commands[a][0] for a in ARMS if a in self.commands}
        if len(self.commands) == len(ARMS) and len(stamps) == 1 and stamps.pop() > self.applied_stamp:
            self._sim.submit(self._step).result()

    def _on_reset(self, msg: Int64) -> None:
        self._sim.submit(self._reset, int(msg.data)).result()

    def _reset(self, seed: int) -> None:
        self.env.reset(seed)
        self.commands.clear()
        self.active = True
        self._publish(images=True)
        self.ready_pub.publish(Int64(data=seed))
        self.get_logger().info(f"episode reset to seed {seed}")

    def _step(self) -> None:
        if not self.active or len(self.commands) < len(ARMS):
            return
        self.applied_stamp = self.commands[ARMS[0]][0]
        if not self.env.done:
            self.env.servo(join_state({a: self.commands[a][1] for a in ARMS}), self.physics_per_tick)
            self.steps_applied += 1
        self._publish(images=False)

    def _publish(self, images: bool) -> None:
        if not self.active:
            return
        stamp = self.get_clock().now().to_msg()
        per_arm = split_action(self.env.proprio())
        for arm in ARMS:
            self.state_pubs[arm].publish(arm_state_msg(per_arm[arm], stamp))
        if images:
            for cam, pub in self.image_pubs.items():
                pub.publish(image_msg(self.env.render(cam), stamp, cam))
        self.success_pub.publish(Bool(data=bool(self.env.succeeded)))
        self.done_pub.publish(Bool(data=bool(self.env.done)))

    def destroy_node(self) -> None:
        self._sim.submit(self.env.close).result()
        self._sim.shutdown()
        super().destroy_node()


def main(args=None) -> None:
    spin_main(TwinNode, args)


if __name__ == "__main__":
    main()
