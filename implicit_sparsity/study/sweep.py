"""Run every run of an experiment spec, on this machine, skipping what is already done.

    OUT/spec.yaml                  the spec as it was run (and whether --quick)
    OUT/index.json                 run key -> labels, seed, config
    OUT/runs/<key>/                a run folder (see io.run_dir) plus evaluation.json

A run is trained (or resumed from its checkpoint), then evaluated: sparsity by |gamma| and
by activation over its training corpus, % of conv parameters freed, and its dead filters
removed with the test-set proof (the paper's "Pruned Test Err."). Killing a sweep and
starting it again loses nothing: finished runs are skipped, interrupted ones resume.

The local executor runs `workers` runs at a time in separate processes, each with
cores / workers threads, so that they do not oversubscribe the machine. The slurm executor
submits the runs to a SLURM cluster through submitit, as a job array with `runs_per_job`
runs packed into each job (many short runs cost fewer scheduler slots), and waits for them.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from implicit_sparsity.errors import (ConfigError, DivergedError, PackingError, RunStateError,
                                      Terminated)
from implicit_sparsity.io import FolderLock, atomic_write_text
from implicit_sparsity.io.run_dir import diverged, is_finished, read_metrics
from implicit_sparsity.prune.surgery import require_torch_pruning
from implicit_sparsity.study.evaluation import evaluate_trained_run
from implicit_sparsity.study.spec import ExperimentSpec, PlannedRun
from implicit_sparsity.train import TrainConfig, train
from implicit_sparsity.train.packed import optimizer_identity, pack_key, packable, train_packed

EVALUATION = "evaluation.json"


def evaluate_run(run_dir: Path, data_dir: str | None = None) -> dict:
    """The figures the paper's tables report for one finished run."""

    result = evaluate_trained_run(run_dir, data_dir)
    report, pruned = result.report, result.pruned
    metrics = read_metrics(run_dir)
    final = metrics[-1]
    evaluation = {
        "train_loss": final["train_loss"], "test_loss": final["test_loss"],
        "test_error": final["test_error"],
        "test_error_top5": final.get("test_error_top5"),  # runs of earlier versions: none
        "sparsity_gamma": result.percent("gamma"),
        "sparsity_activation": result.percent("activation"),
        "sparsity_dormant": result.percent("dormant"),  # ReDo, tau = defaults.DORMANCY_TAU
        "params_pruned": report.percent_params_pruned(result.criterion),
        "pruned_test_error": pruned.equivalence.error_after,
        "pruned_test_error_top5": pruned.equivalence.error_top5_after,
        "changed_predictions": pruned.equivalence.changed_predictions,
        # ReDo recycling while training (train.recycle): units recycled over the run
        "units_recycled": (sum(m.get("recycled", 0) for m in metrics)
                           if any("recycled" in m for m in metrics) else None),
        # harvesting while training (train.harvest): filters removed over the run (counted
        # as dead, at the original widths, in every figure above)
        "filters_harvested": (sum(m["harvest"]["total_removed"] for m in metrics
                                  if "harvest" in m)
                              if any("harvest" in m for m in metrics) else None),
        "layers": {l.name: {"features": l.features,
                            "sparsity_gamma": l.percent(l.inactive_gamma),
                            "sparsity_activation": l.percent(l.inactive_activation),
                            "sparsity_dormant": l.percent(l.inactive_dormant),
                            "universality_histogram": l.universality_histogram()}
                   for l in report.layers},
    }
    atomic_write_text(Path(run_dir) / EVALUATION, json.dumps(evaluation, indent=1))
    return evaluation


def execute_runs(jobs: list[tuple]) -> list[str]:
    """Several runs, one after the other: the body of one SLURM job."""
    return [execute_run(*job) for job in jobs]


def execute_packed(jobs: list[tuple]) -> list[str]:
    """Several compatible runs trained as one packed model, then each evaluated."""

    torch.set_num_threads(jobs[0][2])
    fresh = [job for job in jobs if not is_finished(Path(job[1]))]
    if len(fresh) > 1:
        try:
            train_packed([TrainConfig.from_dict(job[0]) for job in fresh],
                         [job[1] for job in fresh], verbose=False)
        except PackingError:
            pass  # e.g. killed between two runs' checkpoints: each resumes on its own below
        except DivergedError:
            pass  # the others finished; execute_run records the diverged ones below
    return [execute_run(*job) for job in jobs]  # trains what is left, evaluates all


