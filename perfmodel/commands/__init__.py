"""CLI command modules, discovered by :func:`perfmodel.cli.build_parser`.

Each module defines ``register(cli)`` using ``cli.command(name, help)`` or
``cli.subcommand(group, name, help)``, sets ``func=handler`` on the parser it
gets, and keeps heavy imports inside the handler.
"""


def comma_list(text: str, convert, option: str, what: str, *, unique: str | None = None) -> tuple:
    """``"1,2"`` -> ``(convert("1"), convert("2"))``; a bad item is a ``ValueError`` naming ``--option`` and the value.

    ``what`` describes the items for the message ("integers", "numbers"). ``unique`` (the item's noun, e.g.
    "seed") refuses an item listed twice.
    """
    name = option.lstrip("-").replace("-", "_")
    try:
        items = tuple(convert(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{option} must be comma-separated {what}, got {name}={text!r}") from None
    if unique is not None and len(set(items)) < len(items):
        raise ValueError(f"{option} lists a {unique} more than once, got {name}={text!r}")
    return items


def chip_list(text: str, option: str = "--chips", *, tpu_for: str | None = None) -> list[str]:
    """``"v5e,v6e"`` -> ``["v5e", "v6e"]``: every name checked against the catalog before any work is done
    (an unknown chip is an error naming it and the known ones); an empty item is an error naming ``option``.

    ``tpu_for`` (what needs the TPU, e.g. "AOT compilation") also refuses a chip that is not a TPU
    (``a100``, ``cpu``) with a message naming ``option``: such a chip would otherwise match nothing and
    the command would report 0 of 0 checks as a pass.
    """
    from perfmodel.hardware import get_chip, get_tpu_chip

    name = option.lstrip("-").replace("-", "_")
    names = [c.strip() for c in text.split(",")]
    if not all(names):
        raise ValueError(f"{option} must be a comma-separated list of chip names, got {name}={text!r}")
    for n in names:
        try:
            get_chip(n) if tpu_for is None else get_tpu_chip(n, what=tpu_for)
        except ValueError as err:
            raise ValueError(f"{option}: {err} (in {name}={text!r})") from None
    return names


def dtype_list(text: str, option: str = "--dtypes", *, chips=()) -> list[str]:
    """``"bf16,float32"`` -> ``["bf16", "f32"]`` (:func:`perfmodel.hardware.canonical_dtype` names).

    An unknown or empty item, a dtype listed twice (``bf16,bfloat16`` too), or one that a chip of ``chips``
    has no matmul datapath for (fp8 on v5e) is a ``ValueError`` naming ``option`` and the value, raised
    before any work: each would otherwise be dropped or recorded as a trivial pass.
    """
    from perfmodel.hardware import canonical_dtype, get_chip

    name = option.lstrip("-").replace("-", "_")
    items = [d.strip() for d in text.split(",")]
    if not all(items):
        raise ValueError(f"{option} must be a comma-separated list of dtypes, got {name}={text!r}")
    try:
        dtypes = [canonical_dtype(d) for d in items]
    except ValueError as err:
        raise ValueError(f"{option}: {err} (in {name}={text!r})") from None
    if len(set(dtypes)) < len(dtypes):
        raise ValueError(f"{option} lists a dtype more than once, got {name}={text!r}")
    for chip in map(get_chip, chips):
        for d in dtypes:
            try:
                chip.peak_flops_per_s(d)  # the catalog's own refusal of a dtype the chip has no peak for
            except ValueError as err:
                raise ValueError(f"{option}: {err}, got {name}={text!r}") from None
    return dtypes


def int_in(low: int, high: int | None = None):
    """An argparse ``type``: an integer in ``[low, high]`` (no upper bound if ``high`` is None).

    argparse reports a refused value as ``argument --name: must be ...``, naming the option.
    """
    import argparse

    span = f">= {low}" if high is None else f"in [{low}, {high}]"

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer {span}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be an integer {span}, got {value}")
        return value

    return convert


def add_jobs(p) -> None:
    """``--jobs N``: worker processes for the scaling fits (:mod:`perfmodel.scaling.parallel`; main() applies it)."""
    p.add_argument("--jobs", type=int_in(1), default=None,
                   help="worker processes for the scaling fits (default: $PERFMODEL_JOBS, else every core); "
                        "results do not depend on it")


def positive(option: str, value) -> None:
    """Raise ``ValueError`` naming ``--option`` and the value unless ``value`` is a finite number > 0."""
    import math

    if value is None or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{option} must be a finite positive number, got {option}={value!r}")


def _check_creatable(text: str, path: str) -> None:
    """``ArgumentTypeError`` unless ``path`` could be created: its nearest existing ancestor is a writable
    folder (a file there, or a read-only folder, would fail only when the outputs are written, after the work)."""
    import argparse
    import os

    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"{text!r} cannot be created: {parent!r} is a file, not a folder")
    import tempfile

    try:  # a real folder made and removed: os.access passes /proc and read-only mounts for root
        os.rmdir(tempfile.mkdtemp(prefix=".perfmodel-check-", dir=parent))
    except OSError as err:
        raise argparse.ArgumentTypeError(f"{text!r} cannot be created in {parent!r}: {err.strerror}") from None


def out_folder(text: str) -> str:
    """An argparse ``type`` for an output folder: refused up front if it is empty, names an existing file or
    cannot be created (else the outputs, written last, would fail after all the work). argparse names the
    option in its message."""
    import argparse
    import os

    if not text.strip():
        raise argparse.ArgumentTypeError(f"must name a folder, got {text!r}")
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is an existing file, not a folder")
    if not os.path.exists(text):
        _check_creatable(text, text)
    return text


def in_file(text: str) -> str:
    """An argparse ``type`` for an input file: refused up front if it is missing or a folder, so the message
    names the argument instead of a bare ``[Errno 21] Is a directory``."""
    import argparse
    import os

    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, not a file")
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text!r} does not exist")
    return text


def out_file(text: str) -> str:
    """An argparse ``type`` for an output file: refused up front if it is empty, names an existing folder or
    cannot be created."""
    import argparse
    import os

    if not text.strip():
        raise argparse.ArgumentTypeError(f"must name a file, got {text!r}")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, not a file")
    if not os.path.exists(text):
        _check_creatable(text, text)
    elif not os.access(text, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text!r} is not writable")
    return text
