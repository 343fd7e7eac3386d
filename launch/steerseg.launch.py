"""Launch the steerseg node: a camera topic and a command topic in; label masks, overlays,
tracks, grounding results and RViz markers out.

    ros2 launch steerseg_ros steerseg.launch.py camera_topic:=/camera/color/image_raw \
        command_topic:=/speech/command grounder:=builtin tracker:=builtin namespace:=robot

The node is a lifecycle node. With autostart:=true (the default) this file configures it once
the process is up and activates it once it is inactive, the usual launch_ros way (ChangeState
events, the second one on the configuring -> inactive transition); with autostart:=false a
lifecycle manager (e.g. nav2_lifecycle_manager) or `ros2 lifecycle set` does it.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition


def generate_launch_description():
    share = get_package_share_directory("steerseg_ros")
    namespace = LaunchConfiguration("namespace")
    camera_topic = LaunchConfiguration("camera_topic")
    command_topic = LaunchConfiguration("command_topic")
    params_file = LaunchConfiguration("params_file")
    autostart = LaunchConfiguration("autostart")

    arguments = [
        DeclareLaunchArgument("namespace", default_value="",
                              description="Namespace of the node and its relative topics"),
        DeclareLaunchArgument("camera_topic", default_value="/camera/image_raw",
                              description="sensor_msgs/Image topic of the camera (its /compressed "
                                          "sibling is used when image_transport is compressed)"),
        DeclareLaunchArgument("command_topic", default_value="command",
                              description="std_msgs/String topic the language commands arrive on"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "steerseg.yaml"),
                              description="Parameters file (the node's section is /**/steerseg)"),
        DeclareLaunchArgument("grounder", default_value="builtin",
                              description="Grounding backend: builtin, decaf or steerseg"),
        DeclareLaunchArgument("tracker", default_value="builtin",
                              description="Tracking backend: builtin, sam2 (transformers) or sam2_meta (Meta's sam2)"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="Configure and activate the node at start-up"),
        DeclareLaunchArgument("rviz", default_value="false",
                              description="Also start RViz with config/steerseg.rviz"),
    ]

    node = LifecycleNode(
        package="steerseg_ros",
        executable="steerseg_node",
        name="steerseg",
        namespace=namespace,
        output="screen",
        # The backend arguments come after the file, so they override it.
        parameters=[params_file, {"grounder.backend": LaunchConfiguration("grounder"),
                                  "tracker.backend": LaunchConfiguration("tracker")}],
        remappings=[
            ("image", camera_topic),
            ("image/compressed", [camera_topic, "/compressed"]),
            ("command", command_topic),
        ],
    )

    configure = EmitEvent(
        event=ChangeState(lifecycle_node_matcher=matches_action(node),
                          transition_id=Transition.TRANSITION_CONFIGURE),
        condition=IfCondition(autostart),
    )
    activate_when_configured = RegisterEventHandler(
        OnStateTransition(
            target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
            entities=[EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                                  transition_id=Transition.TRANSITION_ACTIVATE))],
        ),
        condition=IfCondition(autostart),
    )

    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        arguments=["-d", os.path.join(share, "config", "steerseg.rviz")],
        condition=IfCondition(LaunchConfiguration("rviz")),
    )

    return LaunchDescription(arguments + [node, activate_when_configured, configure, rviz])
