"""The command line's subcommands, one module each: it declares its arguments next to the
code that runs them (`add_parser`, `run`); `implicit_sparsity.cli` only collects them."""

from implicit_sparsity.commands import (
                                        analyze,
                                        compare,
                                        datasets,
                                        demo,
                                        findings,
                                        models,
                                        prune,
                                        report,
                                        simulate,
                                        sweep,
                                        train,
)

#: In the order `--help` lists them.
COMMANDS = (train, models, datasets, analyze, prune, simulate, sweep, report, compare,
            findings, demo)

__all__ = ["COMMANDS"]
