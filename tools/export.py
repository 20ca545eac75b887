"""`python -m tools.export` = `tf-explainer export` (tf_explainer/cli/export.py); --help lists its flags."""

import sys

from tf_explainer.cli import run_command

if __name__ == "__main__":
    run_command("export", sys.argv)
