"""Export to ONNX with its parity check, ONNX Runtime features, and gallery search."""

import copy
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_run import ROOT, error_line, run, run_tool

from reid import FeatureExtractor
from reid.config import load_cfg
from reid.data.synthetic import IMAGE_HEIGHT, IMAGE_WIDTH, draw_pedestrians
from reid.errors import ReidError
from reid.models import build_model
from reid.search import find_images, index_gallery
from reid.tools import export as export_tool

README = (ROOT / "README.md").read_text()
OPTS = ["MODEL.BACKBONE", "resnet18", "INPUT.SIZE_TEST", "[32, 16]", "MODEL.DEVICE", "cpu"]


@pytest.fixture(scope="module")
def exports(trained: Path) -> dict[bool, tuple[Path, str]]:
    """The trained tiny run exported without and with flip: {flip: (file, stdout)}."""
    done = {}
    for flip in (False, True):
        out = trained.parent / f"model{'_flip' if flip else ''}.onnx"
        args = ["--run", str(trained), "--out", str(out), *(["--flip"] if flip else [])]
        result = run_tool("export.py", *args)
        assert result.returncode == 0, result.stderr[-3000:]
        done[flip] = (out, result.stdout)
    return done


@pytest.mark.slow
@pytest.mark.parametrize("flip", [False, True])
def test_export_passes_its_parity_check(exports, flip: bool) -> None:
    path, stdout = exports[flip]
    figures = re.search(
        r"max \|diff\| (\S+) .* min cosine (\S+) .* identical top-10 rankings (\d+)/(\d+)", stdout
    )
    assert figures, stdout
    assert re.search(r"^parity images: \d+ from the dataset synthetic at \S+data$", stdout, re.M)
    assert float(figures[1]) <= 1e-4 and float(figures[2]) >= 0.99999
    assert figures[3] == figures[4] and int(figures[4]) > 0
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path))
    (images,) = session.get_inputs()
    assert images.type == "tensor(uint8)" and images.shape[1:] == [3, 32, 16]
    assert isinstance(images.shape[0], str)  # a dynamic batch axis
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["flip"]) is flip and json.loads(meta["input_size"]) == [32, 16]
    assert json.loads(meta["feat_dim"]) == 512 and json.loads(meta["feat_norm"]) is True
    assert json.loads(meta["source_checkpoint"]).endswith("best.pth")
    assert len(json.loads(meta["source_sha256"])) == 64


