"""`implicit-sparsity prune`: remove the dead filters of a trained run (or of a user's own
model: `--model module:function --weights state.pt --data images/`) for real, prove that
predictions did not change, measure the speed-up, write the slim model."""

from __future__ import annotations

import argparse
import copy
import json
import warnings
from pathlib import Path

import torch

from implicit_sparsity import defaults
from implicit_sparsity.commands.common import (
    add_measurement_flags,
    add_model_source_flags,
    add_overwrite_flag,
    criterion_for,
    dump_json,
    non_negative_float,
    open_source,
    output_plan,
    positive_float,
    positive_int,
    units_for,
)
from implicit_sparsity.io import atomic_write_text
from implicit_sparsity.io.outputs import staged_folder
from implicit_sparsity.prune import prune_model
from implicit_sparsity.prune.cost import latency_table
from implicit_sparsity.prune.runtimes import RUNTIMES, DeploymentPlan, ExportError, \
    require_packages
from implicit_sparsity.errors import ConfigError
from implicit_sparsity.train.slim_io import REPORT, check_before_writing, load_slim, save_slim
from implicit_sparsity.prune.tune import tune_slim
from implicit_sparsity.train.loop import resolve_device

NAME = "prune"


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(NAME, help="remove dead filters for real, prove predictions "
                            "did not change, measure the speed-up")
    add_model_source_flags(parser)
    parser.add_argument("--out", required=True, help="folder for the slim model and report")
    parser.add_argument("--criterion", choices=("gamma", "activation"), default=None,
                        help="default: gamma, or activation for a model without BatchNorm")
    parser.add_argument("--json", default=None, help="also write the report here")
    add_overwrite_flag(parser)
    parser.add_argument("--tolerance", type=non_negative_float, default=1e-4,
                        help="largest max|delta logits| / max|logits| accepted (and no test "
                             "prediction may change)")
    parser.add_argument("--force", action="store_true",
                        help="write even if predictions changed (the report says so)")
    parser.add_argument("--analysis-seconds", type=positive_float,
                        default=defaults.ANALYSIS_SECONDS,
                        help="refuse, in one line, a model whose removal analysis takes "
                             "longer (or grows by half the memory available)")
    parser.add_argument("--fold-bn", action="store_true",
                        help="fold BatchNorm into the convolutions for deployment")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads (latency)")
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--tune", action="store_true",
                        help="also build the latency-tuned slim model (BN folded, widths "
                             "rounded up by keeping dead filters, for all layers or chosen "
                             "layer by layer, layout), every candidate proven and timed "
                             "against the original at batch 1 and 64; the fastest at 64 is "
                             "written to OUT/latency_tuned/")
    parser.add_argument("--runtime", choices=("torch", "onnxruntime", "openvino"),
                        default="torch", help="where --tune times its candidates (each "
                        "exported and checked there first)")
    parser.add_argument("--export", default=None, metavar="FORMATS",
                        help="also write the original and the slim model as onnx and / or "
                             "openvino (comma-separated), each file run in its runtime and "
                             "checked against PyTorch (a file that fails is deleted)")
    parser.add_argument("--runtimes", default=None, metavar="RUNTIMES",
                        help="time the original and the slim model in these runtimes "
                             f"(comma-separated: {', '.join(RUNTIMES)}) at batch 1 and 64, "
                             "instead of PyTorch eager alone")
    add_measurement_flags(parser)
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:

    plan = output_plan(args)
    out = plan.folder(args.out, "--out", "slim", resumable=False)
    json_path = plan.file(args.json, "--json")
    deployment = DeploymentPlan.from_flags(args.export, args.runtimes)
    if args.runtime != "torch":
        if not args.tune:
            raise ConfigError("--runtime chooses where --tune times its candidates: give "
                              "--tune too")
        require_packages(args.runtime, "--runtime")
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    source = open_source(args, device, need_data=args.criterion in (None, "activation"),
                         need_test=True)
    example = torch.cat([x for x, _ in source.test])[:64]
    criterion = criterion_for(args, source, with_gamma="gamma")
    print(f"pruning {source.description}, by {criterion}; proof on "
          f"{sum(len(x) for x, _ in source.test)} images")
    corpus = source.corpus if criterion == "activation" else None
    check_data = [(x, y) if y is not None else x for x, y in source.test]
    measuring = dict(criterion=criterion, corpus=corpus, check_data=check_data,
                     gamma_threshold=args.gamma_threshold,
                     activation_threshold=args.activation_threshold,
                     units=units_for(args, source), threads=args.threads,
                     tolerance=args.tolerance, analysis_seconds=args.analysis_seconds)
    result = prune_model(source.model, example, fold_bn=args.fold_bn,
                         latency_batches=() if args.no_latency or deployment.timed
                         else (1, 64),
                         force=True,  # the table first; check_before_writing then refuses
                         **measuring)
    if device.type != "cpu" and not args.no_latency:  # the CPU figures too

        result.latency += latency_table(copy.deepcopy(source.model).cpu(),
                                        copy.deepcopy(result.model).cpu(), example.cpu(),
                                        (1, 64), args.threads)
    print(result.table())
    check_before_writing(result, args.tolerance, args.force)
    with staged_folder(out, replace=args.overwrite) as stage:  # all of it, or nothing
        drift = write_slim(args, source, result, example, stage, device)
        deployed = deployment.write(source.model, result, example, check_data, stage,
                                    args.threads)
        deployment_report = add_deployment(stage / REPORT, deployed)
        if args.tune:
            deployed.failed = deployed.failed or write_tuned(args, source, example, measuring,
                                                             stage, deployment)
    print(f"wrote {out} (slim.pt, slim.pt2, slim.torchscript.pt, prune_report.json"
          + "".join(f", {name}" for name in deployed.files)
          + f"); reloaded outputs differ by at most {drift:.1e}")
    if deployed.failed:
        raise ExportError(f"{deployed.failed} (everything else is in {out})")
    if json_path:
        dump_json(json_path, {**result.to_dict(), **deployment_report})
        print(f"wrote {json_path}")
    return 0