def pack_jobs(jobs: list[tuple], size: int) -> list[list[tuple]]:
    """Group compatible runs (same architecture, data and schedule) into packs of `size`,
    runs of the same optimizer and rate side by side (their pack shares one optimizer step)."""

    groups: dict[tuple, list[tuple]] = {}
    identity = {}
    for i, job in enumerate(jobs):
        config = TrainConfig.from_dict(job[0]).resolved()
        key = pack_key(config) if packable(config) else ("alone", i)
        groups.setdefault(key, []).append(job)
        identity[id(job)] = optimizer_identity(config)
    packs = []
    for group in groups.values():  # runs of one optimizer and rate together: one shared step
        group = sorted(group, key=lambda job: identity[id(job)])
        packs += [group[i:i + size] for i in range(0, len(group), size)]
    return packs


def execute_run(config_dict: dict, run_dir: str, threads: int, data_dir: str | None) -> str:
    """Train (or resume) and evaluate one run; the body of a worker process."""

    torch.set_num_threads(threads)
    run_dir = Path(run_dir)
    if not is_finished(run_dir):
        try:
            train(TrainConfig.from_dict(config_dict), run_dir, verbose=False)
        except DivergedError as error:  # recorded, reported, never retried blindly
            record = {"diverged": True, "reason": str(error), **(diverged(run_dir) or {})}
            atomic_write_text(run_dir / EVALUATION, json.dumps(record, indent=1))
            return run_dir.name
    if not (run_dir / EVALUATION).is_file():
        evaluate_run(run_dir, data_dir)
    return run_dir.name


class RunProgress:
    """A progress bar on a terminal; one line per finished run when the output goes to a
    file (a log of a long sweep), so that progress shows there too."""

    def __init__(self, total: int, name: str):
        self.total, self.done, self.name = total, 0, name
        self.bar = tqdm(total=total, desc=f"{name} runs", disable=None)

    def update(self, keys: list[str]) -> None:
        self.done += len(keys)
        self.bar.update(len(keys))
        if self.bar.disable:
            print(f"{self.name}: {self.done}/{self.total} runs done ({', '.join(keys)})",
                  flush=True)

    def close(self) -> None:
        self.bar.close()


def read_index(out: str | Path) -> dict[str, dict]:
    """A sweep folder's index.json: {run key: {"labels": {...}, "seed": int, "config": {...}}};
    one line when it is missing, damaged or not a sweep's."""
    out = Path(out)
    path = out / "index.json"
    if not path.is_file():
        raise ConfigError(f"{out} is not a sweep folder (no index.json)")
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        index = None
    good = isinstance(index, dict) and all(
        isinstance(key, str) and isinstance(entry, dict) and isinstance(entry.get("labels"), dict)
        and isinstance(entry.get("seed"), int) and isinstance(entry.get("config", {}), dict)
        for key, entry in index.items())
    if not good:
        raise ConfigError(f"{path} is damaged or not a sweep's index; run the sweep command "
                          "again to rewrite it (finished runs are kept)")
    return index


def sweep_status(out: str | Path) -> list[dict]:
    """Every run of a sweep folder: done (evaluated), diverged, running (its folder is
    locked by a live process), interrupted (a checkpoint, no process) or pending."""
    out = Path(out)
    index = read_index(out)
    rows = []
    for key, entry in index.items():
        folder = out / "runs" / key
        metrics = read_metrics(folder) if folder.is_dir() else []
        evaluation = folder / EVALUATION
        if evaluation.is_file():
            state = "diverged" if diverged(folder) is not None else "done"
        elif not folder.is_dir():
            state = "pending"
        else:
            try:
                with FolderLock(folder, "run folder"):
                    state = "interrupted" if metrics else "pending"
            except RunStateError:
                state = "running"
        rows.append({"key": key, "labels": entry.get("labels", {}), "seed": entry.get("seed"),
                     "state": state, "epoch": metrics[-1]["epoch"] if metrics else 0,
                     "epochs": sum(entry.get("config", {}).get("epochs") or [0])})
    return rows


def _die_with_parent(parent: int) -> None:
    """Worker initializer: end this worker when the sweep's process dies (Linux), so that a
    killed sweep leaves no run training on unseen (its folder lock goes with it)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            return
    if os.getppid() != parent:  # the sweep died before the line above
        os._exit(1)


#: Whether this worker is inside a run now (a SIGTERM between runs just ends it).
_IN_RUN = False


def _worker_terminated(signum, frame) -> None:
    """A worker's SIGTERM: inside a run it unwinds the run (its folder lock released, staged
    writes removed; the last checkpoint stays for a resume), between runs the worker ends."""
    if _IN_RUN:
        raise Terminated()
    os._exit(143)


def _init_worker(parent: int, gpus) -> None:
    """Worker initializer: die with the sweep; each worker takes one GPU for all its runs.
    Ctrl-C is the sweep's to handle (it stops its workers), not each worker's."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_terminated)
    _die_with_parent(parent)
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())


