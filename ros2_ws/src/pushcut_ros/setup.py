from glob import glob

from setuptools import find_packages, setup

package_name = "pushcut_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
        (f"share/{package_name}/launch", glob("launch/*.launch.py")),
        (f"share/{package_name}/config", glob("config/*.yaml")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="pushcut developers",
    description="pushcut robot stack nodes",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "camera_node = pushcut_ros.camera_node:main",
            "policy_node = pushcut_ros.policy_node:main",
            "twin_node = pushcut_ros.twin_node:main",
            "trial_node = pushcut_ros.trial_node:main",
            "piper_arm_node = pushcut_ros.piper_arm_node:main",
            "estop = pushcut_ros.estop:main",
        ],
    },
)
