"""The shape of the code, read from its import statements (every `import`, module level or inside
a function): runtime code never imports the test fixtures (steerseg_testing) or the benchmarks
(steerseg_bench); each layer imports only from itself and the layers below it, so nothing below
the ROS layer imports it or ROS; and no module imports itself through others (no import circle).

The layers, bottom up, are the path a camera frame takes (README, "How the code is laid out")."""
import ast
import graphlib
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "steerseg_ros"

# Bottom up. A module's layer is that of the longest prefix of its dotted name listed here.
LAYERS = [
    ["steerseg_ros", "steerseg_ros.frame", "steerseg_ros.config_checks", "steerseg_ros.render"],
    ["steerseg_ros.grounding", "steerseg_ros.tracking", "steerseg_ros.depth"],
    ["steerseg_ros.streaming"],
    ["steerseg_ros.offline"],
    ["steerseg_ros.ros"],
    ["steerseg_ros.tools"],
]
# Development code: may import any of the above, but the runtime never imports it.
DEVELOPMENT = ("steerseg_testing", "steerseg_bench")
# Top-level modules that only the ROS layer (and what sits above it) may import.
ROS_MODULES = ("rclpy", "rosidl_runtime_py", "launch", "launch_ros", "ament_index_python", "tf2_ros")


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_imports(root: Path, packages=("steerseg_ros", "steerseg_testing", "steerseg_bench")) -> dict[str, set[str]]:
    """{module: every module name it imports} for the packages' sources under `root`. A relative
    import is resolved; `from a import b` counts as importing `a.b` when that is a module."""
    files = {_module_name(root, p): p for package in packages for p in sorted((root / package).rglob("*.py"))}
    graph = {}
    for module, path in files.items():
        base = module if path.name == "__init__.py" else module.rpartition(".")[0]
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parent = base.split(".")[:len(base.split(".")) - node.level + 1]
                    source = ".".join(parent + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                names.add(source)
                names.update(f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in files)
        graph[module] = names
    return graph


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(module: str):
    best = max((p for layer in LAYERS for p in layer if _within(module, p)), key=len, default=None)
    return next(i for i, layer in enumerate(LAYERS) if best in layer) if best else None


def rule_violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, names in sorted(graph.items()):
        if any(_within(module, d) for d in DEVELOPMENT):
            continue
        own = layer_of(module)
        for name in sorted(names):
            if any(_within(name, d) for d in DEVELOPMENT):
                found.append(f"{module} imports {name}: runtime code never imports fixtures or benchmarks")
            elif name.split(".")[0] in ROS_MODULES or name.split(".")[0].endswith("_msgs"):
                if own < layer_of("steerseg_ros.ros"):
                    found.append(f"{module} imports {name}: only the ROS layer (steerseg_ros.ros) imports ROS")
            elif _within(name, "steerseg_ros") and (layer_of(name) or 0) > own:
                found.append(f"{module} imports {name}: a layer above its own")
    return found


def import_circle(graph: dict[str, set[str]]):
    """One import circle as a list of modules, or None. Only imports between the packages'
    own modules count (a package's __init__ imported on the way to its submodule does not)."""
    own = {m: {n for n in names if n in graph and n != m and not m.startswith(n + ".")} for m, names in graph.items()}
    try:
        graphlib.TopologicalSorter(own).prepare()
    except graphlib.CycleError as err:
        return err.args[1]
    return None


def test_the_package_keeps_its_import_rules():
    graph = read_imports(PKG)
    assert {"steerseg_ros.streaming.pipeline", "steerseg_testing.tiny_vlm", "steerseg_bench.cli"} <= set(graph)
    assert rule_violations(graph) == []


def test_no_import_circle():
    circle = import_circle(read_imports(PKG))
    assert circle is None, "import circle: " + " -> ".join(circle)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in {"steerseg_ros/__init__.py": "", "steerseg_testing/__init__.py": "",
                       "steerseg_bench/__init__.py": "", **files}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize("files, message", [
    ({"steerseg_ros/streaming/pipeline.py": "def f():\n    from steerseg_testing import tiny_vlm\n",
      "steerseg_testing/tiny_vlm.py": ""}, "never imports fixtures"),
    ({"steerseg_ros/tools/demo.py": "from steerseg_bench.cli import main\n"}, "never imports fixtures"),
    ({"steerseg_ros/grounding/vlm.py": "from ..ros import messages\n", "steerseg_ros/ros/messages.py": ""},
     "a layer above"),
    ({"steerseg_ros/depth/estimate.py": "import rclpy\n"}, "only the ROS layer"),
    ({"steerseg_ros/streaming/buffer.py": "from steerseg_msgs.msg import Track\n"}, "only the ROS layer"),
])
def test_the_rules_catch_a_runtime_module_that_breaks_them(tmp_path, files, message):
    violations = rule_violations(read_imports(_tree(tmp_path, files)))
    assert violations and all(message in v for v in violations), violations


def test_the_rules_allow_fixtures_and_the_ros_layer_their_imports(tmp_path):
    root = _tree(tmp_path, {"steerseg_testing/scene.py": "import rclpy\nfrom steerseg_ros.ros import messages\n",
                            "steerseg_ros/ros/messages.py": "import rclpy\nfrom steerseg_msgs.msg import Track\n",
                            "steerseg_bench/node.py": "from steerseg_testing import scene\n"})
    assert rule_violations(read_imports(root)) == []


def test_a_circle_is_found(tmp_path):
    root = _tree(tmp_path, {"steerseg_ros/grounding/base.py": "from steerseg_ros.grounding import prompts\n",
                            "steerseg_ros/grounding/prompts.py": "def f():\n    from .base import X\n",
                            "steerseg_ros/grounding/__init__.py": "from steerseg_ros.grounding.base import X\n"})
    circle = import_circle(read_imports(root))
    assert circle and {"steerseg_ros.grounding.base", "steerseg_ros.grounding.prompts"} <= set(circle)
