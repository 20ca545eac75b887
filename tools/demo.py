"""`python -m tools.demo` = `tf-explainer demo` (tf_explainer/cli/demo.py); --help lists its flags."""

import sys

from tf_explainer.cli import run_command

if __name__ == "__main__":
    run_command("demo", sys.argv)
