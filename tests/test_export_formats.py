"""Export formats and precisions (``tools/export.py --format / --precision``): OpenVINO's
IR passes the fp32 parity gate; fp16 and int8 pass an accuracy gate whose figures are
checked against the run's own evaluation and a brute-force mAP; the gate refuses a
model that loses too much; TensorRT says what it is missing, and on a GPU passes parity."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_deploy import export
from tiny_run import run_tool

from reid import FeatureExtractor
from reid.data import build_dataset
from reid.deploy import FORMATS, ExportMetadata, load_exported
from reid.extractor import resolve_run
from reid.search import model_fingerprint

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

ACCURACY = re.compile(
    r"rank-1 ([\d.]+) \(fp32 ([\d.]+)\), mAP ([\d.]+) \(fp32 ([\d.]+), "
    r"drop (-?[\d.]+) <= ([\d.]+)\)"
)


def accuracy_line(stdout: str) -> tuple[float, ...]:
    """(rank-1, fp32 rank-1, mAP, fp32 mAP, drop, limit) printed by the accuracy gate."""
    found = ACCURACY.search(stdout)
    assert found, stdout
    return tuple(float(value) for value in found.groups())


def brute_force_map(feats: torch.Tensor, pids, camids, num_query: int) -> tuple[float, float]:
    """rank-1 and mAP (in points) of cosine rankings under the Market rule, one query at a
    time from the definitions: junk (pid -1) and the query's identity seen by its own
    camera are left out; AP is the mean of precision at each correct match."""
    feats = torch.nn.functional.normalize(feats.double(), dim=1)
    hits, aps = [], []
    for q in range(num_query):
        sims = []
        for g in range(num_query, len(feats)):
            if pids[g] == -1 or (pids[g] == pids[q] and camids[g] == camids[q]):
                continue
            sims.append((-float(feats[q] @ feats[g]), g))
        ranked = [pids[g] == pids[q] for _, g in sorted(sims)]
        if not any(ranked):
            continue
        found, precisions = 0, []
        for position, correct in enumerate(ranked, start=1):
            if correct:
                found += 1
                precisions.append(found / position)
        hits.append(ranked[0])
        aps.append(sum(precisions) / len(precisions))
    return 100 * float(np.mean(hits)), 100 * float(np.mean(aps))


def test_formats_are_registered_with_their_files() -> None:
    assert FORMATS.names() == ["onnx", "openvino", "tensorrt"]
    out = Path("m")
    assert FORMATS.get("openvino").files(out.with_suffix(".xml")) == [Path("m.xml"), Path("m.bin")]
    assert FORMATS.get("tensorrt").files(Path("m.engine")) == [
        Path("m.engine"),
        Path("m.engine.json"),
    ]
    with pytest.raises(Exception, match=r"expected a file ending in \.onnx, \.xml, \.engine"):
        load_exported("model.pt")


def test_metadata_of_older_exports_reads_as_fp32_and_bad_values_are_named() -> None:
    meta = ExportMetadata((32, 16), [0.5] * 3, [0.5] * 3, 8, True, False, "cosine", "a", "0", "r")
    props = meta.to_props()
    assert ExportMetadata.from_props(props, "x").precision == "fp32"
    del props["precision"]
    assert ExportMetadata.from_props(props, "old.onnx") == meta
    props["precision"] = json.dumps("int4")
    with pytest.raises(
        Exception, match=r"old.onnx: unknown precision 'int4'; expected one of fp32"
    ):
        ExportMetadata.from_props(props, "old.onnx")


@pytest.mark.slow
def test_openvino_export_passes_parity_and_runs_like_pytorch(trained: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    out = tmp_path / "reid.xml"
    result = run_tool("export.py", "--run", str(trained), "--format", "openvino", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "identical top-10 rankings 16/16" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reid.bin", "reid.xml"]
    ir, pytorch = FeatureExtractor(out), FeatureExtractor(trained)
    assert ir.backend.metadata.precision == "fp32" and ir.size == pytorch.size
    dataset = build_dataset(resolve_run(trained, None)[0], "synthetic")
    images = [r.path for r in dataset.query[:8] + dataset.gallery[:24]]
    assert torch.allclose(ir(images), pytorch(images), atol=1e-4)
    # The search index's fingerprint covers the weights file too.
    before = model_fingerprint(ir)
    weights = bytearray(out.with_suffix(".bin").read_bytes())
    weights[len(weights) // 2] ^= 1
    out.with_suffix(".bin").write_bytes(weights)
    assert model_fingerprint(FeatureExtractor(out)) != before


@pytest.mark.slow
def test_int8_reports_its_accuracy_next_to_fp32(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "int8.onnx"
    args = ["--run", str(trained), "--weights", str(trained / "last.pth")]
    result = run_tool("export.py", *args, "--precision", "int8", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    dataset = build_dataset(resolve_run(trained, None)[0], "synthetic")
    assert f"calibration images: {len(dataset.train)} training images" in result.stdout
    rank1, fp32_rank1, mean_ap, fp32_map, drop, limit = accuracy_line(result.stdout)
    # fp32's figures are the run's own evaluation of last.pth.
    evaluated = json.loads((trained / "metrics.json").read_text())
    assert fp32_rank1 == pytest.approx(100 * evaluated["rank1"], abs=0.006)
    assert fp32_map == pytest.approx(100 * evaluated["mAP"], abs=0.006)
    assert drop == pytest.approx(fp32_map - mean_ap, abs=0.011) and limit == 1.0
    # The int8 figures, recomputed from the written model's features by plain loops.
    records = dataset.query + dataset.gallery
    feats = FeatureExtractor(out)([r.path for r in records])
    expected = brute_force_map(
        feats, [r.pid for r in records], [r.camid for r in records], len(dataset.query)
    )
    assert (rank1, mean_ap) == pytest.approx(expected, abs=0.006)
    # Symmetric int8 (zero point 0, as TensorRT requires) around every convolution.
    graph = onnx.load(str(out))
    convs = [node for node in graph.graph.node if node.op_type == "Conv"]
    produced = {node.output[0]: node for node in graph.graph.node}
    assert convs and all(produced[c.input[0]].op_type == "DequantizeLinear" for c in convs)
    zero_points = {
        init.name: onnx.numpy_helper.to_array(init)
        for init in graph.graph.initializer
        if init.name.endswith("zero_point")
    }
    assert zero_points and not any(z.any() for z in zero_points.values())
    # Weights and activations in int8; only the biases are int32.
    assert {str(z.dtype) for name, z in zero_points.items() if "bias" not in name} == {"int8"}
    assert FeatureExtractor(out).backend.metadata.precision == "int8"


@pytest.mark.slow
def test_an_export_that_loses_too_much_is_refused_and_nothing_is_written(
    trained: Path, tmp_path: Path
) -> None:
    # Calibrated on flat grey images, int8 clips every real activation.
    grey = tmp_path / "grey"
    grey.mkdir()
    for i in range(4):
        Image.new("RGB", (16, 32), (128 + i, 128, 128)).save(grey / f"{i}.png")
    out = tmp_path / "out" / "bad.onnx"
    out.parent.mkdir()
    args = ["--run", str(trained), "--precision", "int8", "--calibration-images", str(grey)]
    result = run_tool("export.py", *args, "--out", str(out), "--max-map-drop", "0.5")
    assert result.returncode != 0
    assert "error: accuracy check failed, nothing written: accuracy on" in result.stderr
    rank1, fp32_rank1, mean_ap, fp32_map, drop, limit = accuracy_line(result.stderr)
    assert drop > limit == 0.5
    assert list(out.parent.iterdir()) == []


@pytest.mark.slow
def test_fp16_on_labelled_folders_keeps_the_ranking(trained: Path, tmp_path: Path) -> None:
    dataset = build_dataset(resolve_run(trained, None)[0], "synthetic")
    folder = tmp_path / "people"
    for record in dataset.query + dataset.gallery[:40]:
        person = folder / f"{record.pid:04d}"
        person.mkdir(parents=True, exist_ok=True)
        shutil.copy(record.path, person / Path(record.path).name)
    out = tmp_path / "half.xml"
    args = ["--run", str(trained), "--format", "openvino", "--precision", "fp16"]
    result = run_tool("export.py", *args, "--parity-images", str(folder), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    identities = len(list(folder.iterdir()))
    assert f"identities from --parity-images {folder}" in result.stdout
    assert f"accuracy on {identities} queries" in result.stdout
    rank1, fp32_rank1, mean_ap, fp32_map, drop, _ = accuracy_line(result.stdout)
    assert abs(drop) < 0.5 and abs(rank1 - fp32_rank1) < 1
    ir = FeatureExtractor(out)
    assert ir.backend.metadata.precision == "fp16"


def test_options_that_do_not_fit_are_one_line(monkeypatch, capsys, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    cases = {
        ("--precision", "fp16", "--calibration-images", "x"): "is for --precision int8",
        ("--format", "openvino", "--out", str(tmp_path / "m.onnx")): "--out must end in .xml",
        ("--max-map-drop", "-1"): "--max-map-drop must be >= 0 points",
    }
    for args, message in cases.items():
        code, _, err = export(monkeypatch, capsys, "--run", str(run), *args)
        assert code == 2 and message in err.strip().splitlines()[-1]
    (tmp_path / "m.bin").write_text("someone's")
    code, _, err = export(
        monkeypatch,
        capsys,
        "--run",
        str(run),
        "--format",
        "openvino",
        "--out",
        str(tmp_path / "m.xml"),
    )
    assert code == 2 and f"{tmp_path / 'm.bin'} exists; pass --overwrite" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_tensorrt_without_what_it_needs_says_so_in_one_line(monkeypatch, capsys, tmp_path) -> None:
    code, _, err = export(monkeypatch, capsys, "--run", str(tmp_path), "--format", "tensorrt")
    (line,) = err.strip().splitlines()
    assert code == 2
    assert line in (
        "error: tensorrt is not installed; this export format needs "
        'pip install "reidkit[tensorrt]"',
        "error: TensorRT needs an NVIDIA GPU, and torch sees no CUDA device",
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("profile", ["uint8", "float"])
def test_tensorrt_engine_passes_parity_on_the_gpu(trained: Path, tmp_path: Path, profile) -> None:
    pytest.importorskip("tensorrt")
    out = tmp_path / "reid.engine"
    args = ["--run", str(trained), "--format", "tensorrt", "--input", profile]
    result = run_tool("export.py", *args, "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "identical top-10 rankings 16/16" in result.stdout
    engine, pytorch = FeatureExtractor(out), FeatureExtractor(trained)
    dataset = build_dataset(resolve_run(trained, None)[0], "synthetic")
    # More images than the engine's largest batch: run in parts.
    images = [r.path for r in (dataset.query + dataset.gallery)[:80]]
    assert torch.allclose(engine(images), pytorch(images), atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_tensorrt_reduced_precision_keeps_its_accuracy(trained: Path, tmp_path, precision) -> None:
    pytest.importorskip("tensorrt")
    out = tmp_path / f"{precision}.engine"
    args = ["--run", str(trained), "--format", "tensorrt", "--precision", precision]
    result = run_tool("export.py", *args, "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    print(result.stdout)
    assert accuracy_line(result.stdout)[4] <= 1.0
