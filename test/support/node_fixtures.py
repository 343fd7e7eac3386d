"""Fixtures of the in-process node tests (a test module imports them by name): a ROS context of the test module's own (its own random
domain), and tracker nodes made in it with parameter overrides and closed after the test."""
import pytest


@pytest.fixture(scope="module")
def context():
    rclpy = pytest.importorskip("rclpy", reason="needs the ROS 2 Python packages (scripts/setup_env.sh)")
    from rclpy.signals import SignalHandlerOptions

    import ros_processes as rp

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=rp.random_domain_id(), signal_handler_options=SignalHandlerOptions.NO)
    yield ctx
    ctx.try_shutdown()


@pytest.fixture
def make_node(context):
    from rclpy.parameter import Parameter

    from steerseg_ros.ros.tracker_node import SteerSegNode

    nodes = []

    def make(node_name: str = "steerseg", **overrides):
        node = SteerSegNode(node_name, context=context,
                            parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.close()
        node.destroy_node()
