"""The ROS-free streaming runtime the tracker node drives: camera frames and commands in, tracks
with masks out. `pipeline.Pipeline` is its one entry point; the other modules are its parts: the
targets and tracks with their lock (targets), the grounding schedule and worker (grounding_worker),
the catch-up of a new object to the live frame (catch_up), the reconciliation of a re-grounding
with the live tracks (reconcile), the frame buffer (buffer), target selection (selection), and the
backends registry (backends)."""
