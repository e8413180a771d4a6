"""pushcut-estop: engage or release the stack's e-stop from a terminal.

    pushcut-estop             # stop: the policy's commands, both arms, the trial in progress
    pushcut-estop --release   # the operator's resume (the arms' reset cuts motor power: arms at rest?)

Publishes ``/estop`` (latched, reliable) once the nodes that listen have been discovered, waits
until every one of them has acknowledged it, and says how many did; exits 1 when none listened.
The value stays latched in the nodes; a node started later hears it from the arm nodes only if an
arm raised it, so engage again after restarting nodes during a stop.
"""

from __future__ import annotations

import argparse
import sys
import time

import rclpy
from std_msgs.msg import Bool

from .topics import ESTOP_TOPIC, LATCHED


def send(engage: bool, discovery_s: float = 5.0, context=None) -> int:
    """Publish ``/estop`` = ``engage``; returns how many subscribers acknowledged it."""
    node = rclpy.create_node("estop_cli", context=context)
    try:
        pub = node.create_publisher(Bool, ESTOP_TOPIC, LATCHED)
        deadline = time.monotonic() + discovery_s
        seen, since = 0, time.monotonic()
        while time.monotonic() < deadline:  # discovery: wait until the count has been steady a while
            count = pub.get_subscription_count()
            if count != seen:
                seen, since = count, time.monotonic()
            elif count and time.monotonic() - since > 0.5:
                break
            time.sleep(0.05)
        pub.publish(Bool(data=engage))
        pub.wait_for_all_acked(rclpy.duration.Duration(seconds=discovery_s))
        return pub.get_subscription_count()
    finally:
        node.destroy_node()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="pushcut-estop", description=__doc__.splitlines()[0])
    ap.add_argument("--release", action="store_true", help="release the e-stop (the operator's resume)")
    ap.add_argument("--discovery-s", type=float, default=5.0,
                    help="how long to wait for the nodes to be found (DDS discovery can take seconds)")
    args = ap.parse_args(argv)
    with rclpy.init():
        heard = send(not args.release, args.discovery_s)
    what = "released" if args.release else "engaged"
    if not heard:
        print(f"/estop {what}, but no node listens on /estop: is the stack running (same ROS_DOMAIN_ID)?",
              file=sys.stderr)
        sys.exit(1)
    print(f"/estop {what}: acknowledged by {heard} subscriber(s)")


if __name__ == "__main__":
    main()
