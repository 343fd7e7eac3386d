"""How the tracker node gets its grounder and tracker backends from its parameters.

Owns `BackendLoader`: declaring a backend's parameters (`<kind>.*`, once its module loads), and
loading the chosen backend at configure, falling back to the built-in one when it fails to load
and `<kind>.fallback_to_builtin` is true.
"""
from __future__ import annotations

from typing import Callable

from steerseg_ros.streaming import backends
from steerseg_ros.ros.node_config import backend_options, backend_specs, declare


class BackendLoader:
    """The backends of `node` (a tracker node). `names` says which are in use ("builtin
    (fallback from steerseg)" after a fallback); `count` counts the fallbacks."""

    def __init__(self, node, count: Callable[..., None]):
        self._node = node
        self._count = count
        self._errors: dict[tuple[str, str], str] = {}
        self.names = {"grounder": "", "tracker": ""}

    def declare(self, kind: str, name: str) -> bool:
        """Declare backend `name`'s parameters; False (logged) when its module cannot load."""
        try:
            for spec in backend_specs(kind, name):
                declare(self._node, spec)
            return True
        except Exception as e:  # an unknown name, a missing optional dependency
            # Logged once: configure, which tries again, reports it in its own failure line.
            if self._errors.get((kind, name)) != str(e):
                self._node.get_logger().error(f"cannot declare the parameters of {kind} backend {name!r}: {e}")
            self._errors[(kind, name)] = str(e)
            return False

    def load(self, kind: str):
        """The `<kind>.backend` backend made from its parameters (RuntimeError when it cannot
        load and there is no fallback)."""
        node = self._node
        name = node.get_parameter(f"{kind}.backend").value
        make = backends.make_grounder if kind == "grounder" else backends.make_tracker
        try:
            if not self.declare(kind, name):
                raise RuntimeError(self._errors.get((kind, name), "it cannot be loaded"))
            options = backend_options(node, kind, name)
            if name == "remote" and not options.get("namespace"):
                options["namespace"] = node.get_namespace()  # the grounder node beside this one
            backend = make(name, options)
            self.names[kind] = name
            return backend
        except Exception as e:
            if name == "builtin" or not node.get_parameter(f"{kind}.fallback_to_builtin").value:
                raise RuntimeError(f"{kind} backend {name!r} failed to load: {e}") from e
            node.get_logger().error(f"{kind} backend {name!r} failed to load: {e}")
            node.get_logger().warning(f"{kind}.fallback_to_builtin is true: using the built-in {kind} instead")
            self.declare(kind, "builtin")
            backend = make("builtin", backend_options(node, kind, "builtin"))
            self.names[kind] = f"builtin (fallback from {name})"
            self._count(f"{kind}_fallbacks")
            return backend
