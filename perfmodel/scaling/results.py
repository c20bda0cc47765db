"""Read training runs (one JSON object per line) into arrays for fitting.

Each line is one finished run of the training sweep
(``validation/results/arith_full.jsonl``, written by
``validation/arith/sweep.py``: top-level ``arch`` ("dense" | "moe-E8k2"),
``budget_flops``, ``tokens``, ``flops``, ``params_*``, ``held_out_loss``,
``train_loss``, and the run's ``config.model`` with ``n_experts``, ``top_k``). Fields are looked up by name
anywhere in the (possibly nested) object, first by dotted path then by leaf
name, trying the aliases in :data:`FIELDS` in order; a missing required
field raises ``ValueError`` naming the line, the field and the names tried.

Conventions

* ``params`` (the law's N) defaults to the *active non-embedding* count: the
  parameters that cost FLOPs per token (Kaplan et al.; for a dense model it is
  the non-embedding count). ``params_total`` is kept for reporting (memory).
* ``budget_flops`` is the nominal IsoFLOP budget that groups runs into one
  IsoFLOP curve; ``compute_flops`` is what the run actually spent (defaults to
  ``flops_per_token * tokens``, or the budget). The sweep counts budgets
  with exact train FLOPs (``train_exact``), so ``C / (N D)`` exceeds 6 for tiny
  models; the study uses each group's median ``C / (N D)`` as ``c_f``.
* ``loss="eval"`` uses the final held-out loss, ``"train"`` the final train loss.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
from collections.abc import Callable, Iterable, Mapping

import attrs
import numpy as np

from perfmodel import jsonout

FIELDS: dict[str, tuple[str, ...]] = {
    "arch": ("arch", "config.arch"),
    "n_experts": ("config.model.n_experts", "config.n_experts", "n_experts", "num_experts"),
    "top_k": ("config.model.top_k", "config.top_k", "top_k"),
    "params_total": ("params.total", "param_counts.total", "n_params_total", "params_total", "total"),
    "tokens": ("tokens", "train_tokens", "n_tokens", "tokens_seen"),
    "budget_flops": ("budget_flops", "compute_budget", "compute_budget_flops", "flops_budget", "budget",
                     "config.budget_flops", "config.compute_budget"),
    "compute_flops": ("compute_flops", "train_flops", "flops", "total_flops"),
    "flops_per_token": ("flops_per_token_train", "flops_per_token.train_exact", "flops_per_token"),
    "eval": ("held_out_loss", "final_eval_loss", "eval_loss", "heldout_loss", "final_heldout_loss", "val_loss",
             "final_val_loss", "loss.eval", "losses.eval"),
    "train": ("final_train_loss", "train_loss", "loss.train", "losses.train"),
    "wall_time_s": ("wall_time_s", "wall_s", "time_s", "wall_time"),
}

PARAM_ALIASES = {
    "active_non_embedding": ("params_active_non_embedding", "params.active_non_embedding",
                             "param_counts.active_non_embedding", "active_non_embedding"),
    "non_embedding": ("params_non_embedding", "params.non_embedding", "param_counts.non_embedding",
                      "non_embedding"),
    "active": ("params_active", "params.active", "param_counts.active", "active"),
    "total": FIELDS["params_total"],
}


def _flatten(obj: Mapping, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in obj.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _lookup(flat: dict[str, object], names: Iterable[str]):
    """The first of ``names`` (dotted paths, then bare names matched against any leaf) with a non-null value;
    ``None`` if there is none (a JSON ``null`` counts as absent, so a later alias still applies)."""
    names = tuple(names)
    leaves: dict[str, object] = {}
    for path, value in flat.items():
        if value is not None:
            leaves.setdefault(path.rsplit(".", 1)[-1], value)
    for name in names:
        if flat.get(name) is not None:
            return flat[name]
    for name in names:
        if "." not in name and name in leaves:
            return leaves[name]
    return None


def _null_keys(flat: dict[str, object], names: Iterable[str]) -> list[str]:
    """The keys among ``names`` present in the record with a JSON ``null`` value."""
    return [path for path, value in flat.items() if value is None
            for name in names if path == name or ("." not in name and path.rsplit(".", 1)[-1] == name)]


_MOE_TAG = re.compile(r"moe-E(\d+)k(\d+)$", re.IGNORECASE)  # the sweep's arch tag (validation/arith/sweep.py)


@attrs.frozen(kw_only=True)
class Runs:
    """Finished runs as parallel arrays (one entry per run)."""

    arch: np.ndarray  # "dense" | "moe"
    n_experts: np.ndarray
    top_k: np.ndarray
    params: np.ndarray  # the law's N (see ``params_key``)
    params_total: np.ndarray
    tokens: np.ndarray
    budget_flops: np.ndarray
    compute_flops: np.ndarray
    loss: np.ndarray
    params_key: str
    loss_key: str
    source: str
    # per run: the line had no budget field, so its budget is its own compute (an IsoFLOP curve of one run
    # unless other runs spent exactly the same FLOPs)
    budget_inferred: np.ndarray

    def __len__(self) -> int:
        return int(self.loss.size)

    def select(self, mask) -> "Runs":
        return self.take(np.flatnonzero(np.asarray(mask, bool)))

    def take(self, index) -> "Runs":
        """The runs at integer positions ``index`` (repeats allowed: a resample)."""
        ix = np.asarray(index, int)
        return attrs.evolve(self, **{f.name: getattr(self, f.name)[ix] for f in attrs.fields(Runs)
                                     if isinstance(getattr(self, f.name), np.ndarray)})

    def configurations(self) -> list[np.ndarray]:
        """Positions of the runs of each configuration (arch, E, k, budget, N), in first-seen order."""
        keys = list(zip(self.arch, self.n_experts, self.top_k, self.budget_flops, self.params))
        where: dict = {}
        for i, k in enumerate(keys):
            where.setdefault(k, []).append(i)
        return [np.array(v) for v in where.values()]

    def average_repeats(self) -> "Runs":
        """One run per (arch, E, k, budget, N): mean loss, tokens and compute over repeats (seeds).

        The best of several noisy seeds is biased low; averaging first makes a
        budget's observed best loss and the IsoFLOP curves less noisy.
        """
        idx = self.configurations()
        first = np.array([ix[0] for ix in idx])
        out = {f.name: getattr(self, f.name)[first] for f in attrs.fields(Runs)
               if isinstance(getattr(self, f.name), np.ndarray)}
        for name in ("loss", "tokens", "compute_flops"):
            col = getattr(self, name)
            out[name] = np.array([col[ix].mean() for ix in idx])
        return attrs.evolve(self, **out)

    @property
    def budgets(self) -> np.ndarray:
        return np.unique(self.budget_flops)

    @property
    def labels(self) -> np.ndarray:
        """Each run's group label (:func:`group_label`): ``"dense"``, ``"moe E=8 k=1"`` ..."""
        return np.array([group_label(a, e, k) for a, e, k in zip(self.arch, self.n_experts, self.top_k)])

    def groups(self) -> dict[str, "Runs"]:
        """Runs split by architecture: ``"dense"`` and ``"moe E=8 k=1"`` ..."""
        labels = self.labels
        return {lab: self.select(labels == lab) for lab in sorted(set(labels), key=_group_order)}


