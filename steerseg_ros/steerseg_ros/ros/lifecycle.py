"""What the package's lifecycle nodes (tracker, grounder, drawing) share about their
transitions: each runs the node's `_configure`, `_activate`, `_deactivate`, `_cleanup` or
`_shutdown`; an exception undoes what the transition had done, is remembered in `_error`,
logged and published on /diagnostics, and fails the transition, so the node stays in its
previous state and keeps running.
"""
from __future__ import annotations

from typing import Callable, Optional

from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn


class GuardedTransitions:
    """Mixin for a LifecycleNode (list it first among the bases). The node provides `_error`,
    `_publish_diagnostics()` and the five transition bodies."""

    def _transition(self, name: str, body: Callable[[], None],
                    undo: Optional[Callable[[], None]] = None) -> TransitionCallbackReturn:
        try:
            body()
            return TransitionCallbackReturn.SUCCESS
        except Exception as e:
            self._error = f"{name} failed: {e}"
            self.get_logger().error(self._error)
            if undo is not None:
                try:
                    undo()
                except Exception as undo_error:
                    self.get_logger().error(f"undoing the failed {name}: {undo_error}")
            self._publish_diagnostics()
            return TransitionCallbackReturn.FAILURE

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("configure", self._configure, self._cleanup)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("activate", self._activate, self._deactivate)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("deactivate", self._deactivate)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("cleanup", self._cleanup)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._transition("shutdown", self._shutdown)
