"""`python -m tools.evaluate` = `tf-explainer evaluate` (tf_explainer/cli/evaluate.py); --help lists its flags."""

import sys

from tf_explainer.cli import run_command

if __name__ == "__main__":
    run_command("evaluate", sys.argv)
