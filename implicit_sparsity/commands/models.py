"""`implicit-sparsity models`: the networks with their conv parameters and filters."""

from __future__ import annotations

import argparse

import torch

from implicit_sparsity.data import get_dataset_entry
from implicit_sparsity.errors import ConfigError
from implicit_sparsity.measure.features import trace_features
from implicit_sparsity.models import (
    MODELS,
    build_model,
    conv_param_count,
    feature_layers,
    parse_width,
)

NAME = "models"


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(NAME, help="list the models with their conv parameters")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--width", default="1",
                        help="a multiplier (0.5) or a variant name (64-0.5x, 32-0.25x)")
    parser.set_defaults(func=run)
    return parser


def run(args) -> int:

    entry = get_dataset_entry(args.dataset)
    parse_width(args.width)  # a bad width is refused once, before the listing
    print(f"models for {entry.name} ({entry.in_channels} channel(s), {entry.num_classes} "
          f"classes, {entry.head} head), width {args.width}:")
    for name, model_entry in MODELS.items():
        size = max(entry.image_size, model_entry.min_input_size(entry.head))
        try:
            with torch.device("meta"):  # shapes only, no memory or init cost
                model = build_model(name, in_channels=entry.in_channels,
                                    num_classes=entry.num_classes, head=entry.head,
                                    input_size=size, width=args.width)
        except ConfigError as error:
            print(f"  {name:9s} {error}")
            continue
        total = sum(p.numel() for p in model.parameters())
        if "conv" in model_entry.units:
            filters = [block.conv.out_channels for _, block in feature_layers(model)]
            units = f"{len(filters)} conv layers, {sum(filters)} filters: {filters}"
        else:  # measured on its MLP units (a Transformer)

            widths = [f.num_features for f in trace_features(model, model_entry.units).features]
            units = f"{len(widths)} MLP layers, {sum(widths)} units: {widths}"
        print(f"  {name:9s} conv params {conv_param_count(model):>11,}  all params {total:>12,}"
              f"  {units}")
        print(f"            {model_entry.description}"
              + (f"; inputs padded {entry.image_size}->{size}" if size > entry.image_size
                 else ""))
    return 0
