"""The `tf-explainer` command line: one console script, one command per tool.

  tf-explainer demo --preset=demo                 the end-to-end job (what `make demo` runs)
  tf-explainer train-explainer --preset=demo --performer_dir=runs/p --model_dir=runs/e
  tf-explainer COMMAND --help                     the command's flags and their defaults

This subpackage is the only place in tf_explainer that reads absl flags: its modules turn flags
into plain arguments for the library. In a checkout, `python -m tools.NAME` runs the same
commands (tools/*.py are entry points into this package).
"""

import collections
import ctypes
import glob
import importlib
import logging
import os
import sys
import tempfile
import textwrap

from absl import app, flags

Command = collections.namedtuple("Command", "module summary")
COMMANDS = {
    "train-performer": Command("train_performer", "train a built-in performer"),
    "train-explainer": Command("train_explainer", "train an explainer over a performer, then measure it"),
    "evaluate": Command("evaluate", "measure trained explainers on the test split"),
    "report": Command("report", "write the HTML part report of an explainer"),
    "export": Command("export", "export performer + explainer as a SavedModel for TF Serving"),
    "serve": Command("serve", "development stand-in for TensorFlow Serving (REST and gRPC)"),
    "explain": Command("explain", "ask a served explainer to explain one image"),
    "demo": Command("demo", "performer, explainer, baseline, ablations, report, export, summary"),
    "cache-features": Command("cache_features", "cache the performer's features of the training split"),
    "convert-cub": Command("convert_cub", "convert CUB-200-2011 into a landmark manifest"),
    "convert-pascal-part": Command("convert_pascal_part",
                                   "convert Pascal-Part into a landmark manifest"),
}
PRESET_FLAG = "--preset"


def presets_dir():
    """The folder of the shipped presets (configs/*.flags of the repository, package data here)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets")


def preset_names():
    return sorted(os.path.basename(path)[:-len(".flags")]
                  for path in glob.glob(os.path.join(presets_dir(), "*.flags")))


def preset_path(name):
    """The flagfile of the shipped preset `name`; UsageError naming the presets for others."""
    path = os.path.join(presets_dir(), f"{name}.flags")
    if not os.path.isfile(path):
        raise app.UsageError(f"No preset {name!r}; shipped presets: {', '.join(preset_names())}.")
    return path


def expand_presets(argv):
    """argv with every --preset=NAME (or --preset NAME) replaced by --flagfile=<its file>, in
    place, so flags after it override it as they do a flagfile's."""
    expanded, args = [], iter(argv)
    for arg in args:
        if arg == PRESET_FLAG:
            arg = f"{PRESET_FLAG}={next(args, '')}"
        if arg.startswith(PRESET_FLAG + "="):
            arg = "--flagfile=" + preset_path(arg.split("=", 1)[1])
        expanded.append(arg)
    return expanded


def usage():
    lines = ["usage: tf-explainer COMMAND [--preset=NAME | --flagfile=FILE] [--flag=value ...]", "",
             "Explainer networks that paraphrase a frozen CNN's conv-layer as object-part filters.",
             "", "commands:"]
    lines += [f"  {name:<21} {command.summary}" for name, command in COMMANDS.items()]
    lines += ["", "`tf-explainer COMMAND --help` lists the command's flags with their defaults.",
              *textwrap.wrap(f"--preset=NAME reads a shipped preset: {', '.join(preset_names())} "
                             f"(files in {presets_dir()}).", 96),
              "Each training run writes <model_dir>/flags.txt; --flagfile=<that file> reruns it."]
    return "\n".join(lines)


def _without_cuda_driver():
    """Whether this machine lacks the NVIDIA driver (libcuda), which TensorFlow's GPU build
    otherwise fails to initialise with an E-level "failed call to cuInit" line."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return True
    return False


# Lines TensorFlow's shared libraries print while they load, before TensorFlow sets up its logging
# (so TF_CPP_MIN_LOG_LEVEL does not reach them); on a machine without CUDA they say only that.
LOAD_TIME_NOTICES = ("WARNING: All log messages before absl::InitializeLog() is called are written "
                     "to STDERR", "cudart_stub.cc:31] Could not find cuda drivers on your machine")


def _import_quietly(module_name):
    """Imports `module_name` (and so TensorFlow) with file descriptor 2 captured, then writes back
    every captured line except the LOAD_TIME_NOTICES."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            return importlib.import_module(module_name)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not line.startswith(LOAD_TIME_NOTICES[0]) and LOAD_TIME_NOTICES[1] not in line:
                    sys.stderr.write(line)
            sys.stderr.flush()


def run_command(command, argv):
    """Runs `command` (a COMMANDS key) with absl on `argv` (argv[0]: the program name)."""
    try:
        argv = expand_presets(argv)
    except app.UsageError as error:
        sys.exit(f"{argv[0]}: {error}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's warnings and errors only
    if "TF_ENABLED_DEVICE_TYPES" not in os.environ and _without_cuda_driver():
        # No GPU can be used: keep TensorFlow from initialising CUDA (TPU stays available).
        os.environ["TF_ENABLED_DEVICE_TYPES"] = "CPU,XLA_CPU,TPU"
    module = _import_quietly(f"{__name__}.{COMMANDS[command].module}")
    # TensorFlow's own INFO lines (each SavedModel's "Assets written to", signature renames) are
    # for its developers; its warnings and errors still show.
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    # --help lists the key flags of the main program (sys.argv[0]): make them the command's.
    for flag in flags.FLAGS.get_key_flags_for_module(module.__name__):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    sys.modules["__main__"].__doc__ = module.__doc__  # what absl prints above the flags
    app.run(module.main, argv=argv)


def main(argv=None):
    """The console script: tf-explainer COMMAND [flags]."""
    argv = sys.argv if argv is None else argv
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(usage())
        return
    if argv[1] not in COMMANDS:
        sys.exit(f"tf-explainer: unknown command {argv[1]!r}\n\n{usage()}")
    run_command(argv[1], [f"{os.path.basename(argv[0])} {argv[1]}", *argv[2:]])
