"""A 2-worker training job that loses a worker mid-epoch (SIGKILL) and is restarted with the same
command resumes from its last checkpoint and ends with the same files and weights as a run that
was never interrupted.

MultiWorkerMirroredStrategy cannot go on with one worker (every step all-reduces with the dead
one), so after the kill the survivor is stopped too, as a cluster manager would; the restarted
pair reads the chief's per-epoch checkpoint from the model directory they share.
"""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from tests.multi_worker_job import BATCHES, worker_environment
from tests.test_strategy import ROOT, _assert_weights_equal, _free_ports, _initial_weights
from tf_explainer import training

EPOCHS = 3
WAIT_SECONDS = 150  # for a job to finish or reach its stall point (a shared 2-core machine is slow)
SURVIVOR_SECONDS = 10  # for the survivor to fail on its own before it is killed


def _checkpoint_files(epoch):
    return ["checkpoint", f"ckpt-{epoch}.data-00000-of-00001", f"ckpt-{epoch}.index"]


class Job:
    """One 2-worker job of tests/multi_worker_job.py: both workers share `model_dir` (each worker
    reads the chief's checkpoint when the job resumes) and run on fixed addresses, so a restart
    is the same command in the same cluster."""

    def __init__(self, tmp_path, name, stall_marker=None):
        self.tmp_path, self.name = tmp_path, name
        self.model_dir = tmp_path / f"{name}_model"
        self.backup = self.model_dir / training.BACKUP_DIR
        self.stall_marker = stall_marker
        self.workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
        self.starts = 0

    def output(self, index):
        return str(self.tmp_path / f"{self.name}_out_{index}")

    def command(self, index):
        return [sys.executable, "-m", "tests.multi_worker_job", str(self.tmp_path / "initial.npz"),
                str(self.model_dir), self.output(index), str(EPOCHS)] + (
                    [str(self.stall_marker)] if self.stall_marker else [])

    def start(self):
        """Starts both workers; returns (processes, log paths, temporary folders)."""
        self.starts += 1
        processes, logs, temporary = [], [], []
        for index in range(2):
            temporary.append(self.tmp_path / f"{self.name}_run{self.starts}_tmp_{index}")
            temporary[-1].mkdir()
            logs.append(self.tmp_path / f"{self.name}_run{self.starts}_{index}.log")
            with open(logs[-1], "w") as log:
                env = worker_environment(self.workers, index, temporary[-1])
                processes.append(subprocess.Popen(self.command(index), cwd=ROOT, env=env,
                                                  stdout=log, stderr=subprocess.STDOUT))
        return processes, logs, temporary


def _log_tails(logs):
    return "\n".join(f"--- {log}:\n{open(log).read()[-3000:]}" for log in logs)


def _kill(processes):
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def _finish(processes, logs, temporary):
    """Waits (bounded) for both workers; checks they succeeded and left their temporary folders
    empty. Returns their logs' text."""
    deadline = time.monotonic() + WAIT_SECONDS
    try:
        for process in processes:
            process.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        raise AssertionError(f"The job did not finish in {WAIT_SECONDS} s.\n{_log_tails(logs)}")
    finally:
        _kill(processes)
    assert [p.returncode for p in processes] == [0, 0], _log_tails(logs)
    assert [os.listdir(folder) for folder in temporary] == [[], []]
    return [open(log).read() for log in logs]


def _wait_for(path, processes, logs):
    """Waits (bounded) until `path` exists while both workers still run."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not os.path.exists(path):
        exited = [p.returncode for p in processes if p.poll() is not None]
        assert not exited, f"A worker exited ({exited}) before {path} appeared.\n{_log_tails(logs)}"
        assert time.monotonic() < deadline, f"No {path} after {WAIT_SECONDS} s.\n{_log_tails(logs)}"
        time.sleep(0.1)


def _saved_weights(job):
    """The weights the job left: the chief's explainer.keras and each worker's in-memory weights."""
    saved = keras.saving.load_model(job.model_dir / training.EXPLAINER_FILE).get_weights()
    outputs = [np.load(job.output(index) + ".npz") for index in range(2)]
    return saved, [[out[name] for name in out.files] for out in outputs]


@pytest.mark.slow
def test_job_killed_mid_epoch_resumes_and_matches_an_uninterrupted_run(tmp_path):
    initial = _initial_weights()
    np.savez(tmp_path / "initial.npz", *initial)

    reference = Job(tmp_path, "reference")
    _finish(*reference.start())

    job = Job(tmp_path, "killed", stall_marker=tmp_path / "stalled.json")
    processes, logs, _ = job.start()
    try:
        _wait_for(job.stall_marker, processes, logs)
        # Mid-epoch 2: epoch 1 is checkpointed, epoch 2 has begun and nothing of it is saved.
        # 2 of its 3 steps have run (in memory only): the chief stalls before the last batch.
        assert json.load(open(job.stall_marker)) == {"epoch": 1, "batch": 2,
                                                      "steps": BATCHES["num_batches"] + 2}
        assert sorted(os.listdir(job.backup)) == _checkpoint_files(1)
        assert not (job.model_dir / training.EXPLAINER_FILE).exists()
        processes[0].send_signal(signal.SIGKILL)  # the chief: it writes the checkpoints
        assert processes[0].wait(timeout=30) == -signal.SIGKILL
        try:  # the survivor cannot train alone: let it fail, or stop it
            processes[1].wait(timeout=SURVIVOR_SECONDS)
        except subprocess.TimeoutExpired:
            pass
    finally:
        _kill(processes)
    assert not os.path.exists(job.output(1) + ".npz"), "the survivor must not finish alone"
    assert sorted(os.listdir(job.backup)) == _checkpoint_files(1)

    outputs = _finish(*job.start())  # the same command, the same cluster
    resumed = f"Resuming from {job.backup / 'ckpt-1'}: 1 of {EPOCHS} epochs done."
    assert all(resumed in output for output in outputs), "\n---\n".join(o[-3000:] for o in outputs)
    start = json.load(open(job.output(0) + ".start.json"))
    assert start == {"first_epoch": 1, "steps": BATCHES["num_batches"]}
    assert json.load(open(reference.output(0) + ".start.json")) == {"first_epoch": 0, "steps": 0}
    # The restarted chief checkpointed epochs 2 and 3 only, then deleted the backup.
    assert json.load(open(job.output(0) + ".backups.json")) == [_checkpoint_files(2),
                                                                 _checkpoint_files(3)]

    assert sorted(os.listdir(job.model_dir)) == sorted(os.listdir(reference.model_dir)) == [
        training.EXPLAINER_FILE, "logs"]
    expected, expected_workers = _saved_weights(reference)
    assert max(np.abs(a - b).max() for a, b in zip(expected, initial)) > 1e-4  # it trained
    actual, actual_workers = _saved_weights(job)
    _assert_weights_equal(expected, actual)
    for weights in expected_workers + actual_workers:
        _assert_weights_equal(expected, weights)
