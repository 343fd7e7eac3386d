"""The process main loop of the package's lifecycle nodes (`steerseg_node`, `steerseg_grounder`).

Owns how a node process starts and ends: SIGINT and SIGTERM both end it with exit code 0 once the
node has stopped its own threads, and the rclpy context goes down last. rclpy's own signal
handler would shut the context down at once, while a node's thread may still be publishing
("publisher's context is invalid"), and it leaves SIGTERM to kill the process mid-step.
"""
from __future__ import annotations

import signal
import threading
from typing import Callable, Optional

import rclpy
from rclpy.executors import Executor, ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.signals import SignalHandlerOptions


def run(make_node: Callable[[], LifecycleNode], make_executor: Callable[[], Executor],
        args: Optional[list[str]] = None) -> int:
    """Create the node, configure and activate it when its `autostart` parameter says so, spin
    until SIGINT or SIGTERM, then close it (`node.close()`) and shut down. Returns 0."""
    stop = threading.Event()
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    node = None
    executor = make_executor()
    try:
        node = make_node()
        executor.add_node(node)
        if node.autostart and not stop.is_set() and node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            node.trigger_activate()
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # a signal before the handlers were set, or the context shut down from elsewhere
    finally:
        if node is not None:
            node.close()
            executor.remove_node(node)
            node.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