def group_label(arch: str, n_experts: int, top_k: int) -> str:
    return "dense" if arch == "dense" or n_experts <= 1 else f"moe E={int(n_experts)} k={int(top_k)}"


def _group_order(label: str):
    return (label != "dense", label)


def _count(value, what: str, where: str) -> int:
    """``value`` as a positive integer (a JSON ``8`` or ``8.0``); ``ValueError`` naming the line and field."""
    x = _number(value, what, where)
    if not (math.isfinite(x) and x >= 1 and x == int(x)):
        raise ValueError(f"{where}: {what} must be a positive integer, got {value!r}")
    return int(x)


def _number(value, what: str, where: str) -> float:
    try:
        if isinstance(value, bool):  # JSON true/false: float() would read them as 1.0 and 0.0
            raise TypeError
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {what} is not a number: {value!r}") from None
    return x


def check_params_key(params_key: str, *, name: str = "params_key") -> None:
    """``ValueError`` naming ``name`` and the value unless ``params_key`` is one of :data:`PARAM_ALIASES`."""
    if params_key not in PARAM_ALIASES:
        raise ValueError(f"{name} must be one of {sorted(PARAM_ALIASES)}, got {name}={params_key!r}")


def read_runs(path: str | pathlib.Path, *, loss: str = "eval", params_key: str = "active_non_embedding",
              keep: Callable[[dict], bool] | None = None) -> Runs:
    """Parse a JSONL results file; errors name the line and the missing or bad field.

    Lines that are blank are skipped; a line whose ``status`` is present and not
    ``"ok"``/``"done"``/``"finished"`` is skipped too (unfinished run). A ``run_id`` read twice is an
    error (concatenated or re-appended results would count each repeat as another seed). Non-finite
    losses are an error (a diverged run should be excluded by the sweep, not
    silently fitted). ``keep(record)`` (the parsed JSON object), when given,
    selects which lines to read.
    """
    path = pathlib.Path(path)
    if loss not in ("eval", "train"):
        raise ValueError(f"loss must be 'eval' or 'train', got {loss=!r}")
    check_params_key(params_key)
    if not path.exists():
        raise FileNotFoundError(f"results file not found: {path}")
    cols: dict[str, list] = {k: [] for k in ("arch", "n_experts", "top_k", "params", "params_total", "tokens",
                                             "budget_flops", "compute_flops", "loss", "budget_inferred")}
    first_line: dict = {}  # run_id -> line it was read on
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"results file {path} is not UTF-8 text (byte {err.start}: {err.reason}); "
                         "expected JSON lines, one run per line") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name}:{lineno}"
        obj = jsonout.loads_object(line, where, hint=" (one run per line)")
        if keep is not None and not keep(obj):
            continue
        flat = _flatten(obj)
        status = _lookup(flat, ("status",))
        if status is not None and str(status).lower() not in ("ok", "done", "finished", "complete", "completed"):
            continue
        run_id = obj.get("run_id")
        if run_id is not None:  # the sweep's id of a run (validation/arith/sweep.py); a repeat would count as a seed
            if run_id in first_line:
                raise ValueError(f"{where}: run_id {run_id!r} is already on line {first_line[run_id]}; "
                                 "drop the repeated record (a run recorded twice counts as two seeds)")
            first_line[run_id] = lineno

        def need(field: str, names=None):
            names = names or FIELDS[field]
            v = _lookup(flat, names)
            if v is None:
                nulls = _null_keys(flat, names)
                raise ValueError(f"{where}: {field} is null ({', '.join(nulls)})" if nulls else
                                 f"{where}: missing {field} (looked for {', '.join(names)})")
            return v

        n_exp = _lookup(flat, FIELDS["n_experts"])
        n_exp = None if n_exp is None else _count(n_exp, "n_experts", where)
        top_k = _lookup(flat, FIELDS["top_k"])
        top_k = None if top_k is None else _count(top_k, "top_k", where)
        tag = str(_lookup(flat, FIELDS["arch"]) or "")
        if tag.lower().startswith("moe"):
            m = _MOE_TAG.match(tag)  # "moe-E8k2" carries E and k when the record does not
            for what, given, tagged in (("n_experts", n_exp, m and int(m[1])), ("top_k", top_k, m and int(m[2]))):
                if given is not None and tagged is not None and given != tagged:
                    raise ValueError(f"{where}: {what}={given} disagrees with arch {tag!r}")
            n_exp = n_exp if n_exp is not None else m and int(m[1])
            top_k = top_k if top_k is not None else m and int(m[2])
            if n_exp is None:
                raise ValueError(f"{where}: arch {tag!r} is MoE but the record has no expert count (looked for "
                                 f"{', '.join(FIELDS['n_experts'])}, or an arch tag like 'moe-E8k2')")
        n_exp = 1 if n_exp is None else n_exp
        top_k = 1 if top_k is None else top_k
        if top_k > n_exp > 1:
            raise ValueError(f"{where}: top_k={top_k} exceeds n_experts={n_exp}")
        arch = "moe" if tag.lower().startswith("moe") or n_exp > 1 else "dense"
        n = _number(need("params", PARAM_ALIASES[params_key]), params_key, where)
        total = _lookup(flat, FIELDS["params_total"])
        d = _number(need("tokens"), "tokens", where)
        fpt = _lookup(flat, FIELDS["flops_per_token"])
        comp = _lookup(flat, FIELDS["compute_flops"])
        budget = _lookup(flat, FIELDS["budget_flops"])
        if comp is None:
            comp = _number(fpt, "flops_per_token", where) * d if fpt is not None else budget
        inferred = budget is None
        if budget is None:
            budget = comp
        if budget is None:
            raise ValueError(f"{where}: missing budget_flops (looked for {', '.join(FIELDS['budget_flops'])}) "
                             "and no compute to infer it from")
        lv = _number(need(loss), f"{loss} loss", where)
        if not math.isfinite(lv):
            raise ValueError(f"{where}: non-finite {loss} loss {lv!r}; drop diverged runs from the sweep")
        if not lv > 0:
            raise ValueError(f"{where}: {loss} loss must be positive (a cross-entropy), got {lv!r}")
        total = _number(total, "params total", where) if total is not None else n
        for what, v in (("params", n), ("params total", total), ("tokens", d),
                        ("budget_flops", _number(budget, "budget_flops", where)),
                        ("compute_flops", _number(comp, "compute_flops", where))):
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{where}: {what} must be finite and positive, got {v!r}")
        cols["arch"].append(str(arch))
        cols["n_experts"].append(n_exp)
        cols["top_k"].append(top_k)
        cols["params"].append(n)
        cols["params_total"].append(total)
        cols["tokens"].append(d)
        cols["budget_flops"].append(_number(budget, "budget_flops", where))
        cols["compute_flops"].append(_number(comp, "compute_flops", where))
        cols["loss"].append(lv)
        cols["budget_inferred"].append(inferred)
    if not cols["loss"]:
        raise ValueError(f"{path}: no finished runs")
    return Runs(**{k: np.array(v) for k, v in cols.items()}, params_key=params_key, loss_key=loss,
                source=str(path))


