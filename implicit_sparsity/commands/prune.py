"""`implicit-sparsity prune`: remove the dead filters of a trained run (or of a user's own
model: `--model module:function --weights state.pt --data images/`) for real, prove that
predictions did not change, measure the speed-up, write the slim model."""

from __future__ import annotations

import argparse

from implicit_sparsity.commands.common import (add_measurement_flags, add_model_source_flags,
                                               criterion_for, dump_json, non_negative_float,
                                               open_source, positive_int, units_for, writable_file,
                                               writable_folder)

NAME = "prune"


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(NAME, help="remove dead filters for real, prove predictions "
                            "did not change, measure the speed-up")
    add_model_source_flags(parser)
    parser.add_argument("--out", required=True, help="folder for the slim model and report")
    parser.add_argument("--criterion", choices=("gamma", "activation"), default=None,
                        help="default: gamma, or activation for a model without BatchNorm")
    parser.add_argument("--json", default=None, help="also write the report here")
    parser.add_argument("--tolerance", type=non_negative_float, default=1e-4,
                        help="largest max|delta logits| / max|logits| accepted (and no test "
                             "prediction may change)")
    parser.add_argument("--force", action="store_true",
                        help="write even if predictions changed (the report says so)")
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
    add_measurement_flags(parser)
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:
    import warnings

    import torch

    from implicit_sparsity.prune import prune_model
    from implicit_sparsity.prune.slim_io import check_before_writing, load_slim, save_slim
    from implicit_sparsity.train.loop import resolve_device

    out = writable_folder(args.out, "--out")
    json_path = writable_file(args.json, "--json")
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
    result = prune_model(source.model, example, criterion=criterion, corpus=corpus,
                         check_data=check_data,
                         gamma_threshold=args.gamma_threshold,
                         activation_threshold=args.activation_threshold, fold_bn=args.fold_bn,
                         latency_batches=() if args.no_latency else (1, 64),
                         threads=args.threads, tolerance=args.tolerance,
                         units=units_for(args, source),
                         force=True)  # the table first; check_before_writing then refuses
    if device.type != "cpu" and not args.no_latency:  # the CPU figures too
        import copy

        from implicit_sparsity.prune.cost import latency_table

        result.latency += latency_table(copy.deepcopy(source.model).cpu(),
                                        copy.deepcopy(result.model).cpu(), example.cpu(),
                                        (1, 64), args.threads)
    print(result.table())
    check_before_writing(result, args.tolerance, args.force)
    files = save_slim(result, out, example, config=source.config,
                      tolerance=args.tolerance, force=args.force,
                      extra={"source": str(args.path or args.model), "epoch": source.epoch})
    # the written files give the same outputs as the model in memory
    loaded = [torch.export.load(files["exported"]).module()]
    if source.config is not None:
        loaded.append(load_slim(files["slim"], device))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded.append(torch.jit.load(str(files["torchscript"]), map_location=device))
    with torch.no_grad():
        expected = result.model(example)
        drift = max((model(example) - expected).abs().max().item() for model in loaded)
    print(f"wrote {out} (slim.pt, slim.pt2, slim.torchscript.pt, prune_report.json); reloaded "
          f"outputs differ by at most {drift:.1e}")
    if json_path:
        dump_json(json_path, result.to_dict())
        print(f"wrote {json_path}")
    if args.tune:
        from implicit_sparsity.prune.tune import tune_slim

        tuned = tune_slim(source.model, example, check_data=check_data,
                          criterion=criterion, corpus=corpus,
                          gamma_threshold=args.gamma_threshold,
                          activation_threshold=args.activation_threshold,
                          units=units_for(args, source), threads=args.threads,
                          tolerance=args.tolerance, progress=True)
        print(tuned.table())
        best = tuned.best
        if best is tuned.candidates[0]:
            print("the exact minimum is the fastest here: nothing more to write")
        else:
            save_slim(best.result, out / "latency_tuned", example, config=source.config,
                      tolerance=args.tolerance,
                      extra={"layout": best.layout, "rounding": best.rounding,
                             "latency_candidates": [{"name": c.name, "latency": c.latency}
                                                    for c in tuned.candidates],
                             "per_layer_rounding_trials": tuned.searches})
            print(f"wrote {out / 'latency_tuned'} ({best.name}"
                  + ("; load it, then model.to(memory_format=torch.channels_last)"
                     if best.layout == "channels_last" else "") + ")")
    return 0
