"""steerseg-export and the tracker's encoder runtimes: the SAM2 image encoder exported to ONNX
with a dynamic batch matches torch under onnxruntime, the tracker runs on it, and TensorRT's
absence is a clear error (TensorRT cannot be installed on these machines)."""
from __future__ import annotations

import contextlib
import importlib.util
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import load_davis  # noqa: E402
from steerseg_ros.streaming import backends  # noqa: E402
from steerseg_ros.frame import Frame  # noqa: E402
from steerseg_ros.tools import export  # noqa: E402
from steerseg_ros.tracking.sam2 import load_model  # noqa: E402
from steerseg_ros.tracking.sam2_encoder import (ONNX_OUTPUTS, EncoderUnavailableError, OnnxEncoder,  # noqa: E402
                                                TorchEncoder)

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


pytestmark = [pytest.mark.models, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def exported(sam2_checkpoint, tmp_path_factory):
    """The ONNX encoder written by the command-line tool, as a user would (one export per
    module: it takes about 20 s even for the tiny model)."""
    folder = tmp_path_factory.mktemp("export")
    onnx_path, engine = folder / "encoder.onnx", folder / "encoder.engine"
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        code = export.main(["--model", str(sam2_checkpoint), "--onnx", str(onnx_path), "--tensorrt", str(engine),
                            "--local-files-only"])
    return onnx_path, engine, code, errors.getvalue()


def test_onnx_encoder_has_a_dynamic_batch_and_matches_torch(sam2_checkpoint, exported):
    onnx_path = exported[0]
    assert onnx_path.is_file()
    graph = onnx.load(str(onnx_path)).graph
    batch = graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # symbolic, not fixed
    assert [o.name for o in graph.output] == list(ONNX_OUTPUTS)
    model = load_model(str(sam2_checkpoint))
    runners = TorchEncoder(model), OnnxEncoder(onnx_path, torch.device("cpu"), torch.float32)
    for batch_size in (1, 3):
        x = torch.randn(batch_size, 3, 64, 64, generator=torch.Generator().manual_seed(batch_size))
        reference, exported_out = (run(x) for run in runners)
        for a, b in zip(reference, exported_out):
            assert a.shape == b.shape and a.shape[1] == batch_size
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_tracker_runs_its_encoder_through_onnxruntime(sam2_checkpoint, exported, davis_root):
    onnx_path = exported[0]
    _, images, masks = load_davis(davis_root, "camel", count=5)
    frames = [Frame(i, i, image) for i, image in enumerate(images)]
    common = {"model": str(sam2_checkpoint), "local_files_only": True}
    by_torch = backends.make_tracker("sam2", common)
    by_onnx = backends.make_tracker("sam2", {**common, "encoder": "onnx", "encoder_file": str(onnx_path)})
    assert by_onnx.encoder.name == "onnx"
    # The features the tracker caches for a frame are torch's, to float precision.
    a = by_torch._input(frames[0]).features.vision["vision_feats"]
    b = by_onnx._input(frames[0]).features.vision["vision_feats"]
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(a, b))
    # And so are the masks. (Only over a few frames: the random memory weights amplify the 1e-7
    # differences chaotically over tens of frames, which trained weights do not.)
    for tracker in (by_torch, by_onnx):
        tracker.attach(1, tracker.start(frames[0], mask=masks[0]))
    for frame in frames[1:]:
        x, y = by_torch.step(frame)[1], by_onnx.step(frame)[1]
        assert np.count_nonzero(x.mask != y.mask) <= 0.001 * x.mask.size
        assert y.score == pytest.approx(x.score, abs=1e-4)
    with pytest.raises(EncoderUnavailableError, match="steerseg-export"):
        backends.make_tracker("sam2", {**common, "encoder": "onnx", "encoder_file": str(onnx_path) + ".missing"})


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_tensorrt_where_it_is_missing_is_a_clear_error(sam2_checkpoint, exported):
    onnx_path, engine, code, errors = exported
    assert code == 3 and onnx_path.is_file() and not engine.exists()  # the ONNX file is still there
    assert "no TensorRT engine: TensorRT is not available" in errors
    with pytest.raises(EncoderUnavailableError) as e:
        backends.make_tracker("sam2", {"model": str(sam2_checkpoint), "local_files_only": True,
                                       "encoder": "tensorrt", "encoder_file": str(engine)})
    message = str(e.value)
    assert "TensorRT is not available" in message and "tensorrt" in message and "encoder: onnx" in message


def test_export_of_missing_weights_fails_cleanly(tmp_path, capsys):
    code = export.main(["--model", "facebook/sam2.1-hiera-base-plus", "--onnx", str(tmp_path / "x.onnx"),
                        "--local-files-only"])
    assert code == 2 and not (tmp_path / "x.onnx").exists()
    assert "hf download facebook/sam2.1-hiera-base-plus" in capsys.readouterr().err
