"""Topics a user's own node publishes to, heard whatever QoS the sender chose, and audited.

DDS pairs a publisher with a subscription only when their QoS are compatible, and says so only on
the publisher's side: a subscription that asks for TRANSIENT_LOCAL durability hears no VOLATILE
publisher (ROS 2's default, what a pedal bridge, a teleop GUI or a PLC gateway has), a RELIABLE one
no BEST_EFFORT publisher. So an input that may stop the arms is never one subscription:

- :class:`StateInput` (``/estop``, ``/instruction``, the heartbeat) subscribes three times, latched
  (RELIABLE + TRANSIENT_LOCAL: a node that joins late still gets the value pushcut's own publishers
  latched), RELIABLE + VOLATILE and BEST_EFFORT + VOLATILE. Every publisher's reliability and
  durability match at least one of them. A message that arrives through several is applied once,
  and one older than what its publisher already said is dropped: each publisher's messages are
  applied in its own order (by publication sequence number), so a stale release can never land
  after a stop.
- :class:`TopicAudit` lists, once a second, the publishers on every audited topic and reports the
  ones the node cannot hear (a message type other than the topic's, a QoS none of its
  subscriptions matches) in the log and on ``/diagnostics`` (``diagnostic_msgs/DiagnosticArray``,
  one status per topic, ERROR naming the publisher and the reason), from the first second on.
- :class:`Heartbeat`: the operator's deadman, off unless its topic is set. ``std_msgs/Bool``
  true at a steady rate keeps the arms free to move; silence longer than ``timeout_s``, or a false,
  holds them until beats come again.

What may be published where, and with which QoS, is in docs/robot.md ("Inputs and QoS").
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.qos import (
    DurabilityPolicy,
    QoSCompatibility,
    QoSProfile,
    ReliabilityPolicy,
    qos_check_compatible,
)

from .topics import LATCHED

RELIABLE_VOLATILE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                               durability=DurabilityPolicy.VOLATILE)
BEST_EFFORT_VOLATILE = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT,
                                  durability=DurabilityPolicy.VOLATILE)
STATE_PROFILES = (LATCHED, RELIABLE_VOLATILE, BEST_EFFORT_VOLATILE)
# the QoS a sender of /estop may have, each of which the stack hears (tests and bench-ros send with each)
SENDER_QOS = {
    "default": QoSProfile(depth=10),  # reliable + volatile: ROS 2's default (a pedal bridge, a GUI, a PLC gateway)
    "best_effort": QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT),
    "transient_local": LATCHED,  # pushcut-estop's and the arm nodes'
}
STREAM_PROFILES = (RELIABLE_VOLATILE, BEST_EFFORT_VOLATILE)  # no latched value: a beat must be live
DIAGNOSTICS_TOPIC = "/diagnostics"
AUDIT_PERIOD_S = 1.0
HEARTBEAT_TIMEOUT_S = 0.5  # silence allowed before the arms hold (nodes' heartbeat_timeout_s)
MAX_PUBLISHERS = 256  # publishers remembered per input (the oldest forgotten first)


def type_name(msg_type) -> str:
    """``std_msgs.msg.Bool`` -> ``std_msgs/msg/Bool``, as the graph names topic types."""
    return f"{msg_type.__module__.split('.')[0]}/msg/{msg_type.__name__}"


class StateInput:
    """One topic heard from publishers of any reliability and durability, each message applied once
    and in its publisher's order. ``callback(msg)`` gets the messages that count."""

    def __init__(self, node, msg_type, topic: str, callback: Callable, *, profiles=STATE_PROFILES,
                 audit: TopicAudit | None = None, callback_group=None):
        self.topic, self.callback = topic, callback
        self.duplicates = 0  # the same message through another subscription, or an older one
        self._newest: OrderedDict[bytes, int] = OrderedDict()  # publisher gid -> newest sequence applied
        # NOTE: each publisher is incompatible with some of these subscriptions by design: rclpy's
        # default 'incompatible QoS' warning is silenced here, the audit says who is not heard at all
        quiet = SubscriptionEventCallbacks(incompatible_qos=lambda event: None)
        self.subscriptions = [
            node.create_subscription(msg_type, topic, self._on_message, qos, callback_group=callback_group,
                                     event_callbacks=quiet)
            for qos in profiles
        ]
        if audit is not None:
            audit.watch(topic, msg_type, profiles)

    def _on_message(self, msg, info) -> None:
        gid = info.get("publisher_gid") or {}
        key = bytes(gid.get("data", b""))
        seq = info.get("publication_sequence_number") or info["source_timestamp"]
        newest = self._newest.get(key)
        if newest is not None and seq <= newest:
            self.duplicates += 1
            return
        self._newest[key] = seq
        self._newest.move_to_end(key)
        while len(self._newest) > MAX_PUBLISHERS:
            self._newest.popitem(last=False)
        self.callback(msg)


