"""The ROS-free transform of 3D estimates (steerseg_ros.depth.transform), against numbers worked
out by hand: a camera's optical frame (z forward, x right, y down) mounted on a robot whose
base_link has x forward, y left, z up, 0.1 m ahead of and 0.5 m above base_link's origin.
"""
from __future__ import annotations

import numpy as np
import pytest

from steerseg_ros.depth.estimate import Object3D
from steerseg_ros.depth.transform import RigidTransform, oriented_box, transform_object

# The standard optical -> body rotation: base x = camera z, base y = -camera x, base z = -camera y.
# As a quaternion (x, y, z, w): (-0.5, 0.5, -0.5, 0.5).
OPTICAL_TO_BASE = RigidTransform(translation=(0.1, 0.0, 0.5), rotation=(-0.5, 0.5, -0.5, 0.5))


def test_point_by_hand():
    # A point 2 m ahead of the camera, 0.3 m right of it and 0.2 m below it is, from base_link,
    # 2.1 m ahead, 0.3 m to the right (y = -0.3) and 0.3 m up (0.5 - 0.2).
    assert np.allclose(OPTICAL_TO_BASE.apply([0.3, 0.2, 2.0]), [2.1, -0.3, 0.3])
    # Several at once, and the identity leaves them alone.
    pts = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    assert np.allclose(OPTICAL_TO_BASE.apply(pts), [[1.1, 0.0, 0.5], [0.1, -1.0, 0.5]])
    assert np.allclose(RigidTransform().apply(pts), pts)


def test_quaternion_is_normalised_and_garbage_refused():
    # tf2 hands over quaternions a rounding error off unit length: normalised, not refused.
    ok = RigidTransform(rotation=(-0.5, 0.5, -0.5, 0.5000001))
    assert np.allclose(ok.apply([0.3, 0.2, 2.0]), [2.0, -0.3, -0.2])
    for bad in [dict(rotation=(0.0, 0.0, 0.0, 0.0)), dict(rotation=(-1.0, 1.0, -1.0, 1.0)),
                dict(translation=(float("nan"), 0.0, 0.0))]:
        with pytest.raises(ValueError):
            RigidTransform(**bad)


def test_covariance_rotates():
    # Spread 1 cm across (x), 2 cm vertically (y), 5 cm in depth (z) in the camera: from
    # base_link the depth spread lies along x, the across spread along y, the vertical along z.
    cov = np.diag([0.01 ** 2, 0.02 ** 2, 0.05 ** 2])
    assert np.allclose(OPTICAL_TO_BASE.rotate_covariance(cov), np.diag([0.05 ** 2, 0.01 ** 2, 0.02 ** 2]))
    # A 90 degree yaw about z swaps x and y and turns the cross term's sign.
    yaw = RigidTransform(rotation=(0.0, 0.0, np.sin(np.pi / 4), np.cos(np.pi / 4)))
    c = np.array([[4.0, 1.0, 0.0], [1.0, 9.0, 0.0], [0.0, 0.0, 1.0]])
    assert np.allclose(yaw.rotate_covariance(c), [[9.0, -1.0, 0.0], [-1.0, 4.0, 0.0], [0.0, 0.0, 1.0]])


def _object() -> Object3D:
    points = np.array([[0.2, 0.1, 1.9], [0.4, 0.3, 2.1]], dtype=np.float32)
    return Object3D(valid=True, position=(0.3, 0.2, 2.0), extent_min=(0.2, 0.1, 1.9), extent_max=(0.4, 0.3, 2.1),
                    size=(0.2, 0.2, 0.2), n_valid=500, std=(0.01, 0.02, 0.05), stderr=0.002, points=points)


def test_object_by_hand():
    placed = transform_object(OPTICAL_TO_BASE, _object())
    assert np.allclose(placed.position, [2.1, -0.3, 0.3])
    # The camera box x 0.2..0.4, y 0.1..0.3, z 1.9..2.1 -> base x 2.0..2.2, y -0.4..-0.2, z 0.2..0.4.
    assert np.allclose(placed.extent_min, [2.0, -0.4, 0.2])
    assert np.allclose(placed.extent_max, [2.2, -0.2, 0.4])
    assert np.allclose(placed.std, [0.05, 0.01, 0.02])
    assert np.allclose(placed.covariance, np.diag([0.05 ** 2, 0.01 ** 2, 0.02 ** 2]))
    assert np.allclose(placed.points, [[2.0, -0.2, 0.4], [2.2, -0.4, 0.2]], atol=1e-6)
    assert placed.n_valid == 500 and placed.stderr == 0.002
    # The exact box: centre (2.1, -0.3, 0.3), edges 0.2 in the camera's axes, turned by the mount.
    centre, rotation, size = oriented_box(placed)
    assert np.allclose(centre, [2.1, -0.3, 0.3])
    assert np.allclose(size, [0.2, 0.2, 0.2])
    assert np.allclose(np.abs(rotation), [0.5, 0.5, 0.5, 0.5])


def test_rotated_box_gets_the_enclosing_axis_aligned_box():
    # A 45 degree yaw turns a 1 m x 1 m square into a diamond sqrt(2) m across.
    yaw = RigidTransform(rotation=(0.0, 0.0, np.sin(np.pi / 8), np.cos(np.pi / 8)))
    obj = Object3D(valid=True, position=(0.0, 0.0, 0.0), extent_min=(-0.5, -0.5, 0.0), extent_max=(0.5, 0.5, 1.0),
                   size=(1.0, 1.0, 1.0), n_valid=10)
    placed = transform_object(yaw, obj)
    h = np.sqrt(2) / 2
    assert np.allclose(placed.extent_min, [-h, -h, 0.0]) and np.allclose(placed.extent_max, [h, h, 1.0])
    centre, rotation, size = oriented_box(placed)
    assert np.allclose(size, [1.0, 1.0, 1.0]) and np.allclose(centre, [0.0, 0.0, 0.5])
    # Composing two transforms equals one transform by their product.
    twice = transform_object(yaw, placed)
    assert np.allclose(twice.position, [0.0, 0.0, 0.0])
    assert np.allclose(twice.extent_min, [-0.5, -0.5, 0.0]) and np.allclose(twice.extent_max, [0.5, 0.5, 1.0])
    centre2, rotation2, _ = oriented_box(twice)
    assert np.allclose(centre2, [0.0, 0.0, 0.5])
    assert np.allclose(np.abs(rotation2), [0.0, 0.0, h, h])


def test_invalid_estimate_passes_unchanged():
    obj = Object3D(valid=False, reason="too few depth pixels")
    assert transform_object(OPTICAL_TO_BASE, obj) is obj
