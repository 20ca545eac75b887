"""`python -m tools.convert_pascal_part` = `tf-explainer convert-pascal-part` (tf_explainer/cli/convert_pascal_part.py); --help lists its flags."""

import sys

from tf_explainer.cli import run_command

if __name__ == "__main__":
    run_command("convert-pascal-part", sys.argv)