class TopicAudit:
    """Reports the publishers a node cannot hear on the topics it watches (log and /diagnostics)."""

    def __init__(self, node, period_s: float = AUDIT_PERIOD_S):
        self.node = node
        self.watched: dict[str, tuple[str, tuple[QoSProfile, ...]]] = {}
        self.unheard: dict[str, dict[bytes, str]] = {}  # topic -> endpoint gid -> why
        self.pub = node.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self.timer = node.create_timer(period_s, self.check)

    def watch(self, topic: str, msg_type, profiles) -> None:
        topic = self.node.resolve_topic_name(topic)
        self.watched[topic] = (type_name(msg_type), tuple(profiles))
        self.unheard.setdefault(topic, {})

    @staticmethod
    def why_unheard(info, expected_type: str, profiles) -> str | None:
        """Why a publisher (a TopicEndpointInfo) cannot be heard through ``profiles`` (None: it can)."""
        if info.topic_type != expected_type:
            return f"publishes {info.topic_type}, the topic is {expected_type}"
        reasons = []
        for qos in profiles:
            compatible, reason = qos_check_compatible(info.qos_profile, qos)
            if compatible != QoSCompatibility.ERROR:
                return None
            reasons.append(reason.strip())
        return "QoS matches none of the subscriptions: " + "; ".join(dict.fromkeys(reasons))

    def check(self) -> None:
        statuses = []
        for topic, (expected, profiles) in self.watched.items():
            now: dict[bytes, str] = {}
            for info in self.node.get_publishers_info_by_topic(topic):
                why = self.why_unheard(info, expected, profiles)
                if why is None:
                    continue
                gid = bytes(info.endpoint_gid)
                now[gid] = f"{info.node_namespace.rstrip('/')}/{info.node_name}: {why}"
                if gid not in self.unheard[topic]:
                    self.node.get_logger().error(f"{topic}: cannot hear the publisher {now[gid]}")
            self.unheard[topic] = now
            status = DiagnosticStatus(name=f"{self.node.get_fully_qualified_name()}: {topic}",
                                      hardware_id=self.node.get_fully_qualified_name())
            if now:
                status.level = DiagnosticStatus.ERROR
                status.message = f"{len(now)} publisher(s) cannot be heard"
                status.values = [KeyValue(key=f"publisher {i}", value=v) for i, v in enumerate(now.values())]
            else:
                status.level, status.message = DiagnosticStatus.OK, "every publisher is heard"
            statuses.append(status)
        msg = DiagnosticArray(status=statuses)
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.pub.publish(msg)


class Heartbeat:
    """The operator's deadman on ``topic`` (``std_msgs/Bool``): alive while a true arrived within
    ``timeout_s``; a false, or silence, and it is not. Never alive before the first beat."""

    def __init__(self, node, topic: str, timeout_s: float, audit: TopicAudit | None = None, callback_group=None):
        from std_msgs.msg import Bool

        if timeout_s <= 0:
            raise ValueError(f"parameter 'heartbeat_timeout_s' {timeout_s} must be > 0")
        self.topic, self.timeout_s = topic, timeout_s
        self._last: float | None = None  # monotonic time of the last true
        self.input = StateInput(node, Bool, topic, self._on_beat, profiles=STREAM_PROFILES, audit=audit,
                                callback_group=callback_group)

    def _on_beat(self, msg) -> None:
        self._last = time.monotonic() if msg.data else None

    def alive(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return self._last is not None and now - self._last <= self.timeout_s


def make_heartbeat(node, topic: str, timeout_s: float, audit: TopicAudit | None = None,
                   callback_group=None) -> Heartbeat | None:
    """The node's heartbeat on ``topic`` (None when the topic is empty: off)."""
    return Heartbeat(node, topic, timeout_s, audit, callback_group) if topic else None
