"""pip-installable core and command-line tools, for machines without ROS.

`pip install ./steerseg_ros` gives the ROS-free core (frame, streaming, grounding, tracking,
depth, offline) and the command-line tools; `pip install ./steerseg_ros[models]` adds the model
backends. The ROS 2 nodes, the messages (steerseg_msgs) and the launch file are built with colcon
(see README). The test fixtures (steerseg_testing) and the benchmarks (steerseg_bench) beside it
are not installed: they are for a development checkout (scripts/setup_env.sh).
"""
from setuptools import find_packages, setup

TOOLS = {
    "steerseg-play": "steerseg_ros.tools.play:main",
    "steerseg-demo": "steerseg_ros.tools.demo:main",
    "steerseg-export": "steerseg_ros.tools.export:main",
    "steerseg-eval": "steerseg_ros.tools.eval:main",
    "steerseg-train-prompts": "steerseg_ros.tools.train_prompts:main",
    "steerseg-sam2-convert": "steerseg_ros.tools.sam2_convert:main",
}

setup(
    name="steerseg_ros",
    version="0.1.0",
    description="Follow spoken object references: language-grounded segmentation and tracking",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["steerseg_ros", "steerseg_ros.*"]),
    install_requires=["numpy", "opencv-python-headless", "pyyaml", "tqdm", "psutil"],
    extras_require={
        "models": ["torch", "transformers==5.23.0", "safetensors", "pillow"],
        "export": ["onnx", "onnxscript", "onnxruntime"],
        "eval": ["matplotlib", "pycocotools"],
        "bags": ["rosbags==0.11.9"],
        # Meta's sam2 itself (tracker.backend sam2_meta) must be installed on its own, without its
        # dependencies (they pull CUDA torch and torchvision): see requirements/sam2_meta_nodeps.txt.
        "sam2_meta": ["hydra-core==1.3.8", "iopath==0.1.10"],
    },
    entry_points={"console_scripts": [f"{name}={target}" for name, target in TOOLS.items()]},
)
