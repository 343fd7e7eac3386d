"""The process main loop of the package's lifecycle nodes (`steerseg_node`, `steerseg_grounder`).

Owns how a node process starts and ends, and its allocator setting (flat memory over long
runs). SIGINT and SIGTERM both end it with exit code 0 once the node has stopped its own
threads, and the rclpy context goes down last. rclpy's own signal handler would shut the context
down at once, while a node's thread may still be publishing ("publisher's context is invalid"),
and it leaves SIGTERM to kill the process mid-step.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
from typing import Callable, Optional

import rclpy
from rclpy.executors import Executor, ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.signals import SignalHandlerOptions


# glibc raises its mmap threshold to the largest block freed so far (up to 32 MiB), after which
# every camera-frame buffer (about 1.2 MB at 854x480) comes from the heap, whose freed pages are
# rarely given back: resident memory then creeps up by tens of MB over hours (measured: +16 to
# +23 MB over 10,000 frames) though nothing leaks. A fixed threshold keeps such buffers in their
# own mappings, returned to the system when freed (measured: -0.8 MB). No Python API sets it.
MMAP_THRESHOLD_BYTES = 256 * 1024
M_MMAP_THRESHOLD = -3  # from glibc's malloc.h


def fix_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold (see above), unless MALLOC_MMAP_THRESHOLD_ is set; False where
    the C library is not glibc."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


def run(make_node: Callable[[], LifecycleNode], make_executor: Callable[[], Executor],
        args: Optional[list[str]] = None) -> int:
    """Create the node, configure and activate it when its `autostart` parameter says so, spin
    until SIGINT or SIGTERM, then close it (`node.close()`) and shut down. Returns 0."""
    fix_mmap_threshold()
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
    if any(t.daemon and t.is_alive() and t.name.startswith("steerseg-") for t in threading.enumerate()):
        # A grounding still in flight is not waited for (a model on a CPU can take minutes). It
        # runs native code, and the interpreter's finalisation under it aborted the process
        # ("terminate called without an active exception", SIGABRT instead of exit code 0; seen
        # on a loaded machine): end the process here, the logs flushed, without finalising.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
