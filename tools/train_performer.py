"""`python -m tools.train_performer` = `tf-explainer train-performer` (tf_explainer/cli/train_performer.py); --help lists its flags."""

import sys

from tf_explainer.cli import run_command

if __name__ == "__main__":
    run_command("train-performer", sys.argv)
