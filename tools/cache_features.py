"""`python -m tools.cache_features` = `tf-explainer cache-features` (tf_explainer/cli/cache_features.py); --help lists its flags."""

import sys

from tf_explainer.cli import run_command

if __name__ == "__main__":
    run_command("cache-features", sys.argv)
