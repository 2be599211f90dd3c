"""The `implicit-sparsity` command: a thin layer over the Python API. Each subcommand lives in
its own module under `implicit_sparsity.commands`; this one only collects them.

Bad input fails before any work with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import signal
import sys

from implicit_sparsity.commands import COMMANDS
from implicit_sparsity.errors import ImplicitSparsityError, Terminated

PROG = "implicit-sparsity"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (exit 2), not usage + error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="Train, measure and exploit the implicit filter sparsity of CNNs "
                    "(Mehta, Kim, Theobalt, CVPR 2019).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def _terminate(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: leave the handler as it is
        previous = None
    try:
        return args.func(args)
    except ImplicitSparsityError as error:
        message = " ".join(str(error).split("\n"))
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{PROG}: terminated; nothing half-written was left (run the same command "
              "again to resume)", file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
