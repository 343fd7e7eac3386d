"""What the tracker node follows: the command topic, the Follow action (`follow`) and its `~/stop`
service.

Owns `FollowServer`: one target per accepted goal, its feedback, its target pose (a
geometry_msgs/PoseStamped on the goal's pose_topic, by default target_<id>/pose: what Nav2's
following server follows; created with the goal, gone with it) and its end (cancel, LOST
timeout, preemption, ~/stop, deactivation; action/Follow.action). The action server and the stop
service exist in every lifecycle state (a client can find them), but goals are accepted only
while the node is active; deactivating ends them.

Bad goals (an empty or over-long command, more targets than pipeline.max_targets) are accepted
and then ended at once with reason REJECTED and the reason in words: a ROS 2 goal rejection
carries no text, so a client could not tell why. Goals that arrive while the node is not active
are rejected at the ROS level (logged): there is nothing to follow with.

Each goal's execute callback is a coroutine awaiting a future that the goal's end completes, so
a waiting goal holds no executor thread and the single-threaded executor keeps serving
everything else.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.task import Future
from std_srvs.srv import Trigger

from steerseg_msgs.action import Follow
from steerseg_msgs.msg import TrackArray
from steerseg_ros.grounding.base import GroundingError, clean_command
from steerseg_ros.streaming.pipeline import PipelineConfig, PipelineOutput, TargetLimitError
from steerseg_ros.ros.standard_outputs import target_pose


@dataclass
class _Goal:
    """An accepted Follow goal and the target it follows."""

    handle: Any  # rclpy.action.server.ServerGoalHandle
    target_id: int
    command: str
    lost_timeout_s: float
    # Completed (reason, message) when the goal ends; the goal's execute coroutine awaits it.
    done: Any  # rclpy.task.Future
    tracks: list = field(default_factory=list)  # its Track messages on the last processed frame
    last_feedback: float = -1e9
    pose_pub: Any = None  # its target pose's publisher


def pose_topic(request_topic: str, target_id: int) -> str:
    """Where a goal's target pose goes: the topic it names, else target_<id>/pose (relative:
    in the node's namespace)."""
    return request_topic.strip() or f"target_{target_id}/pose"


# Follow.Result reasons by name, for the counters and logs.
_REASON_NAMES = {getattr(Follow.Result, k): k[len("REASON_"):].lower()
                 for k in dir(Follow.Result) if k.startswith("REASON_")}


