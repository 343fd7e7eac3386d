"""The ROS-free streaming runtime the tracker node drives: camera frames and commands in, tracks
with masks out. `pipeline.Pipeline` is its one entry point; the other modules are its parts
(frame buffer, target selection, backends registry)."""
