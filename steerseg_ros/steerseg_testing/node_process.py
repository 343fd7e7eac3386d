"""The node as a child process on a ROS domain of its own: the domain, the environment, the
parameters file and the process with its log. What the DDS tests (test/support/ros_processes.py)
and the benchmarks' node sections (steerseg_bench/node.py) both start the node with.

Each run gets a random ROS_DOMAIN_ID with discovery kept on localhost and the shipped Fast DDS
profile (large shared-memory segment). Processes are stopped with SIGINT (a SIGKILL leaves files
in /dev/shm) and every wait is bounded.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
from pathlib import Path
from typing import Optional

import yaml

# The ROS package folder (launch/, config/), which holds steerseg_testing/.
PKG = Path(__file__).resolve().parents[1]
NODE_NAME = "steerseg"


def random_domain_id() -> int:
    # 1..100 stays inside the port range every DDS vendor accepts on Linux. Runs that share one
    # machine keep apart by giving each its own range: STEERSEG_TEST_DOMAINS="21-40".
    low, _, high = os.environ.get("STEERSEG_TEST_DOMAINS", "1-100").partition("-")
    return random.SystemRandom().randint(int(low), int(high or low))


def ros_env(domain_id: int) -> dict[str, str]:
    env = os.environ.copy()
    env.update(
        ROS_DOMAIN_ID=str(domain_id),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        FASTDDS_DEFAULT_PROFILES_FILE=env.get("FASTDDS_DEFAULT_PROFILES_FILE", str(PKG / "config" / "fastdds_shm.xml")),
        RCUTILS_COLORIZED_OUTPUT="0",
        PYTHONUNBUFFERED="1",
    )
    return env


def write_params(path: Path, params: dict, node_name: str = NODE_NAME) -> Path:
    """A parameters file for the node, in the same form as config/steerseg.yaml."""
    path.write_text(yaml.safe_dump({f"/**/{node_name}": {"ros__parameters": params}}))
    return path


class Process:
    """A child process whose stdout and stderr go to a log file."""

    def __init__(self, args: list[str], env: dict, log_path: Path):
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)

    def wait(self, timeout: float) -> Optional[int]:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 15.0) -> Optional[int]:
        """SIGINT, then (only if it hangs) SIGTERM and SIGKILL; returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            if self.wait(timeout) is None:
                self.popen.terminate()
                if self.wait(5.0) is None:
                    self.popen.kill()
                    self.popen.wait(5.0)
        self._log.close()
        return self.popen.returncode

    def text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")