def in_worker(function, *args):
    """Call `function(*args)` in a worker; a SIGTERM ends the worker once the run has
    unwound, so that it takes no further job from the pool's queue."""
    global _IN_RUN
    _IN_RUN = True
    try:
        return function(*args)
    except Terminated:
        os._exit(143)
    finally:
        _IN_RUN = False


@contextlib.contextmanager
def worker_pool(workers: int):
    """Worker processes that die with the sweep; on a GPU machine each takes one GPU for all
    its runs, round robin (single and packed runs alike). Leaving the block by an error,
    Ctrl-C or SIGTERM stops every worker (each run unwinds to its last checkpoint) instead
    of waiting for the queued runs to finish."""
    context = get_context("spawn")
    gpus = None
    if torch.cuda.is_available():
        gpus = context.Manager().Queue()
        for i in range(workers):
            gpus.put(i % torch.cuda.device_count())
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                               initargs=(os.getpid(), gpus))
    try:
        yield pool
    except BaseException:
        stop_workers(pool)
        raise
    pool.shutdown(wait=True)


def stop_workers(pool: ProcessPoolExecutor, grace_s: float = 30.0) -> None:
    """Cancel the queued runs, SIGTERM every worker, and SIGKILL one that has not unwound
    within `grace_s` (a run stuck in native code)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join(5)


def default_workers() -> int:
    if torch.cuda.is_available():
        return torch.cuda.device_count()
    return max(1, (os.cpu_count() or 1) // 2)


def write_index(spec: ExperimentSpec, planned: list[PlannedRun], out: Path, quick: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs").mkdir(exist_ok=True)
    previous = out / "spec.yaml"
    payload = {"spec": spec.__dict__, "quick": quick}
    if previous.is_file():
        try:
            old = yaml.safe_load(previous.read_text())
        except yaml.YAMLError:
            old = None
        if not isinstance(old, dict):
            raise ConfigError(f"{previous} is damaged; move the sweep folder away or repair it")
        if old.get("spec", {}).get("name") != spec.name or old.get("quick") != quick:
            raise ConfigError(f"{out} holds a sweep of {old.get('spec', {}).get('name')} "
                              f"(quick: {old.get('quick')}); choose another --out")
    atomic_write_text(previous, yaml.safe_dump(payload, sort_keys=False))
    index = {}
    try:  # merged: a rerun with a narrower --where keeps the runs it does not plan
        old = json.loads((out / "index.json").read_text())
        if isinstance(old, dict):
            index.update({key: entry for key, entry in old.items()
                          if (out / "runs" / key).is_dir()})
    except (OSError, ValueError):
        pass  # none yet, or damaged: rebuilt from what is planned now
    index.update({p.key: {"labels": p.labels, "seed": p.seed, "config": p.config.to_dict()}
                  for p in planned})
    atomic_write_text(out / "index.json", json.dumps(index, indent=1, default=str))


#: SLURM settings a spec's `slurm:` section or the command line may give.
SLURM_DEFAULTS = {"partition": None, "timeout_min": 24 * 60, "cpus_per_task": 2,
                  "gpus_per_task": 0, "mem_gb": None, "array_parallelism": 64,
                  "runs_per_job": 1}


def run_on_slurm(jobs: list[tuple], out: Path, name: str, options: dict) -> None:
    """Submit `jobs` as a SLURM job array through submitit and wait for every result."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("the slurm executor needs submitit: pip install "
                          "'implicit-sparsity[slurm]'") from None
    settings = {**SLURM_DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    unknown = sorted(set(settings) - set(SLURM_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown SLURM setting(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(SLURM_DEFAULTS)}")
    executor = submitit.AutoExecutor(folder=out / "slurm", cluster="slurm")
    parameters = {"name": name, "timeout_min": int(settings["timeout_min"]),
                  "cpus_per_task": int(settings["cpus_per_task"]),
                  "slurm_array_parallelism": int(settings["array_parallelism"])}
    if settings["partition"]:
        parameters["slurm_partition"] = settings["partition"]
    if settings["gpus_per_task"]:
        parameters["gpus_per_node"] = int(settings["gpus_per_task"])
    if settings["mem_gb"]:
        parameters["mem_gb"] = settings["mem_gb"]
    executor.update_parameters(**parameters)
    threads = int(settings["cpus_per_task"])
    per_job = max(1, int(settings["runs_per_job"]))
    jobs = [(config, run_dir, threads, data_dir) for config, run_dir, _, data_dir in jobs]
    chunks = [jobs[i:i + per_job] for i in range(0, len(jobs), per_job)]
    submitted = executor.map_array(execute_runs, chunks)
    print(f"submitted {len(chunks)} SLURM job(s) for {len(jobs)} run(s): "
          f"{submitted[0].job_id.split('_')[0]} (logs in {out / 'slurm'})")
    bar = RunProgress(len(jobs), name)
    for job in submitit.helpers.as_completed(submitted):
        bar.update(job.result())  # a failed job raises with its log
    bar.close()


def run_sweep(spec: ExperimentSpec, out: str | Path, *, quick: bool = False,
              workers: int | None = None, data_dir: str | None = None,
              overrides: dict | None = None, executor: str = "local",
              slurm: dict | None = None, where: dict | None = None,
              pack: int | None = None, threads: int | None = None) -> list[str]:
    """Train and evaluate every run of `spec` under `out`; returns the keys of all runs.

    `threads`: torch threads per local run (default: the CPU cores shared among the
    workers); a caller running several sweeps side by side gives each its share.

    `pack` > 1 trains up to that many compatible runs (same architecture, data, batch size
    and schedule) as one packed model on the local executor (see train.packed); None packs
    8 on a GPU machine, where it pays, and none on CPUs, where it does not."""
    if pack is None:
        pack = 8 if torch.cuda.is_available() else 1
    if executor not in ("local", "slurm"):
        raise ConfigError(f"unknown executor {executor!r}; available: local, slurm")
    overrides = dict(overrides or {})
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    planned = spec.expand(quick=quick, overrides=overrides, where=where)
    require_torch_pruning()  # every run's evaluation removes its dead filters: fail now
    out = Path(out)
    with FolderLock(out, "sweep folder"):  # one sweep process per folder
        return _run_sweep(spec, planned, out, quick, workers, data_dir, executor, slurm, pack,
                          threads)


def _run_sweep(spec: ExperimentSpec, planned: list[PlannedRun], out: Path, quick: bool,
               workers: int | None, data_dir: str | None, executor: str, slurm: dict | None,
               pack: int, threads: int | None = None) -> list[str]:
    write_index(spec, planned, out, quick)
    todo = [p for p in planned if not (out / "runs" / p.key / EVALUATION).is_file()]
    print(f"sweep {spec.name}: {len(planned)} runs, {len(planned) - len(todo)} already done, "
          f"{len(todo)} to run" + (" (quick)" if quick else ""))
    if not todo:
        return [p.key for p in planned]
    if executor == "slurm":
        jobs = [(p.config.to_dict(), str(out / "runs" / p.key), 0, data_dir) for p in todo]
        run_on_slurm(jobs, out, spec.name, {**(spec.slurm or {}), **(slurm or {})})
        return [p.key for p in planned]
    workers = max(1, min(workers or default_workers(), len(todo)))
    chosen_threads = threads
    threads = chosen_threads or max(1, (os.cpu_count() or 1) // workers)
    jobs = [(p.config.to_dict(), str(out / "runs" / p.key), threads, data_dir) for p in todo]
    bar = RunProgress(len(jobs), spec.name)
    if pack > 1:
        packs = pack_jobs(jobs, pack)
        workers = max(1, min(workers, len(packs)))
        threads = chosen_threads or max(1, (os.cpu_count() or 1) // workers)
        packs = [[(c, d, threads, dd) for c, d, _, dd in group] for group in packs]
        with worker_pool(workers) as pool:
            futures = [pool.submit(in_worker, execute_packed, group) for group in packs]
            for future in as_completed(futures):
                bar.update(future.result())
        bar.close()
        return [p.key for p in planned]
    if workers == 1:
        for job in jobs:
            bar.update([execute_run(*job)])
    else:
        with worker_pool(workers) as pool:
            futures = [pool.submit(in_worker, execute_run, *job) for job in jobs]
            for future in as_completed(futures):
                bar.update([future.result()])  # a failed run stops the sweep with its error
    bar.close()
    return [p.key for p in planned]
