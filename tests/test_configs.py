"""Every preset in configs/ parses with the commands' flags and names valid choices; the flags'
defaults are the demo preset's tuned values; the presets ship inside the package."""

import glob
import os

import pytest
from absl import flags

import tf_explainer.cli.demo  # noqa: F401  (defines --run_dir on top of cli.common)
from tf_explainer.cli import expand_presets, preset_names, presets_dir
from tf_explainer.cli.common import FLAGS

PRESETS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.flags")))


def test_presets_exist_for_every_paper_network_and_dataset():
    names = {os.path.basename(p) for p in PRESETS}
    for net in ("alexnet", "vgg_m", "vgg_s", "vgg16"):
        for dataset in ("cub", "pascal_part"):
            assert f"{net}_{dataset}.flags" in names
    assert "demo.flags" in names and "lsp.flags" in names


@pytest.mark.parametrize("path", PRESETS, ids=os.path.basename)
def test_preset_parses(path):
    FLAGS.unparse_flags()
    try:
        FLAGS(["tool", f"--flagfile={path}"])
        assert FLAGS.filter_loss_weight >= 0 and FLAGS.eta >= 0
        if FLAGS.dataset == "manifest":
            assert FLAGS.data_dir
    finally:
        FLAGS.unparse_flags()


def test_unknown_flag_in_a_preset_is_rejected(tmp_path):
    bad = tmp_path / "bad.flags"
    bad.write_text("--no_such_flag=1\n")
    FLAGS.unparse_flags()
    with pytest.raises(flags.Error):
        FLAGS(["tool", f"--flagfile={bad}"])
    FLAGS.unparse_flags()


def test_flag_defaults_are_the_demo_presets_tuned_values():
    """A command run without a preset trains as the demo does (e.g. lr 1e-4, not 1e-3)."""
    FLAGS.unparse_flags()
    try:
        FLAGS(["tool"])
        defaults = {name: FLAGS[name].value for name in FLAGS}
        FLAGS.unparse_flags()
        FLAGS(["tool", f"--flagfile={os.path.join(presets_dir(), 'demo.flags')}"])
        differing = {name: (defaults[name], FLAGS[name].value) for name in FLAGS
                     if FLAGS[name].present and FLAGS[name].value != defaults[name]}
        assert not differing
        assert FLAGS.learning_rate == 1e-4
    finally:
        FLAGS.unparse_flags()


def test_shipped_presets_are_the_repository_configs():
    assert preset_names() == sorted(os.path.basename(p)[:-len(".flags")] for p in PRESETS)
    assert open(os.path.join(presets_dir(), "lsp.flags")).read() == open(
        os.path.join(os.path.dirname(PRESETS[0]), "lsp.flags")).read()


def test_preset_flag_expands_in_place_so_later_flags_override_it():
    argv = expand_presets(["tool", "--epochs=3", "--preset=demo", "--epochs=5"])
    assert argv == ["tool", "--epochs=3", f"--flagfile={os.path.join(presets_dir(), 'demo.flags')}",
                    "--epochs=5"]
    assert expand_presets(["tool", "--preset", "lsp"])[1].endswith("lsp.flags")
    FLAGS.unparse_flags()
    try:
        FLAGS(argv)
        assert FLAGS.epochs == 5 and FLAGS["eta"].present and FLAGS.eta == 0.1  # eta from the preset
    finally:
        FLAGS.unparse_flags()
