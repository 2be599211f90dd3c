"""A sweep submitted to a real (single-node) SLURM cluster through submitit.

Runs where a cluster answers (CI starts one with scripts/start_test_slurm.sh and exports
SLURM_CONF); skipped elsewhere."""

import json
import shutil
import subprocess

import pytest

from implicit_sparsity.study.spec import load_spec
from implicit_sparsity.study.sweep import run_sweep

from test_study import SPEC


def slurm_is_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                               timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return state.returncode == 0 and any(s in state.stdout for s in ("idle", "mixed"))


@pytest.mark.skipif(not slurm_is_up(), reason="no SLURM cluster answers here")
def test_sweep_through_slurm(tmp_path, fashion_dir):
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(SPEC.format(data=fashion_dir))
    spec = load_spec(spec_path)
    out = tmp_path / "sweep"
    keys = run_sweep(spec, out, quick=True, executor="slurm",
                     slurm={"cpus_per_task": 1, "timeout_min": 10, "runs_per_job": 1})
    assert len(keys) == 2
    for key in keys:
        evaluation = json.loads((out / "runs" / key / "evaluation.json").read_text())
        assert evaluation["changed_predictions"] == 0 and 0 <= evaluation["test_error"] <= 100
    assert any((out / "slurm").iterdir())  # submitit's job folders and logs
    # a second submission finds everything done and submits nothing
    assert run_sweep(spec, out, quick=True, executor="slurm") == keys


def test_the_test_cluster_script_never_touches_daemons_it_did_not_start(tmp_path):
    """A SLURM daemon that is not ours (a real cluster on the host; here a stand-in process
    named slurmctld) makes start_test_slurm.sh give up without killing or starting anything."""
    import os
    import signal
    import time
    from pathlib import Path

    stand_in = tmp_path / "slurmctld"
    stand_in.symlink_to(shutil.which("sleep"))
    other = subprocess.Popen([str(stand_in), "60"])
    try:
        script = Path(__file__).parents[1] / "scripts" / "start_test_slurm.sh"
        done = subprocess.run(["bash", str(script), str(tmp_path / "state")],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and "did not start" in done.stderr
        time.sleep(0.2)
        assert other.poll() is None  # still running
        assert (tmp_path / "state" / "pids").read_text() == ""
        assert not (tmp_path / "state" / "slurm.conf").exists()
    finally:
        os.kill(other.pid, signal.SIGTERM)
        other.wait()
