"""Experiment plans: YAML data naming a grid of cells (method x seed x draw) and the budgets to run it at.

A plan (shipped in `isd/plans/NAME.yaml`, or any YAML file) has:

    description: what the grid shows
    queries: test | holdout        # what the kNN queries and the probe's val set are
    set: {key: value}              # config values for every cell (optional)
    methods:                       # one entry per row of the table
      NAME: {recipe: R, set: {..}, floor: raw-pixels | random-init | teacher, seeds: [..]}
    seeds: [0, 1, 2]
    draws: [1, 2]                  # optional: unbalanced draws (config key `draw`)
    baseline: NAME                 # optional: a trained row the report compares every other row with, by seed
    budgets:
      NAME: {about: text, seeds: [..], draws: [..], set: {..}, eval_images: N}

`eval_images` caps the bank and the queries of each cell's final evaluation at N images (a quick check of the
machinery); without it the final evaluation uses all of them, whatever `eval_max_images` does for the
per-epoch curve.

A cell's config: the method's recipe, then the plan's `set`, the method's `set`, the budget's `set`, and last
its seed, draw and run folder. A method's `set` and a budget's `set` may not give one key two values (the
budget's would silently replace the row's change): a key that rows vary belongs in the plan's `set`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from isd.config import Config, build_config
from isd.errors import SettingError, UsageError

FLOORS = ("raw-pixels", "random-init", "teacher")  # rows evaluated without training; teacher: the config's
# distillation teacher as it is


@dataclass
class Cell:
    plan: str
    budget: str
    method: str  # the row name in the plan (a method, a variant of one, or a floor)
    seed: int
    draw: int | None
    recipe: str | None
    floor: str | None
    values: dict[str, Any] = field(default_factory=dict)  # config values after the recipe, in order
    eval_images: int = 0  # cap of the final evaluation's bank and queries (0 = all)

    @property
    def name(self) -> str:
        draw = f"-draw{self.draw}" if self.draw is not None else ""
        return f"{self.method}{draw}-seed{self.seed}"

    def labels(self) -> dict[str, str]:
        return {"method": self.method, "seed": str(self.seed), "draw": "" if self.draw is None else str(self.draw),
                "name": self.name}

    def config(self, run_dir: Path, data: str = "", files_exist: bool = True) -> Config:
        values = dict(self.values)
        if data:
            values["data"] = data
        values.update(seed=self.seed, run_dir=str(run_dir))
        if self.draw is not None:
            values["draw"] = self.draw
        return build_config(self.recipe, values, files_exist=files_exist)


@dataclass
class Plan:
    name: str
    description: str
    queries: str
    methods: dict[str, dict[str, Any]]
    seeds: list[int]
    draws: list[int] | None
    budgets: dict[str, dict[str, Any]]
    common: dict[str, Any]
    baseline: str | None = None

    def budget(self, name: str) -> dict[str, Any]:
        if name not in self.budgets:
            raise SettingError("plan {plan_name!r} has no budget {name!r} ({budget}); it has: {names}",
                               plan_name=self.name, name=name, names=", ".join(self.budgets))
        return self.budgets[name]

    def planned_pairs(self, budget: str) -> int:
        """How many seeds (or draws, on unbalanced plans) the budget's claims are read at: a grid run in stages
        over sessions reports its verdicts before that as interim."""
        spec = self.budget(budget)
        draws = spec.get("draws", self.draws)
        return len(draws) if draws else len(spec.get("seeds", self.seeds))

    def cells(self, budget: str) -> list[Cell]:
        """Every cell of the grid at `budget`, seeds outermost: a partial run fills whole seeds first."""
        spec = self.budget(budget)
        seeds = spec.get("seeds", self.seeds)
        draws = spec.get("draws", self.draws) or [None]
        out = []
        for seed in seeds:
            for draw in draws:
                for method, entry in self.methods.items():
                    if seed not in entry.get("seeds", seeds):
                        continue
                    values = {**self.common, **entry.get("set", {}), **spec.get("set", {})}
                    out.append(Cell(self.name, budget, method, int(seed), draw, entry.get("recipe"),
                                    entry.get("floor"), values, int(spec.get("eval_images", 0))))
        return out


def plan_names() -> list[str]:
    folder = resources.files("isd") / "plans"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_plan(name_or_path: str) -> Plan:
    """A shipped plan by name, or a YAML file by path; checked whole before anything runs."""
    path = Path(name_or_path)
    if name_or_path in plan_names():
        text, name = (resources.files("isd") / "plans" / f"{name_or_path}.yaml").read_text(), name_or_path
    elif path.suffix in (".yaml", ".yml") and path.is_file():
        text, name = path.read_text(), path.stem
    else:
        raise SettingError("unknown plan {name!r} ({plan}): use one of {names} or a path to a plan .yaml file",
                           name=name_or_path, names=", ".join(plan_names()))
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise UsageError(f"plan {name_or_path} is not valid YAML ({str(err).splitlines()[0]})") from None
    plan = _from_dict(name, raw, name_or_path)
    _check(plan, name_or_path)
    return plan


def _from_dict(name: str, raw: Any, origin: str) -> Plan:
    if not isinstance(raw, dict) or not isinstance(raw.get("methods"), dict) or not raw["methods"]:
        raise UsageError(f"plan {origin} needs a 'methods' mapping (NAME: {{recipe: ...}})")
    unknown = sorted(set(raw) - {"description", "queries", "set", "methods", "seeds", "draws", "budgets",
                              "baseline"})
    if unknown:
        raise UsageError(f"plan {origin}: unknown keys {unknown}")
    methods = {str(k): (v or {}) for k, v in raw["methods"].items()}
    return Plan(name=name, description=str(raw.get("description", "")).strip(), queries=raw.get("queries", "test"),
                methods=methods, seeds=[int(s) for s in raw.get("seeds", [0])],
                draws=[int(d) for d in raw["draws"]] if raw.get("draws") else None,
                budgets={str(k): (v or {}) for k, v in (raw.get("budgets") or {}).items()},
                common=dict(raw.get("set") or {}),
                baseline=None if raw.get("baseline") is None else str(raw["baseline"]))


def _check(plan: Plan, origin: str) -> None:
    """Resolve every cell's config once, so a typo in any cell fails now, naming the plan, budget and cell."""
    if plan.queries not in ("test", "holdout"):
        raise UsageError(f"plan {origin}: queries must be test or holdout, got {plan.queries!r}")
    if plan.baseline is not None and (plan.baseline not in plan.methods or plan.methods[plan.baseline].get("floor")):
        trained = [name for name, entry in plan.methods.items() if not entry.get("floor")]
        raise UsageError(f"plan {origin}: baseline {plan.baseline!r} must name one of its trained rows: "
                         f"{', '.join(trained)}")
    if not plan.budgets:
        raise UsageError(f"plan {origin} has no budgets (e.g. budgets: {{smoke: {{set: {{epochs: 1}}}}}})")
    for name, entry in plan.methods.items():
        unknown = sorted(set(entry) - {"recipe", "set", "floor", "seeds"})
        if unknown:
            raise UsageError(f"plan {origin}, method '{name}': unknown keys {unknown} (use recipe, set, floor, seeds)")
        if entry.get("floor") not in (None, *FLOORS):
            raise UsageError(f"plan {origin}, method '{name}': floor must be one of {', '.join(FLOORS)}")
    for budget, spec in plan.budgets.items():
        unknown = sorted(set(spec) - {"about", "seeds", "draws", "set", "eval_images"})
        if unknown:
            raise UsageError(f"plan {origin}, budget '{budget}': unknown keys {unknown} "
                             f"(use about, seeds, draws, set, eval_images)")
        for method, entry in plan.methods.items():
            row, length = entry.get("set") or {}, spec.get("set") or {}
            clash = sorted(key for key in set(row) & set(length) if row[key] != length[key])
            if clash:  # the budget's value would silently replace the row's: the row would not be what it says
                raise UsageError(f"plan {origin}: method '{method}' sets {', '.join(clash)}, which budget '{budget}' "
                                 f"sets too, and the budget's value wins; set it in the plan's `set` instead of the "
                                 f"budget's, or leave it out of the method's")
        images = spec.get("eval_images", 0)
        if not isinstance(images, int) or isinstance(images, bool) or images < 0:
            raise UsageError(f"plan {origin}, budget '{budget}': eval_images must be a whole number ≥ 0 "
                             f"(0 = all), got {images!r}")
        for cell in plan.cells(budget):
            try:
                cell.config(Path("runs/check"), data="check", files_exist=False)  # a teacher may be another plan's
            except UsageError as err:
                raise UsageError(f"plan {origin}, budget '{budget}', cell {cell.name}: {err}") from None


def select(cells: list[Cell], only: str | None = None, shard: str | None = None) -> list[Cell]:
    """`only` = 'method=isd,seed=1' keeps the matching cells; `shard` = 'i/n' keeps every n-th from the i-th."""
    if only:
        wanted: dict[str, set[str]] = {}
        for part in only.split(","):
            key, sep, value = part.partition("=")
            if not sep or key.strip() not in ("method", "seed", "draw", "name"):
                raise SettingError("{only} {given}: expected KEY=VALUE pairs with keys method, seed, draw, name (e.g. "
                                   "{only} method=isd,seed=1)", given=only)
            wanted.setdefault(key.strip(), set()).add(value.strip())
        cells = [c for c in cells if all(c.labels()[k] in v for k, v in wanted.items())]
    if shard:
        index, sep, count = shard.partition("/")
        if not (sep and index.isdigit() and count.isdigit() and 1 <= int(index) <= int(count)):
            raise SettingError("{shard} {given}: expected I/N with 1 <= I <= N (e.g. {shard} 2/5)", given=shard)
        cells = cells[int(index) - 1::int(count)]
    return cells