def add_deployment(report_path: Path, deployed) -> dict:
    """The exports' checks and the runtime latency rows, added to the slim folder's report
    (and returned for --json)."""
    extra = {}
    if deployed.files or deployed.failed:
        extra["exports"] = {"files": deployed.checks, "failed": deployed.failed}
    if deployed.latency:
        extra["runtime_latency"] = deployed.latency
    if extra:
        report = json.loads(report_path.read_text())
        atomic_write_text(report_path, json.dumps({**report, **extra}, indent=1))
    return extra


def write_slim(args, source, result, example, folder, device) -> float:
    """Write the slim model's files and check that each gives the outputs of the model in
    memory; returns the largest difference."""

    files = save_slim(result, folder, example, config=source.config,
                      tolerance=args.tolerance, force=args.force,
                      extra={"source": str(args.path or args.model), "epoch": source.epoch})
    loaded = [torch.export.load(files["exported"]).module()]
    if source.config is not None:
        loaded.append(load_slim(files["slim"], device))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded.append(torch.jit.load(str(files["torchscript"]), map_location=device))
    with torch.no_grad():
        expected = result.model(example)
        return max((model(example) - expected).abs().max().item() for model in loaded)


def write_tuned(args, source, example, measuring: dict, folder, deployment) -> str | None:
    """The latency-tuned slim model, into FOLDER/latency_tuned when it beats the minimum,
    with the exports asked for; returns why an export of it failed, if one did."""

    tuned = tune_slim(source.model, example, progress=True, runtime=args.runtime, **measuring)
    print(tuned.table())
    best = tuned.best
    if best is tuned.candidates[0]:
        print("the exact minimum is the fastest here: nothing more to write")
        return None
    save_slim(best.result, folder / "latency_tuned", example, config=source.config,
              tolerance=args.tolerance,
              extra={"layout": best.layout, "rounding": best.rounding,
                     "latency_candidates": [{"name": c.name, "latency": c.latency}
                                            for c in tuned.candidates],
                     "per_layer_rounding_trials": tuned.searches, "runtime": args.runtime})
    exported = deployment.write_exports(best.result.model, example, measuring["check_data"],
                                        folder / "latency_tuned", args.threads,
                                        original=False)  # ONNX / IR have no memory layout
    add_deployment(folder / "latency_tuned" / REPORT, exported)
    print(f"will write {Path(args.out) / 'latency_tuned'} ({best.name}"
          + ("; load it, then model.to(memory_format=torch.channels_last)"
             if best.layout == "channels_last" else "") + ")")
    return exported.failed and f"latency_tuned/{exported.failed}"
