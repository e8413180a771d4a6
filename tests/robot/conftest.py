import gc
import time

import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor

from tests.deploy.conftest import bundle  # noqa: F401  (session fixtures)
from tests.training.conftest import sft_checkpoint  # noqa: F401


class Graph:
    """One rclpy context with an executor; nodes added to it spin until a condition holds."""

    def __init__(self):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.nodes = []

    def add(self, node):
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def spin_until(self, cond, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.02)
            if cond():
                return True
        return False

    def spin_for(self, seconds: float) -> None:
        self.spin_until(lambda: False, seconds)

    def close(self):
        for n in self.nodes:
            self.executor.remove_node(n)
            n.destroy_node()
        self.executor.shutdown()
        rclpy.shutdown(context=self.context)


@pytest.fixture
def graph():
    g = Graph()
    yield g
    g.close()


@pytest.fixture(scope="package", autouse=True)
def frozen_heap():
    """Keep what earlier tests left on the heap out of full garbage collections while these run.

    These tests run 200 Hz arm loops (emulator, SDK reader, node timer) inside the pytest process,
    whose heap by now holds all that the earlier tests built: after a torch.onnx export a full
    collection takes 0.4-0.8 s on 2 cores, and one such pause trips the driver's 0.1 s feedback
    watchdog exactly as a lost bus would (the arm then holds, as it must). A node's own process
    collects its whole heap in 20-35 ms. Freezing takes what exists now out of the collector's
    reach; what these tests allocate is still collected.
    """
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()
