"""`python -m tools.serve` = `tf-explainer serve` (tf_explainer/cli/serve.py); --help lists its flags."""

import sys

from tf_explainer.cli import run_command

if __name__ == "__main__":
    run_command("serve", sys.argv)
