from tests.robot.conftest import frozen_heap  # noqa: F401  (the SDK calibration runs the arm loops too)
