"""The node (steerseg_ros.ros.tracker_node.main) with the built-in grounder slowed down by
STEERSEG_TEST_GROUNDING_DELAY_S seconds per grounding: a grounding that is still in flight when
a test stops the node, as a model's grounding on a CPU is. Test only; run as a script with the
node's arguments (--ros-args ...)."""
import os
import sys
import time

from steerseg_ros.grounding import builtin
from steerseg_ros.ros import tracker_node as node

_ground = builtin.BuiltinGrounder.ground


def _slow_ground(self, keyframes, command):
    time.sleep(float(os.environ.get("STEERSEG_TEST_GROUNDING_DELAY_S", "0")))
    return _ground(self, keyframes, command)


builtin.BuiltinGrounder.ground = _slow_ground

if __name__ == "__main__":
    sys.exit(node.main(sys.argv))
