"""Every preset in configs/ parses with the tools' flags and names valid choices."""

import glob
import os

import pytest
from absl import flags

import tools.demo  # noqa: F401  (defines --run_dir on top of tools.common)
from tools.common import FLAGS

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
