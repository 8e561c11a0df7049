"""A table's recipe: every setting that decides what its numbers mean, as one value.

A recipe's defaults belong to the device profile (`latency.devices.defaults`): the local CPU
and a Raspberry Pi are measured differently, for measured reasons (`docs/measuring.md`). A
command-line flag overrides only its own field. The table stores its recipe as one JSON row of
its meta; a resumed build starts from the stored recipe, and `check_resume` names every field
a command asks differently, with the flag that would match the table.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

from .devices.base import TimingSettings
from .smoothing import EDGE_MODES, ESTIMATOR_COLUMNS, ESTIMATORS

#: the meta key the recipe is stored under
RECIPE_META_KEY = "recipe"
CONTEXTS = ("network", "alone")
DEVICE_KINDS = ("local", "ssh")


class RecipeError(ValueError):
    """A recipe that cannot be used, or one a table cannot continue with."""


@dataclass(frozen=True)
class TableRecipe:
    """How a table's cells are chosen, timed and combined (defaults: the thesis's method)."""

    device_kind: str = "ssh"  # "local" (this CPU) or "ssh": their timings never mix in one table
    grid_step: int = 1  # every K-th channel count plus the edges; the rest interpolated
    grid_block: int = 0  # also N - 1, N, N + 1 around every multiple N (runtime channel blocks)
    context: str = "alone"  # cells timed back to back, or as inside a network
    evict_bytes: int = 0  # network context: bytes written over the caches before each invocation
    vector_s: float = 0.0  # network context: dense vector arithmetic before each invocation, seconds
    passes: int = 3  # passes over all cells, each in a freshly shuffled order
    runs: int = 50  # timed invocations per model and pass
    placements: int = 1  # loads of each model per pass, each elsewhere in memory; the fastest counts
    warmup: int = 2  # untimed invocations before them
    threads: int = 1  # interpreter threads
    min_time_s: float = 0.0  # time more than `runs` invocations until this much is timed
    cooldown_s: float = 0.0  # pause between two timed models (a fixed sleep)
    estimator: str = "mean"  # how a cell's passes combine into its value
    sigma: float = 3.0  # Gaussian smoothing over the (c_in, c_out) grid, channels; 0 = off
    edges: str = "linear"  # smoothing at the grid's edges

    def __post_init__(self) -> None:
        check(self)

    def replace(self, **changes: Any) -> "TableRecipe":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TableRecipe":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RecipeError(f"the stored recipe has fields this version does not know: {', '.join(unknown)} "
                              "(the table was written by a newer version)")
        return cls(**{k: v for k, v in data.items()})

    @property
    def in_network(self) -> bool:
        return self.context == "network"

    @property
    def grid(self) -> str:
        return "full" if self.grid_step == 1 else f"step:{self.grid_step}"

    def timing(self, partners: tuple[bytes, ...] = ()) -> TimingSettings:
        """What a device needs to time one model as this recipe says (`partners`: the models
        run before each invocation in a network context, `latency.context.partner_models`)."""
        if self.in_network and not partners:
            raise RecipeError("a network context needs the architecture's partner models")
        return TimingSettings(runs=self.runs, warmup=self.warmup, threads=self.threads, cooldown_s=self.cooldown_s,
                              min_time_s=self.min_time_s, partners=partners if self.in_network else (),
                              evict_bytes=self.evict_bytes, placements=self.placements,
                              vector_s=self.vector_s if self.in_network else 0.0)


def _finite(name: str, value: Any, low: float, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < low:
        raise RecipeError(f"{name} must be a finite number >= {low:g} ({what}), got {value!r}")


def check(r: TableRecipe) -> None:
    """Raises RecipeError naming the first field out of range."""
    if r.device_kind not in DEVICE_KINDS:
        raise RecipeError(f"device kind must be one of {DEVICE_KINDS}, got {r.device_kind!r}")
    for name, low in (("grid_step", 1), ("passes", 1), ("runs", 1), ("placements", 1), ("threads", 1), ("warmup", 0),
                      ("grid_block", 0), ("evict_bytes", 0)):
        value = getattr(r, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise RecipeError(f"{FLAGS[name][0] or name} must be an integer >= {low}, got {value!r}")
    _finite("--sigma", r.sigma, 0, "Gaussian smoothing in channels; 0 = off")
    _finite("--min-time-ms", r.min_time_s, 0, "minimum timed duration per model")
    _finite("cooldown_s", r.cooldown_s, 0, "seconds between two timed models")
    v = r.vector_s
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        shown = f"{v * 1e6:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else repr(v)
        raise RecipeError(f"--vector-us must be a finite number of microseconds >= 0, got {shown}")
    if r.context not in CONTEXTS:
        raise RecipeError(f"--context must be one of {CONTEXTS}, got {r.context!r}")
    if r.estimator not in ESTIMATORS:
        raise RecipeError(f"--estimator must be one of {tuple(ESTIMATORS)}, got {r.estimator!r}")
    if r.edges not in EDGE_MODES:
        raise RecipeError(f"--edges must be one of {EDGE_MODES}, got {r.edges!r}")
    if r.in_network and r.min_time_s:
        raise RecipeError("--min-time-ms applies to --context alone; in a network context every cell is timed "
                          "exactly --runs times")
    if r.context == "alone" and r.evict_bytes:
        raise RecipeError("evict_bytes applies to the network context only")
    if r.context == "alone" and r.vector_s:
        raise RecipeError("--vector-us applies to --context network only (back to back, a cell's own "
                          "invocations come before each other)")


# field -> (the flag that sets it, how its value is spelled on the command line); no flag:
# a device-profile field or a value derived from the device
FLAGS: dict[str, tuple[str | None, Any]] = {
    "device_kind": (None, None),
    "grid_step": ("--grid", lambda v: "full" if v == 1 else f"step:{v}"),
    "grid_block": ("--block", str),
    "context": ("--context", str),
    "evict_bytes": (None, None),
    "vector_s": ("--vector-us", lambda v: f"{v * 1e6:g}"),
    "passes": ("--passes", str),
    "runs": ("--runs", str),
    "placements": ("--placements", str),
    "warmup": ("--warmup", str),
    "threads": ("--threads", str),
    "min_time_s": ("--min-time-ms", lambda v: f"{v * 1000:g}"),
    "cooldown_s": (None, None),
    "estimator": ("--estimator", str),
    "sigma": ("--sigma", lambda v: f"{v:g}"),
    "edges": ("--edges", str),
}
#: fields that decide how a cell is measured: a table continues only with the same values
MEASURED_FIELDS = ("device_kind", "grid_step", "grid_block", "context", "evict_bytes", "vector_s", "runs",
                   "placements", "warmup", "threads", "min_time_s")


def flag_for(field: str, value: Any) -> str:
    """`--runs 20` for ("runs", 20); a field without a flag is named with its value."""
    flag, spell = FLAGS[field]
    return f"{flag} {spell(value)}" if flag else f"{field} = {value!r}"


def check_resume(stored: TableRecipe, asked: TableRecipe, where: str) -> None:
    """Refuses to continue a table measured with `stored` under `asked` when any measured
    field differs; the message names each field and the flag that matches the table."""
    diff = [f for f in MEASURED_FIELDS if getattr(stored, f) != getattr(asked, f)]
    if asked.passes < stored.passes:
        diff.append("passes")  # more passes extend a table; fewer would hide measured ones
    if not diff:
        return
    lines = []
    for f in diff:
        s, a = getattr(stored, f), getattr(asked, f)
        if f == "device_kind":
            lines.append(f"its cells were timed on {'the local CPU' if s == 'local' else 'SSH devices'}, "
                         f"not on {'the local CPU' if a == 'local' else 'SSH devices'} (use --device "
                         f"{'local' if s == 'local' else 'with one of its SSH devices'})")
        elif f == "evict_bytes":
            lines.append(f"evict_bytes: {s} in the table, {a} on this device (its L2 cache differs: continue it "
                         "on the machine it was started on)")
        elif f == "passes":
            lines.append(f"passes: {s} measured in the table, {a} asked (pass {flag_for(f, s)} or more)")
        else:
            lines.append(f"{f}: {s!r} in the table, {a!r} asked (pass {flag_for(f, s)} to continue it)")
    raise RecipeError(f"{where} was measured with another recipe: " + "; ".join(lines) +
                      ". Or choose another --out to start a new table")


def resolve(profile: TableRecipe, stored: TableRecipe | None, overrides: Mapping[str, Any],
            alone_min_time_s: float = 0.0) -> TableRecipe:
    """The recipe a build asks for: the stored recipe of a table being continued (else the
    device profile's), with the fields given on the command line (`overrides`, None: not given).

    A context changed on the command line brings its own minimum timed duration (the
    profile's `alone_min_time_s` back to back, none in a network) unless one is given too."""
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - {k for k, (flag, _) in FLAGS.items() if flag}
    if unknown:
        raise RecipeError(f"no recipe fields {sorted(unknown)}")
    base = stored or profile
    given["device_kind"] = profile.device_kind  # where it is measured now (a mismatch is refused)
    if "context" in given and given["context"] != base.context:
        if "min_time_s" not in given:
            # the minimum timed duration belongs to the back-to-back context
            given["min_time_s"] = alone_min_time_s if given["context"] == "alone" else 0.0
        if given["context"] == "alone":  # what runs before an invocation belongs to the network context
            given.setdefault("evict_bytes", 0)
            given.setdefault("vector_s", 0.0)
    if "estimator" in given and "sigma" not in given and (
            ESTIMATOR_COLUMNS[given["estimator"]] != ESTIMATOR_COLUMNS[base.estimator]):
        given["sigma"] = default_sigma(given["estimator"])  # smoothing belongs to the estimator's kind
    try:
        return dataclasses.replace(base, **given)
    except TypeError as exc:  # pragma: no cover - guarded by the unknown check above
        raise RecipeError(str(exc)) from exc


def default_sigma(estimator: str) -> float:
    """3 channels (the thesis) for the estimators of pass means; 0 for those of the fastest
    invocations, whose cells reproduce closely and where smoothing only blurs the runtime's
    channel-block steps (docs/measuring.md)."""
    return 0.0 if ESTIMATOR_COLUMNS[estimator] == "fastest" else 3.0


# ---------------------------------------------------------------------------- stored form

def recipe_from_meta(meta: Mapping[str, Any], first_run_settings: Mapping[str, Any] | None = None) -> TableRecipe:
    """The recipe of a table's meta: its recipe row, or for a table written before recipes
    existed, the same values gathered from its loose meta keys and its first run's settings."""
    if RECIPE_META_KEY in meta:
        return TableRecipe.from_json(meta[RECIPE_META_KEY])
    return legacy_recipe(meta, first_run_settings or {})


def legacy_recipe(meta: Mapping[str, Any], run: Mapping[str, Any]) -> TableRecipe:
    """What a table of the version before recipes was measured with (pure: meta and the first
    run's `settings` JSON in, recipe out)."""
    context = meta.get("cell_context") or {"context": "alone", "evict_bytes": 0}
    estimator = meta.get("estimator") or "mean"
    local = (run.get("kind") or ("ssh" if meta.get("device") else "local")) == "local"
    sigma = meta.get("sigma")
    return TableRecipe(
        device_kind="local" if local else "ssh",
        grid_step=int(meta.get("grid_step") or 1),
        grid_block=int(meta.get("grid_block") or 0),
        context=context.get("context") or "alone",
        evict_bytes=int(context.get("evict_bytes") or 0),
        passes=int(meta.get("passes") or run.get("passes") or 3),
        runs=int(run.get("runs") or run.get("num_runs") or 50),
        warmup=int(run.get("warmup") if run.get("warmup") is not None else 2),
        threads=int(run.get("threads") or 1),
        min_time_s=float(run.get("min_time_s") or 0.0),
        cooldown_s=float(run.get("cooldown_s") or 0.0),
        estimator=estimator,
        sigma=float(sigma) if sigma is not None else default_sigma(estimator),
        edges=meta.get("smoothing_edges") or "nearest",  # the thesis's filter, before edge modes existed
    )


#: the loose meta keys the recipe row replaces
LEGACY_META_KEYS = ("grid_step", "grid_block", "cell_context", "passes", "sigma", "smoothing_edges", "estimator")


def recipe_json(recipe: TableRecipe) -> str:
    return json.dumps(recipe.to_json(), sort_keys=True)
