"""``perfmodel`` command line.

Commands live in :mod:`perfmodel.commands`: every module there defines
``register(cli: Registry)`` and is discovered automatically, so adding a
command never edits this file. Command modules import only argparse-level
things at import time and do the heavy imports (jax, sympy, matplotlib)
inside their handlers, which keeps ``perfmodel --help`` and simple commands
fast from a cold start.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil
import re
import signal
import sys
import threading
import time


NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.I)


class Registry:
    """Hands out argument parsers for top-level commands and grouped subcommands."""

    _GROUP_HELP = {
        "validate": "confront predictions with something real (compiler, timings, data)",
        "plot": "make plots (PNG and SVG)",
        "calibrate": "measure the machine at hand",
        "train": "small training runs",
        "scaling": "scaling-law fits and compute-optimal allocations",
        "tiling": "walk Pallas TPU kernels tile by tile (traffic, MXU work, VMEM, time)",
    }

    def __init__(self, subparsers):
        self._sub = subparsers
        self._groups: dict[str, argparse._SubParsersAction] = {}

    def command(self, name: str, help: str, **kwargs) -> argparse.ArgumentParser:
        return self._own(self._sub.add_parser(name, help=help, description=help, **kwargs))

    @staticmethod
    def _own(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        # main() reports errors through the parser of the command that ran: its usage line and its prog
        p.set_defaults(_parser=p)
        # A value such as --compute -1e20 is a number, not an option: argparse's own pattern knows only -1 and
        # -.5, so `--compute -1e20` failed with "expected one argument" instead of naming the bad value.
        p._negative_number_matcher = NEGATIVE_NUMBER
        return p

    def subcommand(self, group: str, name: str, help: str, **kwargs) -> argparse.ArgumentParser:
        if group not in self._groups:
            gp = self._sub.add_parser(group, help=self._GROUP_HELP.get(group, group),
                                      description=self._GROUP_HELP.get(group, group))
            self._groups[group] = gp.add_subparsers(dest=f"{group}_command", required=True,
                                                    metavar="SUBCOMMAND")
        return self._own(self._groups[group].add_parser(name, help=help, description=help, **kwargs))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perfmodel",
        description="Symbolic FLOP/byte/roofline and tiling models for TPUs: "
                    "when a fused MoE kernel beats ragged_dot, and how MoE shifts "
                    "compute-optimal scaling.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    registry = Registry(sub)
    from perfmodel import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"perfmodel.commands.{info.name}")
        module.register(registry)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a batch scheduler's time limit) raised in the main thread as an interrupt.

    A subclass of ``KeyboardInterrupt``, so every place that saves finished work or removes a staging
    folder on Ctrl-C (sweeps, the kernel harness, ``perfmodel report``) does the same on SIGTERM.
    """


def _raise_terminated(signum, frame):
    raise Terminated()


TERMINATE_GRACE_S = 20.0
"""After SIGTERM, how long the main thread may take to stop (cleanup included) before the process exits anyway."""


def _watchdog(read_fd: int, grace_s: float) -> None:
    """Exit with 143 ``grace_s`` after SIGTERM if the process is still running.

    The Python-level handler runs only when the main thread next executes bytecode; inside a long
    compiled call (an XLA compile of a huge shape) that can be minutes, and ``timeout`` or a scheduler
    would find SIGTERM ignored. The C-level handler writes the signal number to the wakeup fd, which
    this thread reads.
    """
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            data = b""
        if not data:  # write end closed: the command finished
            os.close(read_fd)
            return
        if signal.SIGTERM in data:
            time.sleep(grace_s)
            os.write(2, f"perfmodel: terminated (SIGTERM); still busy after {grace_s:g} s, inside compiled "
                        "code; exiting without cleanup\n".encode())
            os._exit(143)


@contextlib.contextmanager
def terminate_as_interrupt(grace_s: float = TERMINATE_GRACE_S):
    """SIGTERM raises :class:`Terminated` in the main thread; a watchdog exits the process ``grace_s`` later."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    threading.Thread(target=_watchdog, args=(read_fd, grace_s), daemon=True, name="perfmodel-sigterm").start()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        signal.set_wakeup_fd(previous_fd)
        os.close(write_fd)  # the watchdog reads EOF and ends; it closes nothing else


def main(argv: list[str] | None = None) -> int:
    """Run one command; exit status 2 for bad input, 130 on Ctrl-C, 143 on SIGTERM, 141 on a closed pipe."""
    with terminate_as_interrupt():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # NAME=VALUE lists may follow options (``predict matmul --chip v5e M=1``).
    if extra and isinstance(getattr(args, "dims", None), list) and all("=" in e for e in extra):
        args.dims += extra
    elif extra:  # the command's own usage, not the top level's ('perfmodel [-h] COMMAND ...')
        getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    prog = getattr(args, "_parser", parser).prog
    from perfmodel.scaling.parallel import ParallelError, set_jobs

    try:
        if getattr(args, "jobs", None) is not None:  # commands.add_jobs
            set_jobs(args.jobs)
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `perfmodel ... | head`: the reader has gone, which is not an error of ours
        try:  # no flush at exit into the closed pipe (it would print "Exception ignored ... BrokenPipeError")
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout without a file descriptor (captured)
            pass
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by it
    except (ValueError, OSError, ParallelError) as err:  # OSError: a missing file, a directory given as a file, ...
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"{prog}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
