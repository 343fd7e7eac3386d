"""steerseg-bench as a user runs it: one cheap section (the built-in tracker on a few DAVIS
frames) written as bench.md and bench.json, and the ways a run can go wrong without dying."""
from __future__ import annotations

import json

import pytest

from steerseg_bench import cli as bench

CHEAP = ["--sections", "tracker", "--tracker-sequences", "blackswan", "--tracker-frames", "6"]


def _report(folder):
    return json.loads((folder / "bench.json").read_text()), (folder / "bench.md").read_text()


def test_writes_table_and_json_with_machine_and_figures(davis_root, tmp_path):
    assert bench.main(CHEAP + ["--data", str(davis_root), "--out", str(tmp_path)]) == 0
    report, table = _report(tmp_path)

    machine = report["machine"]
    assert machine["cpus"] >= 1
    assert len(machine["load_average_before"].split()) == 3 and len(machine["load_average_after"].split()) == 3
    assert machine["device"] in ("cpu", "cuda")
    assert report["options"]["tracker_frames"] == 6 and report["options"]["sections"] == "tracker"

    entry = report["sections"]["tracker"]
    assert entry["status"] == "ok"
    figures = entry["figures"]
    assert figures["sequences"] == 1 and figures["frames_timed"] == 5  # the seed frame is not stepped
    assert figures["image"] == "854x480"
    assert 50.0 < figures["J&F"] <= 100.0  # blackswan's first frames track well
    assert figures["step_median_ms"] > 0
    assert figures["goal_step_ms"] == 30.0 and isinstance(figures["goal_step_met"], bool)
    assert "sequences.blackswan.J&F" in figures

    assert "| tracker | status | ok" in table
    assert f"| tracker | J&F | {figures['J&F']:.4g} |" in table
    assert f"| cpus | {machine['cpus']} |" in table


def test_unknown_section_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--sections", "tracker,no_such_section", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no_such_section" in err and "tracker" in err
    assert not (tmp_path / "bench.json").exists()


def test_missing_data_skips_the_section_with_the_reason(tmp_path):
    empty = tmp_path / "no_data"
    assert bench.main(CHEAP + ["--data", str(empty), "--out", str(tmp_path)]) == 0
    report, table = _report(tmp_path)
    entry = report["sections"]["tracker"]
    assert entry["status"] == "skipped" and str(empty) in entry["reason"]
    assert "| tracker | status | skipped |" in table


def test_a_failing_section_is_reported_and_the_others_still_run(davis_root, tmp_path, monkeypatch):
    def broken(args):
        raise RuntimeError("the model ran out of memory")

    monkeypatch.setitem(bench.SECTIONS, "broken", broken)
    monkeypatch.setitem(bench.REQUIRES, "broken", ())
    argv = CHEAP + ["--data", str(davis_root), "--out", str(tmp_path)]
    argv[1] = "broken,tracker"
    assert bench.main(argv) == 1
    report, table = _report(tmp_path)
    assert report["sections"]["broken"]["status"] == "failed"
    assert "RuntimeError: the model ran out of memory" in report["sections"]["broken"]["error"]
    assert report["sections"]["tracker"]["status"] == "ok"
    assert "| broken | error | RuntimeError: the model ran out of memory |" in table
