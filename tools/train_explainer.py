"""`python -m tools.train_explainer` = `tf-explainer train-explainer` (tf_explainer/cli/train_explainer.py); --help lists its flags."""

import sys

from tf_explainer.cli import run_command

if __name__ == "__main__":
    run_command("train-explainer", sys.argv)
