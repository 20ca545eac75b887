"""`python -m tools.convert_cub` = `tf-explainer convert-cub` (tf_explainer/cli/convert_cub.py); --help lists its flags."""

import sys

from tf_explainer.cli import run_command

if __name__ == "__main__":
    run_command("convert-cub", sys.argv)
