"""Launch the steerseg nodes: a camera topic and a command topic in; label masks, overlays,
tracks, grounding results and RViz markers out.

    ros2 launch steerseg_ros steerseg.launch.py camera_topic:=/camera/color/image_raw \
        command_topic:=/speech/command grounder:=builtin tracker:=builtin namespace:=robot

`nodes` chooses what runs here:
- all (default): the tracker node `steerseg` and the grounder node `steerseg_grounder`, each in its
  own process; the tracker asks the grounder over the Ground action, so a grounding never shares
  the tracking process's interpreter or GIL.
- tracker: the tracker node alone (on the robot), for a grounder node on another machine.
- grounder: the grounder node alone (on the GPU machine).
- single: one node that grounds in a thread of its own process (the earlier setup).
`grounder` names the grounding backend wherever grounding runs; the grounder node reads
`grounder_params_file` (its model settings).

With drawer:=true (the default) the drawing node `steerseg_drawer` runs beside the tracker node
(modes all, tracker and single), in its own process: it draws `overlay` and `markers` from the
camera image, `mask` and `tracks`, and the tracker node publishes neither (its `draw` is set
false). With drawer:=false the tracker node draws them itself, when something subscribes.

The default topics are a camera driver's (image_pipeline's `camera` namespace):
/camera/image_raw, /camera/depth_registered/image_raw (depth registered to the colour image) and
/camera/camera_info (the colour camera's CameraInfo), the same that `steerseg-play` publishes by
default; camera_topic, depth_topic and camera_info_topic name others (the README lists them for
the usual drivers).

The nodes are lifecycle nodes. With autostart:=true (the default) each configures and activates
itself once its process is up (the nodes' own `autostart` parameter); with autostart:=false a
lifecycle manager (e.g. nav2_lifecycle_manager) or `ros2 lifecycle set` does it. Not the usual
launch_ros ChangeState events: launch_ros sends the configure request once the node's
change_state service is found and then waits for the answer forever
(LifecycleNode._call_change_state), and a request lost while the service is still matching (seen
under load with Fast DDS) left the node unconfigured for good.
"""
import os

import launch.logging
from ament_index_python.packages import PackageNotFoundError, get_package_prefix, get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node


NODES = ("all", "tracker", "grounder", "single")


def _rviz(context, layout):
    """RViz with the shipped layout, or, where rviz2 is not installed, a warning saying so: a
    Node action for a missing package fails the whole launch (and can leave the node running)."""
    try:
        get_package_prefix("rviz2")
    except PackageNotFoundError:
        launch.logging.get_logger("launch").warning(
            "rviz:=true, but RViz (the rviz2 package) is not installed here: going on without it. "
            "Install it (e.g. apt install ros-$ROS_DISTRO-rviz2) or run RViz on another machine "
            f"with -d {layout}")
        return []
    return [Node(package="rviz2", executable="rviz2", name="rviz2", arguments=["-d", layout])]


