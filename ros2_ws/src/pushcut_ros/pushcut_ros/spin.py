"""``spin_main``: the standard ``main`` of every node."""

from __future__ import annotations


def spin_main(node_cls, args=None, executor_cls=None) -> None:
    """The ROS 2 demos' ``main``: rclpy.init as a context, spin, a clean exit on Ctrl-C (also when
    the shutdown lands while the node is still being built or while a timer callback publishes:
    the context, or a publisher's handle, is then invalid)."""
    import rclpy
    from rclpy._rclpy_pybind11 import InvalidHandle, RCLError

    with rclpy.init(args=args):
        node = None
        try:
            node = node_cls()
            executor = executor_cls() if executor_cls else rclpy.executors.SingleThreadedExecutor()
            executor.add_node(node)
            executor.spin()
        except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
            pass
        except (RCLError, InvalidHandle):
            if rclpy.ok():  # a real failure, not Ctrl-C's shutdown landing while the node is built or publishes
                raise
        finally:
            if node is not None:
                node.destroy_node()
