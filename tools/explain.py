"""`python -m tools.explain` = `tf-explainer explain` (tf_explainer/cli/explain.py); --help lists its flags."""

import sys

from tf_explainer.cli import run_command

if __name__ == "__main__":
    run_command("explain", sys.argv)
