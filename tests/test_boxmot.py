"""The real client: BoxMOT, where most ReID models end up, loads our float-profile export
through its own ONNX backend and computes our features on a frame with boxes.

Skipped without boxmot (``pip install -e ".[clients]"``; the ``dev`` extra has it).
"""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_run import run_tool

from reid import FeatureExtractor
from reid.data.synthetic import draw_pedestrians


def pasted(crops: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
    """An RGB frame holding the crops side by side on grey, and their ``(x1, y1, x2, y2)``
    boxes, as a detector would give them."""
    width = sum(crop.width + 8 for crop in crops) + 8
    height = max(crop.height for crop in crops) + 16
    frame = np.full((height, width, 3), 90, np.uint8)
    boxes, x = [], 8
    for crop in crops:
        frame[8 : 8 + crop.height, x : x + crop.width] = np.asarray(crop)
        boxes.append([x, 8, x + crop.width, 8 + crop.height])
        x += crop.width + 8
    return frame, np.array(boxes, dtype=np.float32)


def features(reid, extractor: FeatureExtractor, crops: list[Image.Image]) -> tuple:
    """BoxMOT's features of the crops found in a frame (it reads BGR frames, as OpenCV
    gives them) and ours of the same crops, both L2-normalised."""
    frame, boxes = pasted(crops)
    theirs = np.asarray(reid.model.get_features(boxes, np.ascontiguousarray(frame[..., ::-1])))
    ours = extractor([frame[int(y1) : int(y2), int(x1) : int(x2)] for x1, y1, x2, y2 in boxes])
    ours = ours.numpy()
    return tuple(f / np.linalg.norm(f, axis=1, keepdims=True) for f in (theirs, ours))


def nearest(feats: np.ndarray) -> np.ndarray:
    """Each crop's most similar other crop."""
    return np.argsort(-feats @ feats.T, axis=1)[:, 1]


@pytest.mark.slow
def test_boxmot_runs_the_float_export_and_computes_our_features(
    trained: Path, tmp_path: Path
) -> None:
    # Imported here, not at collection: boxmot takes seconds to import.
    runtime = pytest.importorskip("boxmot.reid.core.runtime")
    graph = tmp_path / "resnet18_synthetic.onnx"
    result = run_tool("export.py", "--run", str(trained), "--input", "float", "--out", str(graph))
    assert result.returncode == 0, result.stderr[-2000:]
    reid = runtime.ReID(graph, device="cpu")
    extractor = FeatureExtractor(graph)
    height, width = extractor.size
    assert tuple(reid.model.input_shape) == (height, width)  # read from our metadata file
    people = [image for _, image in draw_pedestrians(6, 2, seed=5)]

    # Crops already at the graph's size: neither side resizes, so nothing may differ.
    theirs, ours = features(reid, extractor, [p.resize((width, height)) for p in people])
    assert (theirs * ours).sum(1).min() >= 0.999
    assert (np.argsort(-theirs @ theirs.T) == np.argsort(-ours @ ours.T)).all()

    # Smaller crops, enlarged to the graph's size (Market's 128x64 crops at 256x128): both
    # sides interpolate bilinearly and agree.
    theirs, ours = features(
        reid, extractor, [p.resize((width * 3 // 4, height * 3 // 4)) for p in people]
    )
    assert (theirs * ours).sum(1).min() >= 0.999
    assert (nearest(theirs) == nearest(ours)).all()

    # Larger crops, shrunk 4x: Pillow averages over the pixels it drops (antialiasing),
    # OpenCV's bilinear resize samples four of them. That difference is what it costs.
    theirs, ours = features(reid, extractor, people)
    cosines = (theirs * ours).sum(1)
    print(f"crops shrunk 4x: cosine to ours min {cosines.min():.4f}, mean {cosines.mean():.4f}")
    assert cosines.mean() >= 0.95
