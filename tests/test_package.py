"""The package as a user installs it: a wheel built from the sources, installed into a fresh
virtual environment outside the checkout, run through its one console script."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "configs", "tf_explainer")
# A tiny job from the shipped demo preset: few 32x32 images, one explainer epoch.
TINY_DEMO = ["--num_train=64", "--num_test=32", "--num_categories=2", "--input_size=32",
             "--batch_size=16", "--performer_epochs=1", "--epochs=1", "--comparison_epochs=1",
             "--decay_epochs=1"]


def _run(command, cwd, timeout=900, returncode=0):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == returncode, result.stdout + result.stderr
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel built from a copy of the sources (so the checkout gets no build/ folder)."""
    work = tmp_path_factory.mktemp("build")
    for name in SOURCES:
        source, copy = os.path.join(ROOT, name), work / "src" / name
        if os.path.isdir(source):
            shutil.copytree(source, copy, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            os.makedirs(copy.parent, exist_ok=True)
            shutil.copy(source, copy)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "--no-index", "-w", str(work / "dist"), str(work / "src")], cwd=work)
    (path,) = (work / "dist").glob("tf_explainer-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """bin/ of a fresh venv with the wheel installed; its dependencies are this environment's
    (a .pth file points at them), nothing of the checkout is importable."""
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=venv)
    python = str(venv / "bin" / "python")
    site_packages = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         cwd=venv).strip()
    with open(os.path.join(site_packages, "dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
          "--no-index", str(wheel)], cwd=venv)
    return venv / "bin"


def test_wheel_ships_the_library_the_presets_and_one_console_script(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(archive.read(n).decode() for n in names
                            if n.endswith(".dist-info/entry_points.txt"))
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == \
        {"tf_explainer"}  # no top-level `tools` (or anything else)
    shipped = {os.path.basename(n) for n in names if n.startswith("tf_explainer/cli/presets/")}
    assert shipped == {n for n in os.listdir(os.path.join(ROOT, "configs")) if n.endswith(".flags")}
    assert "tf-explainer = tf_explainer.cli:main" in entry_points and "tfx" not in entry_points


@pytest.mark.slow
def test_installed_console_script_runs_the_demo_from_a_shipped_preset(installed, tmp_path):
    assert not os.path.exists(tmp_path / "configs")
    python = str(installed / "python")
    location = _run([python, "-c", "import tf_explainer, importlib.util; print(tf_explainer.__file__);"
                     "print(importlib.util.find_spec('tools'))"], cwd=tmp_path)
    assert not location.startswith(ROOT) and location.split()[-1] == "None"
    overview = _run([str(installed / "tf-explainer"), "--help"], cwd=tmp_path)
    for command in ("train-performer", "train-explainer", "evaluate", "report", "export", "serve",
                    "explain", "demo", "cache-features", "convert-cub", "convert-pascal-part"):
        assert f"\n  {command} " in overview, command
    assert "demo" in overview.split("--preset=NAME")[1]
    help_text = _run([str(installed / "tf-explainer"), "demo", "--help"], cwd=tmp_path,
                     returncode=1)  # absl's --help exits with 1
    assert "--run_dir" in help_text and "--learning_rate" in help_text

    output = _run([str(installed / "tf-explainer"), "demo", "--preset=demo", *TINY_DEMO,
                   "--run_dir=run"], cwd=tmp_path)
    summary = json.load(open(tmp_path / "run" / "summary.json"))
    assert 0 <= summary["performer_accuracy"] <= 1 and 0 < summary["p"] < 1
    assert (tmp_path / "run" / "export" / "explainer" / "1" / "saved_model.pb").exists()
    flags_text = open(tmp_path / "run" / "explainer" / "flags.txt").read()
    assert "--learning_rate=0.0001" in flags_text and "--num_train=64" in flags_text
    assert "Demo finished" in output and "[9/9] export done" in output
    for noise in ("E0000", "cuInit", "absl::InitializeLog", "cudart_stub", "Traceback"):
        assert noise not in output, noise


def test_unknown_preset_names_the_shipped_ones(installed, tmp_path):
    result = subprocess.run([str(installed / "tf-explainer"), "evaluate", "--preset=nope"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "No preset 'nope'" in result.stderr
    assert "demo" in result.stderr and "lsp" in result.stderr
