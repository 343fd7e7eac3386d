"""pip-installable core and command-line tools, for machines without ROS.

`pip install .` gives the ROS-free core (buffer, grounding, prompts, tracking, tracklets,
pipeline, metrics) and the offline tools; `pip install .[models]` adds the model backends.
The ROS 2 node, its messages and the launch file are built with colcon (see README).
"""
from setuptools import find_packages, setup

TOOLS = {
    "steerseg-play": "steerseg_ros.tools.play:main",
    "steerseg-demo": "steerseg_ros.tools.demo:main",
    "steerseg-bench": "steerseg_ros.tools.bench:main",
    "steerseg-export": "steerseg_ros.tools.export:main",
    "steerseg-eval": "steerseg_ros.tools.eval:main",
    "steerseg-tiny-models": "steerseg_ros.tools.tiny_models:main",
    "steerseg-train-prompts": "steerseg_ros.tools.train_prompts:main",
    "steerseg-synthetic-rgbd": "steerseg_ros.tools.synthetic_rgbd:main",
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
