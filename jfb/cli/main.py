"""The ``jfb`` command line: one library function per command, flags generated from its settings dataclass.

Every command accepts ``--json`` and then prints one final JSON line with its results. Exit
statuses: 0 done; 2 bad options or input (one line); 1 training stopped (persistent bad batches) or
a file could not be written (one line); 75 preempted by a signal after writing ``last.pt`` (rerun
with ``--resume``); anything else is a bug and keeps its traceback. The commands live in
:mod:`jfb.cli.commands`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import NoReturn

from .. import __version__
from ..workloads import WORKLOADS
from .commands import COMMANDS, Command, Log
from .flags import add_flags

GROUP_HELP = {
    "bench": "Benchmarks (memory, speed), measured side by side.",
    "workload": "Train a workload beyond MNIST (also reachable as `jfb train NAME`).",
}


class OneLineParser(argparse.ArgumentParser):
    """A bad flag or value is one line (``jfb train: error: argument --lr: ...``) and exit status 2, like every
    other bad input; the usage is one ``--help`` away."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="jfb", description="Implicit networks trained with Jacobian-free backpropagation.")
    parser.add_argument("--version", action="version", version=f"torch-jfb {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for command in COMMANDS:
        where = sub
        if command.group:
            if command.group not in groups:
                group = sub.add_parser(command.group, help=GROUP_HELP[command.group])
                groups[command.group] = group.add_subparsers(dest=command.group, required=True)
            where = groups[command.group]
        _add_command(where, command)
    return parser


def _add_command(sub: argparse._SubParsersAction, command: Command) -> None:
    prog = f"jfb train {command.name}" if command.group == "workload" else None  # how users reach it
    p = sub.add_parser(command.name, help=command.help, description=command.help, **({"prog": prog} if prog else {}))
    p.add_argument("--json", action="store_true", help="print one final JSON line with the results")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_flags(p, command.settings)
    if command.config_flags:
        add_flags(p, command.config_flags, overlay=True)
    p.set_defaults(command_spec=command)


def _logger(args: argparse.Namespace) -> Log:
    def log(message: str) -> None:
        print(message, file=sys.stderr if args.json else sys.stdout, flush=True)

    return log


def _route_workloads(argv: list[str]) -> list[str]:
    """``jfb train NAME ...`` for a workload NAME is ``jfb workload NAME ...``: one `train` for every target."""
    if len(argv) >= 2 and argv[0] == "train" and argv[1] in WORKLOADS:
        return ["workload", *argv[1:]]
    return argv


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_route_workloads(sys.argv[1:] if argv is None else list(argv)))
    from ..errors import JfbError, StorageError
    from ..train import TrainingStopped
    from ..train.preemption import EXIT_PREEMPTED, Preempted

    command: Command = args.command_spec
    name = f"{command.group} {command.name}" if command.group else command.name
    try:
        result = command.run(args, not args.no_progress, _logger(args))
    except TrainingStopped as exc:  # a JfbError that arises while training: exit 1, not a usage error's 2
        print(f"jfb {name}: training stopped: {exc}", file=sys.stderr)
        return 1
    except (JfbError, FileNotFoundError) as exc:
        print(f"jfb {name}: error: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:
        print(f"jfb {name}: error: {exc}", file=sys.stderr)
        return 1
    except Preempted:  # the training loop said where it stopped and what it wrote
        return EXIT_PREEMPTED
    if args.json:
        print(json.dumps(result))
    return 0
