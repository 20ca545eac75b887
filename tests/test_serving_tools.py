"""tools/serve.py and tools/explain.py run as a user runs them, and the explanation they print."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import requests
from PIL import Image

from tf_explainer.build import build_explainer
from tf_explainer.export import export_explainer, read_filter_metadata
from tf_explainer.serving.explanation import explain, format_explanation, overlay

sys.path.insert(0, os.path.dirname(__file__))
from tiny import tiny_performer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
CLASS_NAMES = ["heron", "gull", "crow"]
MAX_BODY = 1_000_000


def _tool(name, *args):
    return subprocess.run([sys.executable, "-m", f"tools.{name}", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """tools/serve.py with a models.config over one export -> (REST url, gRPC target, base)."""
    base = tmp_path_factory.mktemp("export")
    performer = tiny_performer(class_names=CLASS_NAMES)
    export_explainer(build_explainer(performer), performer, str(base), "birds")
    config = base / "models.config"
    config.write_text('model_config_list { config { name: "birds" base_path: "%s" '
                      'model_platform: "tensorflow" } }' % (base / "birds"))
    log = base / "serve.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "tools.serve", f"--model_config_file={config}",
             "--rest_port=0", "--grpc_port=0", f"--max_request_body_bytes={MAX_BODY}",
             f"--batching_parameters_file={ROOT}/serving/batching_parameters.txt"],
            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=stderr, text=True)
    addresses = {}
    for line in process.stdout:
        kind, _, address = line.strip().partition(" ")
        addresses[kind] = address
        if len(addresses) == 2:
            break
    assert set(addresses) == {"REST", "gRPC"}, log.read_text()
    yield addresses["REST"], addresses["gRPC"], str(base / "birds")
    process.terminate()
    assert process.wait(timeout=60) == 0
    assert "DEVELOPMENT STAND-IN for TensorFlow Serving" in log.read_text()


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "bird.jpg"
    image = np.random.default_rng(0).integers(0, 256, (48, 60, 3), dtype=np.uint8)
    Image.fromarray(image).save(path, quality=95)
    return str(path)


def _parts(stdout):
    """(filter, category, contribution, y, x, colour) rows of the printed table."""
    pattern = r"^\s+(\d+)\s+(\S+)\s+(\S+)\s+\(([-\d.]+), ([-\d.]+)\)\s+\S+\s+(#[0-9a-f]{6})$"
    return re.findall(pattern, stdout, flags=re.MULTILINE)


def test_explain_over_grpc_names_parts_and_draws_them(served, photo, tmp_path):
    _, grpc_target, base = served
    png = tmp_path / "parts.png"
    result = _tool("explain", f"--server={grpc_target}", "--protocol=grpc", "--model_name=birds",
                   f"--image={photo}", "--top=3", f"--assets_dir={base}", f"--overlay_png={png}")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^class: (heron|gull|crow) \(index \d\), probability 0\.\d{3}",
                     result.stdout, flags=re.MULTILINE)
    parts = _parts(result.stdout)
    assert len(parts) == 3
    categories = [f["category"] for f in read_filter_metadata(os.path.join(base, "1"))["filters"]]
    for filter_index, category, contribution, y, x, _ in parts:
        assert category == categories[int(filter_index)]
        assert 0 <= float(y) <= 48 and 0 <= float(x) <= 60
    contributions = [float(part[2]) for part in parts]
    assert contributions == sorted(contributions, reverse=True)
    drawn = np.asarray(Image.open(png))
    assert drawn.shape == (48, 60, 3)
    assert not np.array_equal(drawn, np.asarray(Image.open(photo)))


def test_explain_over_rest_agrees_with_grpc(served, photo):
    rest_url, grpc_target, _ = served
    outputs = [_tool("explain", f"--server={server}", f"--protocol={protocol}",
                     "--model_name=birds", f"--image={photo}")
               for server, protocol in ((rest_url, "rest"), (grpc_target, "grpc"))]
    for result in outputs:
        assert result.returncode == 0, result.stderr
    assert outputs[0].stdout == outputs[1].stdout
    parts = _parts(outputs[0].stdout)
    assert len(parts) == 5 and {part[1] for part in parts} == {"?"}  # no assets: no names


def test_explain_reports_bad_input_and_refusals_clearly(served, photo, tmp_path):
    rest_url, _, _ = served
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("not an image")
    result = _tool("explain", f"--server={rest_url}", "--model_name=birds",
                   f"--image={not_an_image}")
    assert result.returncode != 0 and "not a readable JPEG/PNG image" in result.stderr
    result = _tool("explain", f"--server={rest_url}", "--model_name=fish", f"--image={photo}")
    assert result.returncode != 0
    assert "refused the request: NOT_FOUND (HTTP 404): Servable not found" in result.stderr


def test_serve_refuses_bodies_over_its_limit(served):
    rest_url, _, _ = served
    response = requests.post(f"{rest_url}/v1/models/birds:predict", data=b"x" * (MAX_BODY + 1),
                             timeout=60)
    assert response.status_code == 413
    assert f"over the limit of {MAX_BODY} bytes" in response.json()["error"]


def test_serve_needs_exactly_one_model_source():
    result = _tool("serve", "--rest_port=0", "--grpc_port=0")
    assert result.returncode != 0 and "exactly one of --model_base_path" in result.stderr


def _synthetic_outputs():
    """One 32 x 32 image, three filters on a 4 x 4 grid, each peaking in its own cell."""
    part_maps = np.zeros((1, 4, 4, 3), np.float32)
    cells = [(0, 0), (1, 3), (3, 1)]
    for f, (row, col) in enumerate(cells):
        part_maps[0, row, col, f] = [1.0, 3.0, 2.0][f]
    return {"classes": np.array([1]), "probabilities": np.array([[0.2, 0.7, 0.1]], np.float32),
            "p": np.array([0.6], np.float32), "part_maps": part_maps,
            "part_scores": part_maps.max(axis=(1, 2)),
            "part_contributions": np.array([[0.1, 0.5, 0.3]], np.float32),
            "part_peaks": np.array([[[4.0 + 8 * r, 4.0 + 8 * c] for r, c in cells]], np.float32)}


def test_explanation_orders_by_contribution_and_marks_peaks_in_the_listed_colour():
    outputs = _synthetic_outputs()
    explanation = explain(outputs, top=2, class_names=["a", "b", "c"],
                          filter_categories=["a", "b", "b"])
    assert (explanation.class_name, explanation.probability) == ("b", pytest.approx(0.7))
    assert [part.filter for part in explanation.parts] == [1, 2]
    assert [part.category for part in explanation.parts] == ["b", "b"]
    text = format_explanation(explanation)
    assert "class: b (index 1), probability 0.700; p = 0.600" in text
    image = overlay(np.full((32, 32, 3), 128, np.uint8), outputs, explanation)
    for part in explanation.parts:
        y, x = (int(v) for v in part.peak)
        assert "#%02x%02x%02x" % tuple(image[y, x]) == part.colour
    assert image[28, 28].tolist() == [128, 128, 128]  # far from every shown part: unchanged
    with pytest.raises(ValueError, match="top must be at least 1"):
        explain(outputs, top=0)