def generate_launch_description():
    share = get_package_share_directory("steerseg_ros")
    namespace = LaunchConfiguration("namespace")
    camera_topic = LaunchConfiguration("camera_topic")
    command_topic = LaunchConfiguration("command_topic")
    depth_topic = LaunchConfiguration("depth_topic")
    camera_info_topic = LaunchConfiguration("camera_info_topic")
    params_file = LaunchConfiguration("params_file")
    autostart = LaunchConfiguration("autostart")

    arguments = [
        DeclareLaunchArgument("namespace", default_value="",
                              description="Namespace of the node and its relative topics"),
        DeclareLaunchArgument("camera_topic", default_value="/camera/image_raw",
                              description="sensor_msgs/Image topic of the camera (its /compressed "
                                          "sibling is used when image_transport is compressed)"),
        DeclareLaunchArgument("image_transport", default_value="raw", choices=["raw", "compressed"],
                              description="raw: sensor_msgs/Image on camera_topic; compressed: "
                                          "sensor_msgs/CompressedImage (JPEG or PNG) on camera_topic/compressed "
                                          "(the tracker and the drawing node both)"),
        DeclareLaunchArgument("command_topic", default_value="command",
                              description="std_msgs/String topic the language commands arrive on"),
        DeclareLaunchArgument("depth_topic", default_value="/camera/depth_registered/image_raw",
                              description="sensor_msgs/Image depth registered to the colour image "
                                          "(16UC1 mm or 32FC1 m); nothing published there: 2D only"),
        DeclareLaunchArgument("camera_info_topic", default_value="/camera/camera_info",
                              description="sensor_msgs/CameraInfo of the colour camera (needed for 3D)"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "steerseg.yaml"),
                              description="Parameters file (the node's section is /**/steerseg)"),
        DeclareLaunchArgument("nodes", default_value="all", choices=list(NODES),
                              description="all: tracker and grounder nodes in two processes; tracker or "
                                          "grounder: that node alone (two machines); single: one node "
                                          "grounding in a thread"),
        DeclareLaunchArgument("grounder_params_file",
                              default_value=os.path.join(share, "config", "grounder.yaml"),
                              description="Parameters file of the grounder node (its section is "
                                          "/**/steerseg_grounder)"),
        DeclareLaunchArgument("grounder", default_value="builtin",
                              description="Grounding backend: builtin, decaf, steerseg, sam3 (noun phrases, SAM 3 weights) or oracle (ground truth from disk, benchmarks only)"),
        DeclareLaunchArgument("tracker", default_value="builtin",
                              description="Tracking backend: builtin, sam2 (transformers), sam2_meta (Meta's sam2) or sam3 (transformers, SAM 3 weights)"),
        DeclareLaunchArgument("drawer", default_value="true", choices=["true", "false"],
                              description="Start the drawing node (overlay and markers in their own "
                                          "process); false: the tracker node draws them itself"),
        DeclareLaunchArgument("drawer_params_file",
                              default_value=os.path.join(share, "config", "drawer.yaml"),
                              description="Parameters file of the drawing node (its section is "
                                          "/**/steerseg_drawer)"),
        DeclareLaunchArgument("autostart", default_value="true", choices=["true", "false"],
                              description="Configure and activate the node at start-up"),
        DeclareLaunchArgument("rviz", default_value="false",
                              description="Also start RViz with config/steerseg.rviz"),
    ]

    def nodes(context):
        mode = LaunchConfiguration("nodes").perform(context)
        drawer = LaunchConfiguration("drawer").perform(context) == "true" and mode != "grounder"
        camera = [("image", camera_topic), ("image/compressed", [camera_topic, "/compressed"])]
        entities = []
        if mode in ("all", "tracker", "single"):
            tracker = LifecycleNode(
                package="steerseg_ros",
                executable="steerseg_node",
                name="steerseg",
                namespace=namespace,
                output="screen",
                # The backend arguments come after the file, so they override it.
                parameters=[params_file, {
                    "grounder.backend": LaunchConfiguration("grounder") if mode == "single" else "remote",
                    "tracker.backend": LaunchConfiguration("tracker"),
                    "draw": not drawer,
                    "image_transport": LaunchConfiguration("image_transport"),
                    "autostart": autostart}],
                remappings=camera + [
                    ("command", command_topic),
                    ("depth", depth_topic),
                    ("camera_info", camera_info_topic),
                ],
            )
            entities.append(tracker)
        if mode in ("all", "grounder"):
            grounder = LifecycleNode(
                package="steerseg_ros",
                executable="steerseg_grounder",
                name="steerseg_grounder",
                namespace=namespace,
                output="screen",
                parameters=[LaunchConfiguration("grounder_params_file"),
                            {"grounder.backend": LaunchConfiguration("grounder"), "autostart": autostart}],
            )
            entities.append(grounder)
        if drawer:
            drawing = LifecycleNode(
                package="steerseg_ros",
                executable="steerseg_drawer",
                name="steerseg_drawer",
                namespace=namespace,
                output="screen",
                parameters=[LaunchConfiguration("drawer_params_file"),
                            {"image_transport": LaunchConfiguration("image_transport"),
                             "autostart": autostart}],
                remappings=camera,
            )
            entities.append(drawing)
        return entities

    rviz = OpaqueFunction(function=_rviz, args=[os.path.join(share, "config", "steerseg.rviz")],
                          condition=IfCondition(LaunchConfiguration("rviz")))

    return LaunchDescription(arguments + [OpaqueFunction(function=nodes), rviz])
