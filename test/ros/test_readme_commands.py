"""The README's command lines run as written, against a real `ros2 launch`: the "Default topics"
block (a plain `ros2 launch steerseg_ros steerseg.launch.py`, a synthetic RGB-D bag and a plain
`steerseg-play --bag`, which must connect without a topic argument) and the Follow action's
block (`ros2 interface show`, `ros2 action send_goal --feedback` and the `~/stop` service call).

The commands are read from README.md, so the README and this test cannot drift apart; the only
change made to them is the bag's folder (the README's /tmp/scene becomes the test's own). Checked
as a user would see it: the interface text holds every field of Follow.action; the goal is
accepted and feedback comes while the bag plays; the player found a subscriber on every default
topic it waited for and the node paired the bag's depth with its colour frames (so the default
depth and camera_info names connect too); the stop call ends the goal with reason STOPPED. Every
wait is on the state it checks, with a generous deadline.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="needs the ROS 2 Python packages (scripts/setup_env.sh)")

import ros_processes as rp  # noqa: E402
from test_launch import (CLI_TIMEOUT, UP_TIMEOUT, Launch, _launch_missing, _stop_cleanly, lifecycle_state,  # noqa: E402,F401
                         ros2, sigint_not_ignored)

pytestmark = [pytest.mark.ros, pytest.mark.timeout(420),
              pytest.mark.skipif(bool(_launch_missing()), reason=_launch_missing() or "-")]

README = rp.REPO / "README.md"
README_BAG = "/tmp/scene"


def readme_block(marker: str) -> list[list[str]]:
    """The commands of the first ```bash block after the README line holding `marker`:
    continuation lines joined, comments dropped, each split as a shell splits it."""
    text = README.read_text()
    assert marker in text, f"the README has no {marker!r}"
    start = text.index("```bash\n", text.index(marker)) + len("```bash\n")
    block = text[start:text.index("```", start)].replace("\\\n", " ")
    return [words for words in (shlex.split(line, comments=True) for line in block.splitlines()) if words]


def action_fields() -> list[str]:
    """Every field and constant line of Follow.action, comments dropped, spaces normalised."""
    path = rp.REPO / "steerseg_msgs" / "action" / "Follow.action"
    lines = (" ".join(line.split("#")[0].split()) for line in path.read_text().splitlines())
    return [line for line in lines if line]


@pytest.fixture
def env(domain):
    return rp.ros_env(domain)


def test_interface_show_prints_the_follow_action():
    _, _, follow = readme_commands()
    interface = next(c for c in follow if c[:3] == ["ros2", "interface", "show"])
    assert interface[3:] == ["steerseg_msgs/action/Follow"], interface
    out = subprocess.run(interface, env=rp.ros_env(rp.random_domain_id()), capture_output=True, text=True,
                         timeout=CLI_TIMEOUT, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout + out.stderr
    shown = {" ".join(line.split("#")[0].split()) for line in out.stdout.splitlines()}
    missing = [f for f in action_fields() if f not in shown]
    assert not missing, f"not in `{shlex.join(interface)}`: {missing}\n{out.stdout[:3000]}"


def readme_commands():
    """(the launch command, the other "Default topics" commands, the Follow block's commands)."""
    topics = readme_block("**Default topics.**")
    follow = readme_block("From the command line (the `ros2` CLI")
    launch = topics[0]
    assert launch[:4] == ["ros2", "launch", "steerseg_ros", "steerseg.launch.py"], launch
    return launch, topics[1:], follow


def test_default_topics_and_the_follow_commands(env, tmp_path, recorder):
    launch_cmd, (synthetic, play_cmd), follow = readme_commands()
    send_goal = next(c for c in follow if c[:3] == ["ros2", "action", "send_goal"])
    stop = next(c for c in follow if c[:3] == ["ros2", "service", "call"])
    assert synthetic[0] == "steerseg-synthetic-rgbd" and play_cmd[:2] == ["steerseg-play", "--bag"], \
        (synthetic, play_cmd)
    assert README_BAG in synthetic and README_BAG in play_cmd, (synthetic, play_cmd)
    bag = str(tmp_path / "scene")
    synthetic = [bag if word == README_BAG else word for word in synthetic]
    play_cmd = [bag if word == README_BAG else word for word in play_cmd]
    made = subprocess.run(synthetic, env=env, capture_output=True, text=True, timeout=300, cwd=rp.REPO,
                          stdin=subprocess.DEVNULL)
    assert made.returncode == 0, made.stdout + made.stderr

    launch = Launch(env, tmp_path / "launch.log", *launch_cmd[4:])
    goal_log = tmp_path / "send_goal.log"
    goal = play = None
    try:
        assert lifecycle_state(env, "/steerseg", "active").startswith("active"), launch.text()[-3000:]
        # The goal first (the action server exists before activation, and the node is active):
        # it is accepted and waits for frames. Unbuffered, so its lines can be read as they come.
        with open(goal_log, "wb") as log:
            goal = subprocess.Popen(send_goal, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

        def goal_says(text: str) -> bool:
            return text in goal_log.read_text(errors="replace") or goal.poll() is not None

        assert rp.wait_until(lambda: goal_says("Goal accepted with ID:"), UP_TIMEOUT, interval=0.2)
        assert "Goal accepted with ID:" in goal_log.read_text(), \
            f"{goal_log.read_text()[-3000:]}\n{launch.text()[-3000:]}"

        play = rp.Process(play_cmd, env, tmp_path / "play.log")
        assert rp.wait_until(lambda: goal_says("Feedback:"), UP_TIMEOUT, interval=0.2)
        assert "Feedback:" in goal_log.read_text() and "target_id:" in goal_log.read_text(), \
            f"{goal_log.read_text()[-3000:]}\n{play.text()[-2000:]}\n{launch.text()[-3000:]}"
        assert play.wait(180.0) == 0, play.text()[-3000:]
        played = play.text()
        assert "no subscriber" not in played, played[-3000:]
        # The default depth and camera_info topics connect as well: the node paired depth images
        # with the colour frames (its counters on /diagnostics, every stats period).
        assert rp.wait_until(lambda: int(recorder.counters().get("depth.paired_exact", 0)) > 0, UP_TIMEOUT), \
            f"{recorder.counters()}\n{launch.text()[-3000:]}"

        stopped = subprocess.run(stop, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT,
                                 stdin=subprocess.DEVNULL)
        assert stopped.returncode == 0 and "success=True" in stopped.stdout, stopped.stdout + stopped.stderr
        assert goal.wait(CLI_TIMEOUT) == 0, goal_log.read_text()[-3000:]
        said = goal_log.read_text()
        assert "Goal finished with status: ABORTED" in said and "reason: 4" in said, said[-3000:]

        _stop_cleanly(launch)
    finally:
        if goal is not None and goal.poll() is None:
            os.killpg(goal.pid, signal.SIGKILL)
            goal.wait(10.0)
        if play is not None:
            play.stop()
        launch.close()
