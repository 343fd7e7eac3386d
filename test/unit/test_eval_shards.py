"""Sharded evaluation: `steerseg-eval --shard K/N` runs and `--merge` give the tables of one
unsharded run, by hand (any job scheduler) and under torchrun (ranks from RANK/WORLD_SIZE, a
gloo barrier, rank 0 merges); a missing shard or shards of different runs are refused. The
built-in backends run on real DAVIS frames, cut short (3 videos, 2 commands each, 8 frames)."""
import csv
import json
import os
import subprocess
import sys

import pytest

from steerseg_ros.offline.evaluation import merge_shards, parse_shard, shard_of
from steerseg_ros.tools import eval as eval_tool

VIDEOS = "blackswan,car-shadow,parkour"
FRAMES = 8


def _args(davis_root, out, *extra):
    return ["--dataset", "expressions", "--root", str(davis_root), "--out", str(out), "--mode", "streaming",
            "--sequences", VIDEOS, "--max-frames", str(FRAMES), "--grounder", "builtin", "--tracker", "builtin",
            "--no-progress", *extra]


def _rows(path):
    with open(path) as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def _table(out):
    return json.loads((out / "summary.json").read_text())["table"]


@pytest.fixture(scope="module")
def whole_run(davis_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    assert eval_tool.main(_args(davis_root, out)) == 0
    return out


def test_shards_split_videos_and_refuse_bad_specs():
    videos = ["a", "b", "c", "d", "e"]
    parts = [shard_of(videos, k, 2) for k in range(2)]
    assert parts == [{"a", "c", "e"}, {"b", "d"}]
    assert parse_shard("2/3") == (1, 3)
    for bad in ("0/2", "3/2", "1", "a/b", "1/0"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_two_shards_merged_equal_one_run(davis_root, tmp_path, whole_run, capsys):
    out = tmp_path / "sharded"
    for k in (1, 2):
        assert eval_tool.main(_args(davis_root, out, "--shard", f"{k}/2")) == 0
    assert "--merge" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["1-of-2", "2-of-2"]
    assert not (out / "summary.json").exists()  # nothing merged yet
    # Every shard scored only its own videos, each video once.
    shard_videos = [{r["video"] for r in _rows(out / "shards" / s / "per_expression.csv")} for s in ("1-of-2", "2-of-2")]
    assert shard_videos == [{"blackswan", "parkour"}, {"car-shadow"}]

    assert eval_tool.main(["--merge", "--out", str(out)]) == 0
    assert _rows(out / "per_expression.csv") == _rows(whole_run / "per_expression.csv")
    assert _table(out) == _table(whole_run)
    merged = json.loads((out / "summary.json").read_text())
    assert merged["shards"] == 2 and merged["samples"] == 6 and merged["frames"] == 6 * FRAMES
    # Both runs wrote the same masks.
    whole = sorted(p.relative_to(whole_run).as_posix() for p in (whole_run / "masks").rglob("*.png"))
    assert whole == sorted(p.relative_to(out).as_posix() for p in (out / "masks").rglob("*.png"))
    assert len(whole) == 6 * FRAMES


def test_merge_refuses_a_missing_shard_and_shards_of_other_runs(davis_root, tmp_path, capsys):
    out = tmp_path / "partial"
    assert eval_tool.main(_args(davis_root, out, "--shard", "2/2", "--limit", "2")) == 0
    assert eval_tool.main(["--merge", "--out", str(out)]) == 2
    assert "shard(s) [1] of 2 missing" in capsys.readouterr().err
    assert eval_tool.main(_args(davis_root, out, "--shard", "1/2", "--limit", "2", "--set",
                                "pipeline.keyframes.count=6")) == 0
    with pytest.raises(ValueError, match="different datasets, backends or settings"):
        merge_shards(out)


def test_torchrun_ranks_shard_and_rank_zero_merges(davis_root, tmp_path, whole_run):
    pytest.importorskip("torch")
    out = tmp_path / "torchrun"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "steerseg_ros.tools.eval", *_args(davis_root, out)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["1-of-2", "2-of-2"]
    assert _rows(out / "per_expression.csv") == _rows(whole_run / "per_expression.csv")
    assert _table(out) == _table(whole_run)
