"""The one registry of steerseg-bench's sections: each name with the function that measures it
(options -> nested dict of figures), the modules it needs (without them it is reported as
skipped), and the options each area adds to the command line. cli.py reads this module; the
area modules do not know it, so nothing here is registered by the side effect of an import.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from steerseg_bench import depth, following, grounding_rate, models, node, overhead, sam3, soak
from steerseg_bench.common import SectionFn


@dataclass(frozen=True)
class Section:
    name: str
    run: SectionFn
    requires: tuple[str, ...] = ()
    # Left out of the default run (it takes long): run it by name.
    opt_in: bool = False


# In the order of the default run and of the report.
ALL = (
    Section("node_overhead", overhead.node_overhead, ("rclpy",)),
    Section("depth3d", depth.depth3d),
    Section("depth3d_node", depth.depth3d_node, ("rclpy",)),
    Section("grounding_rate", grounding_rate.grounding_rate, ("rclpy",)),
    Section("memory", soak.memory, ("rclpy",)),
    Section("soak", soak.soak, ("rclpy", "psutil"), opt_in=True),
    Section("rollout", models.rollout, ("torch", "transformers")),
    Section("grounding", models.grounding, ("torch", "transformers")),
    Section("sam2", models.sam2, ("torch", "transformers")),
    Section("sam3", sam3.section, ("torch", "transformers")),
    Section("tracker", models.tracker),
    # Long (minutes per scene and grounder on a CPU): run it by name.
    Section("following", following.following, opt_in=True),
)

SECTIONS: dict[str, SectionFn] = {s.name: s.run for s in ALL}
REQUIRES: dict[str, tuple[str, ...]] = {s.name: s.requires for s in ALL}
OPT_IN = {s.name for s in ALL if s.opt_in}


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of every area, each in its own group."""
    for area in (node, grounding_rate, soak, models, following):
        area.add_options(parser)
