"""Export to ONNX with its parity check, ONNX Runtime features, and gallery search."""

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
from reid.errors import ReidError
from reid.models import build_model
from reid.search import find_images, index_gallery

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
