"""The README's commands as written: every `tf-explainer` command line names a real command and
flags that command accepts (parsed by absl, presets included); the short ones run."""

import collections
import json
import os
import re
import shlex
import subprocess
import sys

from tf_explainer.cli import COMMANDS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Parses each argument list with its command's flags; commands whose modules define the same flag
# names (e.g. serve and export: --model_name) each get their own process.
PARSE = """
import importlib, json, sys
from absl import flags
from tf_explainer.cli import COMMANDS, expand_presets
command, argvs = sys.argv[1], json.loads(sys.argv[2])
importlib.import_module("tf_explainer.cli." + COMMANDS[command].module)
for argv in argvs:
    flags.FLAGS.unparse_flags()
    flags.FLAGS(expand_presets(["tf-explainer", *argv]))
print("parsed", len(argvs))
"""


def _code_lines():
    """The README's code-block lines, continuation lines joined and comments dropped."""
    text = open(os.path.join(ROOT, "README.md")).read()
    lines = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        lines += [re.sub(r"\s+#.*$", "", line).strip()
                  for line in block.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line]


def _env():
    return {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}


def test_every_tf_explainer_command_in_the_readme_parses():
    by_command = collections.defaultdict(list)
    for line in _code_lines():
        if line.startswith("tf-explainer "):
            _, command, *argv = shlex.split(line)
            if command == "--help":
                continue
            assert command in COMMANDS, line
            if not any(arg.startswith("--flagfile=runs/") for arg in argv):  # a run writes it
                by_command[command].append(argv)
    assert {"train-explainer", "evaluate", "report", "export", "serve", "explain",
            "demo"} <= set(by_command)
    assert any("--keras_model=my_classifier.keras" in argv for argv in by_command["train-explainer"])
    for command, argvs in by_command.items():
        result = subprocess.run([sys.executable, "-c", PARSE, command, json.dumps(argvs)], cwd=ROOT,
                                env=_env(), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0 and f"parsed {len(argvs)}" in result.stdout, \
            (command, result.stderr[-2000:])


def test_serving_example_uses_the_ports_it_queries_and_an_image_it_makes(tmp_path):
    lines = _code_lines()
    serve = next(line for line in lines if line.startswith("tf-explainer serve "))
    explain = next(line for line in lines if line.startswith("tf-explainer explain "))
    assert "--rest_port=8501" in serve and "--server=http://127.0.0.1:8501" in explain
    make_image = next(line for line in lines if line.startswith("python -c"))
    image = re.search(r"--image=(\S+)", explain).group(1)
    assert image in make_image
    python, *args = shlex.split(make_image)  # "python": the environment's interpreter
    result = subprocess.run([sys.executable, *args], cwd=tmp_path, env=_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    from PIL import Image
    assert Image.open(tmp_path / image).size == (128, 128)


def test_overview_help_runs():
    line = next(line for line in _code_lines() if line == "tf-explainer --help")
    result = subprocess.run([sys.executable, "-c", "from tf_explainer.cli import main; main()",
                             *shlex.split(line)[1:]], cwd=ROOT, env=_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "train-explainer" in result.stdout