def short(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters for a log line, saying how long it was."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


class FollowServer:
    """The Follow action and ~/stop of `node`, a tracker node whose `pipeline` and
    `lifecycle_state` say what there is to follow with. `count` counts for the node's counters;
    `feedback_hz` gives the node's follow_feedback_hz when it is needed."""

    def __init__(self, node, count: Callable[..., None], feedback_hz: Callable[[], float]):
        self._node = node
        self._count = count
        self._feedback_hz = feedback_hz
        self._goals: dict[int, _Goal] = {}  # by target id
        self._goals_lock = threading.RLock()
        group = ReentrantCallbackGroup()
        self._server = ActionServer(
            node, Follow, "follow", execute_callback=self._execute, goal_callback=self._on_goal,
            cancel_callback=self._on_cancel, callback_group=group)
        self._stop_service = node.create_service(Trigger, "~/stop", self._on_stop, callback_group=group)

    def _log(self):
        return self._node.get_logger()

    def _on_goal(self, request) -> GoalResponse:
        if self._node.lifecycle_state != "active" or self._node.pipeline is None:
            self._count("follow.goals_refused_inactive")
            self._log().warning(
                f"Follow goal {short(request.command)!r} refused: the node is {self._node.lifecycle_state}")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _on_cancel(self, handle) -> CancelResponse:
        with self._goals_lock:
            goal = next((g for g in self._goals.values() if g.handle is handle), None)
        if goal is not None:
            self._end_goal(goal, Follow.Result.REASON_CANCELLED, "cancelled by the client")
        return CancelResponse.ACCEPT

    async def _execute(self, handle):
        if handle.is_cancel_requested:  # cancelled before it started: nothing to follow
            handle.canceled()
            return Follow.Result(reason=Follow.Result.REASON_CANCELLED, message="cancelled before it started")
        goal, error = self._start_goal(handle)
        if goal is None:
            self._count("follow.goals_rejected")
            self._log().warning(f"Follow goal {short(handle.request.command)!r} rejected: {error}")
            handle.abort()
            return Follow.Result(reason=Follow.Result.REASON_REJECTED, message=error)
        reason, message = await goal.done
        self._count(f"follow.ended.{_REASON_NAMES.get(reason, reason)}")
        self._log().info(f"Follow goal for target {goal.target_id} ended: {message}")
        result = Follow.Result(reason=reason, message=message, target_id=goal.target_id, tracks=list(goal.tracks))
        if not handle.is_active:
            return result
        if reason == Follow.Result.REASON_CANCELLED and handle.is_cancel_requested:
            handle.canceled()
        else:
            # rcl_action's goal states allow CANCELED only after a cancel request; every other
            # end is ABORTED, the result's reason saying which.
            handle.abort()
        return result

    def _start_goal(self, handle) -> tuple[Optional[_Goal], str]:
        """Add the goal's target (after ending every other one when the goal preempts);
        (None, reason) for a bad goal."""
        request = handle.request
        pipeline = self._node.pipeline
        if pipeline is None or self._node.lifecycle_state != "active":
            return None, f"the node is {self._node.lifecycle_state}"
        if not (request.lost_timeout_s >= 0.0):  # also NaN
            return None, f"lost_timeout_s must be >= 0 (0: never), got {request.lost_timeout_s}"
        try:
            command = clean_command(request.command, pipeline.config.max_command_chars)
        except GroundingError as e:
            return None, str(e)
        with self._goals_lock:
            if request.preempt:
                self.end_all(Follow.Result.REASON_PREEMPTED,
                             f"preempted by a Follow goal for {short(request.command)!r}")
                pipeline.clear_command()
            try:
                target_id = pipeline.add_target(request.command)
            except (GroundingError, TargetLimitError) as e:
                return None, str(e)
            done = Future(executor=self._node.executor)
            # A done callback makes the executor wake up when another thread completes the
            # future, so the awaiting coroutine resumes at once.
            done.add_done_callback(lambda _future: None)
            goal = _Goal(handle, target_id, command, float(request.lost_timeout_s), done)
            try:
                goal.pose_pub = self._node.create_publisher(
                    PoseStamped, pose_topic(request.pose_topic, target_id),
                    QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
            except Exception as e:  # an invalid topic name
                pipeline.remove_target(target_id)
                return None, f"pose_topic {request.pose_topic!r} is not a valid topic name: {e}"
            self._goals[target_id] = goal
        self._count("follow.goals_accepted")
        self._log().info(f"Follow goal accepted: target {target_id} {goal.command!r}"
                         f"{', preempting' if request.preempt else ''}")
        return goal, ""

    def _end_goal(self, goal: _Goal, reason: int, message: str, remove_target: bool = True) -> bool:
        """End one goal (any thread): drop its target and wake its execute coroutine."""
        with self._goals_lock:
            if self._goals.get(goal.target_id) is not goal:
                return False  # ended already
            del self._goals[goal.target_id]
        pipeline = self._node.pipeline
        if remove_target and pipeline is not None:
            pipeline.remove_target(goal.target_id)
        if goal.pose_pub is not None:
            pub, goal.pose_pub = goal.pose_pub, None
            try:
                self._node.destroy_publisher(pub)
            except Exception as e:  # at process exit the node may be gone
                self._log().debug(f"Follow goal's pose publisher not destroyed: {e}")
        try:
            goal.done.set_result((reason, message))
        except Exception as e:  # at process exit the executor may be gone: no client to tell
            self._log().debug(f"Follow goal end not delivered: {e}")
        return True

    def follow_command(self, text: str, reject: Callable[[str, str], None]) -> None:
        """A command on the command topic: it means "follow this one instead of everything", so
        it replaces every target and the Follow goals end (preempted). `reject(reason, text)`
        counts and logs a bad command."""
        pipeline = self._node.pipeline
        limit = pipeline.config.max_command_chars if pipeline else PipelineConfig().max_command_chars
        if len(text) > limit:
            reject("command.too_long", f"command is {len(text)} characters long; the limit is {limit}")
            return
        if not text.strip():
            reject("command.empty", "command is empty")
            return
        if pipeline is None:
            reject("command.not_configured", "not configured")
            return
        try:
            command = pipeline.set_command(text)
        except GroundingError as e:
            reject("command.invalid", str(e))
            return
        self.end_all(Follow.Result.REASON_PREEMPTED, f"replaced by the command {short(command)!r} on the "
                     "command topic", remove_targets=False)
        self._count("commands")
        self._log().info(f"command: {short(command)!r}")

    def end_all(self, reason: int, message: str, remove_targets: bool = True) -> int:
        """End every goal (any thread) with this Follow.Result reason; how many there were."""
        with self._goals_lock:
            goals = list(self._goals.values())
        return sum(self._end_goal(g, reason, message, remove_targets) for g in goals)

    def update(self, output: PipelineOutput, tracks: TrackArray) -> None:
        """Per processed frame (processing thread): each goal's tracks, its LOST timeout, and
        its feedback at most follow_feedback_hz times a second. The feedback carries the very
        Track messages published on `tracks`."""
        with self._goals_lock:
            goals = list(self._goals.values())
        if not goals:
            return
        targets = {t.id: t for t in output.targets}
        period = 1.0 / self._feedback_hz()
        now = time.monotonic()
        for goal in goals:
            target = targets.get(goal.target_id)
            if target is None:
                continue  # ended meanwhile
            goal.tracks = [t for t in tracks.tracks if t.target_id == goal.target_id]
            self._publish_pose(goal)
            if 0 < goal.lost_timeout_s < target.unseen_s:
                self._end_goal(goal, Follow.Result.REASON_LOST_TIMEOUT,
                               f"target unseen for {target.unseen_s:.2f} s of camera time "
                               f"(lost_timeout_s {goal.lost_timeout_s:g})")
                continue
            if now - goal.last_feedback >= period:
                goal.last_feedback = now
                pub = goal.pose_pub
                feedback = Follow.Feedback(target_id=goal.target_id, state=int(target.state),
                                           unseen_s=float(target.unseen_s), tracks=goal.tracks,
                                           pose_topic=pub.topic_name if pub is not None else "")
                try:
                    goal.handle.publish_feedback(feedback)
                except Exception as e:  # the goal ended on another thread meanwhile
                    self._log().debug(f"Follow feedback not sent: {e}")

    def _publish_pose(self, goal: _Goal) -> None:
        """The goal's target pose on this frame, when one of its tracks has a position."""
        pose, pub = target_pose(goal.tracks), goal.pose_pub
        if pose is None or pub is None:
            return
        try:
            pub.publish(pose)
        except Exception as e:  # the goal ended on another thread meanwhile
            self._log().debug(f"Follow target pose not sent: {e}")

    def _on_stop(self, request, response):
        pipeline = self._node.pipeline
        if pipeline is None:
            response.success = False
            response.message = f"nothing to stop: the node is {self._node.lifecycle_state}"
            return response
        goals = self.end_all(Follow.Result.REASON_STOPPED, "stopped by the ~/stop service")
        targets = len(pipeline.targets())
        pipeline.clear_command()
        self._count("stops")
        response.success = True
        response.message = f"stopped {goals + targets} target(s) ({goals} Follow goal(s))"
        self._log().info(response.message)
        return response
