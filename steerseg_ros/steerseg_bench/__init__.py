"""steerseg-bench: every benchmark of the package, its figures for this machine as one table plus
JSON. `cli` holds the command line; `sections` the registry of sections; `common` what the
sections share; `node` the node process they run and feed; the other modules one area each. The
standalone measurements (davis_grounding, davis_tracker, depth_accuracy, sam2_parity, and
attention, sam2, sam2_meta, vlm on their own) run as `python -m steerseg_bench.<name>`. Runtime
code never imports this package."""
