"""`python -m tools.report` = `tf-explainer report` (tf_explainer/cli/report.py); --help lists its flags."""

import sys

from tf_explainer.cli import run_command

if __name__ == "__main__":
    run_command("report", sys.argv)
