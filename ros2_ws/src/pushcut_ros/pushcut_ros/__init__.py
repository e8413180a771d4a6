"""pushcut's ROS 2 nodes: thin rclpy adapters over ``pushcut.deploy`` and the twin.

Built by colcon as the ament_python package ``pushcut_ros``; the pushcut distribution also
installs this folder as ``pushcut.ros`` so the nodes import and test without a ROS install.
"""