@pytest.mark.slow
def test_plain_onnxruntime_snippet_gives_the_extractor_features(exports, trained, tmp_path) -> None:
    """The README's snippet, which does not import reid, on uint8 images."""
    path, _ = exports[True]
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    snippet = next(b for b in blocks if "onnxruntime" in b)
    assert "reid" not in snippet
    images = sorted((trained.parent / "data").glob("*/query/*.jpg"))[:4]
    extractor = FeatureExtractor(trained, device="cpu")
    extractor_flip = FeatureExtractor(path)
    for image in images:
        code = snippet.replace("output/demo/model.onnx", str(path)).replace(
            "person.jpg", str(image)
        )
        namespace: dict = {}
        exec(compile(code, "README snippet", "exec"), namespace)
        expected = extractor_flip([image]).numpy()
        np.testing.assert_allclose(namespace["features"], expected, atol=1e-6)
    # and the ONNX backend of FeatureExtractor matches its PyTorch backend (no flip)
    plain = FeatureExtractor(exports[False][0])
    torch.testing.assert_close(plain(images), extractor(images), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_search_finds_the_query_identity_first(exports, trained, tmp_path) -> None:
    data = next((trained.parent / "data").glob("synthetic-*"))
    query = sorted((data / "query").glob("*.jpg"))[0]
    gallery = tmp_path / "gallery" / "sub"
    gallery.mkdir(parents=True)
    own = Image.open(query)
    own.crop((2, 4, own.width - 2, own.height)).save(gallery / "same_person.jpg")
    others = [p for p in sorted((data / "bounding_box_test").glob("*.jpg"))
              if not p.name.startswith(query.name[:4])][:30]  # fmt: skip
    for path in others:
        shutil.copy(path, gallery / path.name)
    out = tmp_path / "results"
    for model in (str(exports[False][0]), str(trained)):
        args = ["--model", model, "--gallery", str(gallery.parent), "--query", str(query)]
        result = run_tool("search.py", *args, "--topk", "5", "--out", str(out))
        assert result.returncode == 0, result.stderr[-2000:]
        results = json.loads((out / "results.json").read_text())
        assert list(results) == [str(query)] and len(results[str(query)]) == 5
        assert results[str(query)][0]["path"] == str(gallery / "same_person.jpg")
        rows = (out / "results.csv").read_text().splitlines()
        assert rows[0] == "query,rank,path,distance" and len(rows) == 6
        assert len(list((out / "ranked").glob("*.png"))) == 1


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny run directory."""
    run = tmp_path_factory.mktemp("run")
    cfg = load_cfg(opts=OPTS)
    model = build_model(cfg, num_classes=3, load_pretrained_weights=False)
    (run / "config.yaml").write_text(cfg.dump())
    torch.save({"model": model.state_dict()}, run / "best.pth")
    return run


def test_the_index_recomputes_only_new_and_changed_files(run_dir: Path, tmp_path: Path) -> None:
    extractor = FeatureExtractor(run_dir, device="cpu", batch_size=2)
    gallery = tmp_path / "gallery"
    rng = np.random.default_rng(0)
    for i in range(5):
        (gallery / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(gallery / f"d{i % 2}" / f"img{i}.png")
    index = tmp_path / "index.npz"
    first_paths, first, embedded = index_gallery(extractor, gallery, index)
    assert embedded == 5 and index.is_file()
    torch.testing.assert_close(first, extractor(first_paths))

    _, again, embedded = index_gallery(extractor, gallery, index)
    assert embedded == 0 and torch.equal(again, first)

    changed = gallery / "d0" / "img2.png"
    Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)).save(changed)
    Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)).save(gallery / "new.png")
    paths, updated, embedded = index_gallery(extractor, gallery, index)
    assert embedded == 2 and len(paths) == 6
    torch.testing.assert_close(updated, extractor(paths))
    for i, path in enumerate(paths):  # unchanged features come from the index as they were
        if path not in (changed, gallery / "new.png"):
            assert torch.equal(updated[i], first[first_paths.index(path)])


def test_a_corrupt_onnx_file_is_one_line(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a graph")
    with pytest.raises(ReidError, match="cannot load ONNX model .*corrupt.onnx") as info:
        FeatureExtractor(corrupt)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_bad_deploy_inputs_are_one_line(run_dir: Path, tmp_path: Path) -> None:
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    Image.new("RGB", (16, 32)).save(gallery / "a.png")
    not_image = tmp_path / "query.jpg"
    not_image.write_text("not an image")
    search = ["--model", str(run_dir), "--gallery", str(gallery), "--out", str(tmp_path / "o")]
    for (tool, *args), message in [
        (["export.py", "--run", str(tmp_path / "missing")], "run directory not found"),
        (["search.py", *search, "--query", str(not_image)], "cannot read image"),
    ]:
        result = run([sys.executable, str(ROOT / "tools" / tool), *args])
        assert result.returncode == 2, result.stderr[-2000:]
        assert message in error_line(result)


def test_an_empty_gallery_folder_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ReidError, match=r"no images \(.bmp, .jpeg, .jpg, .png\) in "):
        find_images(tmp_path)


def test_console_scripts_are_the_tools() -> None:
    scripts = (ROOT / "pyproject.toml").read_text()
    for name in ("train", "test", "export", "search"):
        assert f'reid-{name} = "reid.tools.{name}:cli"' in scripts
        assert f"from reid.tools.{name} import cli" in (ROOT / "tools" / f"{name}.py").read_text()


# --- export anywhere: parity images without the dataset, the run's flip, a failing gate ---


@pytest.fixture(scope="module")
def portable_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny run evaluated with TEST.FLIP whose synthetic dataset was removed."""
    tmp = tmp_path_factory.mktemp("portable")
    cfg = load_cfg(
        opts=[*OPTS, "TEST.FLIP", "True", "DATASETS.NAMES", "[synthetic]"]
        + ["DATASETS.SYNTHETIC.NUM_IDENTITIES", "12", "DATASETS.ROOT", str(tmp / "removed")]
    )
    model = build_model(cfg, num_classes=6, load_pretrained_weights=False)
    (tmp / "run").mkdir()
    (tmp / "run" / "config.yaml").write_text(cfg.dump())
    torch.save({"model": model.state_dict()}, tmp / "run" / "best.pth")
    return tmp / "run"


def export(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """tools/export.py run in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["export.py", *args])
    code = export_tool.cli()
    out, err = capsys.readouterr()
    return code, out, err


def onnx_session(path: Path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path))


# Three random uint8 images at the runs' input size, (N, 3, H, W).
PIXELS = np.random.default_rng(0).integers(0, 256, (3, 3, 32, 16), dtype=np.uint8)


def mirror_gap(path: Path) -> float:
    """Largest feature change when the images are mirrored: 0 when flip averaging is inside."""
    session = onnx_session(path)
    plain = session.run(["features"], {"images": PIXELS})[0]
    mirrored = session.run(["features"], {"images": np.ascontiguousarray(PIXELS[..., ::-1])})[0]
    return float(np.abs(plain - mirrored).max())


def graph_flip(path: Path) -> bool:
    """The ``flip`` that the graph's metadata records."""
    return json.loads(onnx_session(path).get_modelmeta().custom_metadata_map["flip"])


def test_drawn_pedestrians_are_deterministic_identities() -> None:
    first, again = draw_pedestrians(3, 2, seed=1), draw_pedestrians(3, 2, seed=1)
    assert [pid for pid, _ in first] == [1, 1, 2, 2, 3, 3]
    for (_, a), (_, b) in zip(first, again, strict=True):
        assert a.mode == "RGB" and a.size == (IMAGE_WIDTH, IMAGE_HEIGHT)
        assert np.array_equal(np.asarray(a), np.asarray(b))
    other = draw_pedestrians(3, 2, seed=2)
    assert not np.array_equal(np.asarray(first[0][1]), np.asarray(other[0][1]))
    with pytest.raises(ReidError, match="images_per_identity=0"):
        draw_pedestrians(3, 0)


@pytest.mark.slow
def test_export_without_the_dataset_checks_on_drawn_pedestrians_with_the_runs_flip(
    portable_run: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    out = tmp_path / "model.onnx"
    code, stdout, stderr = export(
        monkeypatch, capsys, "--run", str(portable_run), "--out", str(out)
    )
    assert code == 0, stderr[-2000:]
    removed = load_cfg(portable_run / "config.yaml").DATASETS.ROOT
    lines = stdout.splitlines()
    assert lines[0] == (
        f"parity images: 64 generated synthetic pedestrians (the dataset synthetic is not at "
        f"{removed})"
    )
    assert lines[1].startswith("parity on 16 queries x 48 gallery images")
    assert not Path(removed).exists()  # nothing drawn or written where the dataset was
    # the run's TEST.FLIP: flip averaging inside, so a mirrored image has the same features
    assert graph_flip(out) is True and mirror_gap(out) < 1e-5


@pytest.mark.slow
def test_export_checks_on_a_folder_of_images_and_honours_no_flip(
    portable_run: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    folder = tmp_path / "my crops"
    names = ["a/0.jpg", "a/b/é 1.png", "z.JPG", "c/2.bmp", "c/3.jpeg"]
    for i, (_, image) in enumerate(draw_pedestrians(5, 2, seed=3)):
        path = folder / f"{i}{names[i % 5]}"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.resize((40 + i, 90 + 3 * i)).save(path)
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "model.onnx"
    args = ["--run", str(portable_run), "--out", str(out), "--no-flip"]
    code, stdout, stderr = export(monkeypatch, capsys, *args, "--parity-images", str(folder))
    assert code == 0, stderr[-2000:]
    lines = stdout.splitlines()
    assert lines[0] == f"parity images: 10 from --parity-images {folder}"
    # every fourth of the sorted paths is a query: the 1st, 5th and 9th of 10
    assert lines[1].startswith("parity on 3 queries x 7 gallery images")
    assert graph_flip(out) is False and mirror_gap(out) > 1e-3


@pytest.mark.slow
def test_a_graph_with_other_features_fails_the_gate_and_writes_nothing(
    portable_run: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    real_export = export_tool.export_onnx
    written = []

    def export_perturbed(module, metadata, path: Path, opset) -> None:
        """Exports a copy whose first convolution is off by a little noise."""
        changed = copy.deepcopy(module)
        weight = next(changed.parameters())
        noise = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            weight.add_(0.05 * noise)
        real_export(changed, metadata, path, opset)
        written.append(path.is_file())

    monkeypatch.setattr(export_tool, "export_onnx", export_perturbed)
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "model.onnx"
    code, stdout, stderr = export(
        monkeypatch, capsys, "--run", str(portable_run), "--out", str(out)
    )
    assert written == [True]  # a graph was written, and the gate had to remove it
    assert code == 2
    assert stderr.strip().splitlines()[-1].startswith("error: parity check failed, nothing written")
    assert "parity on 16 queries x 48 gallery images" in stdout
    assert list(folder.iterdir()) == []  # nothing at --out, and no temporary file


def test_bad_parity_image_folders_are_one_line(
    portable_run: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    empty, few, a_file = tmp_path / "empty", tmp_path / "few", tmp_path / "one.jpg"
    (empty / "sub").mkdir(parents=True)
    few.mkdir()
    for i, (_, image) in enumerate(draw_pedestrians(1, 3)):
        image.save(few / f"{i}.jpg")
    Image.new("RGB", (16, 32)).save(a_file)
    out = tmp_path / "model.onnx"
    missing = tmp_path / "missing"
    for folder, message in [
        (missing, f"--parity-images {missing}: not found; expected a folder of images"),
        (a_file, f"--parity-images {a_file}: is not a folder; expected a folder of images"),
        (empty, f"--parity-images: no images (.bmp, .jpeg, .jpg, .png) in {empty}"),
        (few, f"--parity-images {few}: 3 image(s), expected at least 4"),
    ]:
        args = ["--run", str(portable_run), "--out", str(out), "--parity-images", str(folder)]
        code, _, stderr = export(monkeypatch, capsys, *args)
        assert code == 2
        assert stderr.strip().splitlines()[-1].startswith(f"error: {message}"), stderr[-500:]
        assert not out.exists()
