"""The package's shape: the core stays free of ROS (and of torch for the built-in backends),
and setup.py builds a wheel with the core and the command-line tools for machines without ROS."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CORE = ["buffer", "pipeline", "prompts", "tracklets", "metrics", "render", "backends", "grounding.builtin",
        "grounding", "tracking", "datasets", "offline", "evaluation", "tools.eval"]


def test_core_modules_import_without_rclpy_or_torch():
    code = ("import sys\n"
            + "".join(f"import steerseg_ros.{m}\n" for m in CORE)
            + "print(sorted(m for m in ('rclpy', 'torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_setup_py_builds_a_wheel_with_the_core_and_the_tools(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REPO / "setup.py", src)
    shutil.copytree(REPO / "steerseg_ros", src / "steerseg_ros", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("steerseg_ros-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    for m in ("buffer", "pipeline", "metrics", "tracklets"):
        assert f"steerseg_ros/{m}.py" in names
    assert "steerseg-demo = steerseg_ros.tools.demo:main" in entry_points
    assert "steerseg-eval = steerseg_ros.tools.eval:main" in entry_points