def write_synthetic(path: str | pathlib.Path, laws_by_group: Mapping[tuple[str, int, int], object],
                    budgets: Iterable[float], *, per_budget: int = 7, span_decades: float = 1.0,
                    noise: float = 0.0, seed: int = 0, flops_per_param_token: float = 6.0,
                    embedding_params: float = 0.0) -> pathlib.Path:
    """Write IsoFLOP runs drawn from known laws, in the sweep's JSONL layout (for tests and demos).

    ``laws_by_group`` maps ``(arch, n_experts, top_k)`` to a law with
    ``loss(N, D)`` and ``optimal(C).params``; runs spread N over
    ``+-span_decades`` around each budget's optimum, ``D = C / (c_f N)``, and
    multiply the loss by ``exp(noise * standard normal)``. ``embedding_params`` is added to the
    non-embedding count for the records' ``params_active`` and ``params_total``.
    """
    rng = np.random.default_rng(seed)
    path = pathlib.Path(path)
    lines = []
    for (arch, e, k), law in laws_by_group.items():
        for c in budgets:
            n0 = float(np.asarray(law.optimal(c).params))
            for n in n0 * np.logspace(-span_decades, span_decades, per_budget):
                d = c / (flops_per_param_token * n)
                l = float(np.asarray(law.loss(n, d))) * math.exp(noise * rng.standard_normal())
                lines.append(json.dumps({  # the sweep's record layout (validation/arith/sweep.py)
                    "arch": "dense" if arch == "dense" else f"moe-E{e}k{k}", "budget_flops": c,
                    "config": {"model": {"n_experts": e, "top_k": k}},
                    "params_active_non_embedding": n, "params_active": n + embedding_params,
                    "params_total": n * (e / k if arch == "moe" else 1) + embedding_params,
                    "flops_per_token_train": flops_per_param_token * n, "tokens": d, "flops": c,
                    "train_loss": l, "held_out_loss": l}))
    path.write_text("\n".join(lines) + "\n")
    return path
