"""The codec between flat fields and a `Recipe`: one point of a sweep, one `q4lab quantize`
command line, one results row — the same fields, the same recipe, the same config hash.

A point is a flat dict of the fields in `FIELDS`; missing fields take their defaults. The recipe
fields describe one rule for every layer; ``rules`` puts exceptions ahead of it, each a dict
``{"pattern": regex, field: value, ...}`` overriding any of `RULE_FIELDS` (the rest inherit the
point's values) or ``{"pattern": regex, "quantizer": None}`` to keep the matching layers float.
First match wins, as in `Recipe`.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from q4lab.core import QuantSpec
from q4lab.qat import QATConfig
from q4lab.quantizers import range_quantizers
from q4lab.recipe import ACT_MODES, ActSpec, Recipe, Rule, TransformSpec

Point = dict[str, Any]

# field -> (default, what it means); the order is the column order of a point
FIELDS: dict[str, tuple[Any, str]] = {
    "task": (None, "a registered task name (required)"),
    "seed": (0, "the float baseline's and the data split's seed"),
    "quantizer": ("minmax", "a registered quantizer name"),
    "options": ({}, "the quantizer's options, e.g. {'act_order': True}"),
    "bits": (4, "weight bits, 2..8"),
    "symmetric": (True, "signed weight codes, or unsigned with a zero point"),
    "group_size": (0, "weight group size along the input axis; 0 = per-channel"),
    "zero_point": (
        "auto",
        "asymmetric weights' zero points: int (packed as codes), float (real-valued, held as "
        "scales are), or auto: the quantizer's own (float for HQQ, int for the others)",
    ),
    "symmetric_grid": (
        "max",
        "symmetric weights' grid: max (amax on the largest code, QuaRot) or half_step (amax half "
        "a step beyond it: a step 1/(2^b - 1) of [-amax, amax], as GPTQ's reference and "
        "PyTorch's observers)",
    ),
    "scale_dtype": ("float16", "dtype of the stored scales"),
    "act_bits": (16, "activation bits; 16 keeps activations in float"),
    "act_mode": ("dynamic", "activation ranges at run time or from calibration: dynamic, static"),
    "act_symmetric": (True, "signed activation codes, or with a zero point"),
    "act_clipping": ("minmax", "the clipping quantizer choosing activation ranges"),
    "act_clipping_options": ({}, "its options, e.g. {'percentile': 99.9}"),
    "rotation": ("none", "input rotation folded into each dense layer: none, hadamard"),
    "smooth_alpha": (0.0, "SmoothQuant's migration strength in (0, 1] (dense layers); 0 = off"),
    "rules": (
        [],
        "per-layer rules ahead of the fields above, first match wins: [{'pattern': regex, "
        "'bits': 8, ...}] overrides recipe fields; {'pattern': regex, 'quantizer': None} "
        "keeps layers float",
    ),
    "bits_budget": (
        0.0,
        "mixed precision: average stored bits per quantized weight; each layer's width is "
        "allocated from its measured sensitivity (0 = every layer at `bits`)",
    ),
    "budget_widths": ([2, 3, 4], "the weight widths a bits_budget allocation chooses from"),
    "budget_groups": (
        [],
        "the group sizes a bits_budget allocation chooses from (0 = per-channel), with every "
        "width; [] = the point's group_size only",
    ),
    "budget_method": (
        "knapsack",
        "the allocator: knapsack (exact up to 2**17 byte units, then costs rounded up) or greedy",
    ),
    "sequential": (True, "calibrate each layer with the earlier layers already quantized"),
    "calib_size": (0, "calibration examples to use; 0 = the task's whole calibration split"),
    "calib_padding": (
        "include",
        "whether calibration statistics count padded positions: include, or exclude (only the "
        "positions a task's row_mask() marks as holding data: minilm's tokens)",
    ),
    "qat_steps": (0, "quantization-aware training steps after quantizing; 0 = post-training only"),
    "qat_lr": (1e-4, "peak learning rate of quantization-aware training (AdamW, cosine)"),
    "qat_method": ("lsq", "ste (steps frozen) or lsq (steps learned, Esser et al. 2020)"),
    "qat_loss": ("task", "task (the task's loss, with labels) or distill (to the float model)"),
    "qat_batch_size": (64, "training batch size of quantization-aware training"),
}
QAT_FIELDS = tuple(name for name in FIELDS if name.startswith("qat_"))
# fields added after tables were published: left out of the hash at their default
BUDGET_FIELDS = ("bits_budget", "budget_widths", "budget_groups", "budget_method")
LATE_FIELDS = (
    "rotation",
    "smooth_alpha",
    "rules",
    *BUDGET_FIELDS,
    "zero_point",
    "symmetric_grid",
    "calib_padding",
)
ZERO_POINT_VALUES = ("auto", "int", "float")
# the fields a per-layer rule may override
RULE_FIELDS = (
    "quantizer",
    "options",
    "bits",
    "symmetric",
    "group_size",
    "zero_point",
    "symmetric_grid",
    "scale_dtype",
    "act_bits",
    "act_mode",
    "act_symmetric",
    "act_clipping",
    "act_clipping_options",
    "rotation",
    "smooth_alpha",
)


def with_defaults(point: Point) -> Point:
    """Every field of `FIELDS`, in order; missing ones take their defaults."""
    return {name: point.get(name, default) for name, (default, _) in FIELDS.items()}


def check_field_names(
    names: Sequence[str], where: str, allowed: Sequence[str] = (), kind: str = "field"
) -> None:
    """Raise a ValueError naming the first unknown field (or other ``kind`` of name), with a
    close match, and the allowed."""
    allowed = list(allowed or FIELDS)
    for name in names:
        if name not in allowed:
            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"{where}: unknown {kind} {name!r}{hint}; allowed: {', '.join(allowed)}"
            )


def _canonical(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def config_hash(point: Point) -> str:
    """A stable 16-hex-digit name of a point's full configuration (defaults included). The
    training fields of a post-training point (``qat_steps=0``), the budget fields of a uniform
    one (``bits_budget=0``) and the `LATE_FIELDS` at their default are left out: they change
    nothing, and the tables published before they existed keep their names."""
    full = with_defaults(point)
    if not full["qat_steps"]:
        full = {k: v for k, v in full.items() if k not in QAT_FIELDS}
    if not full["bits_budget"]:
        full = {k: v for k, v in full.items() if k not in BUDGET_FIELDS}
    full = {
        k: v
        for k, v in full.items()
        if k not in LATE_FIELDS or _canonical(v) != _canonical(FIELDS[k][0])
    }
    text = json.dumps(_canonical(full), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


ACT_FIELDS = ("act_mode", "act_symmetric", "act_clipping", "act_clipping_options")


def inert_fields(point: Point) -> list[str]:
    """The fields of ``point`` set away from their defaults that change nothing it runs: the
    activation fields of a weight-only point (``act_bits=16``), ``bits`` beside a
    ``bits_budget`` (the allocation chooses every width) and ``group_size`` beside its
    ``budget_groups`` (and every group size), ``options`` that are the quantizer's defaults, a
    ``zero_point`` with symmetric
    weights, or naming the quantizer's own kind. Two points differing only in these are one
    configuration under two hashes. A point
    with ``rules`` has none: a rule inherits the point's fields (a rule's ``act_bits=4`` takes
    the point's ``act_mode``)."""
    p = with_defaults(point)
    if p["rules"]:
        return []
    inert = [
        f
        for f in ACT_FIELDS
        if p["act_bits"] == 16 and _canonical(p[f]) != _canonical(FIELDS[f][0])
    ]
    if p["bits_budget"] and p["bits"] != min(p["budget_widths"]):
        inert.append("bits")
    if p["bits_budget"] and p["budget_groups"] and p["group_size"] != min(p["budget_groups"]):
        inert.append("group_size")
    if p["options"]:  # options at the quantizer's defaults: {"p": 2.0} for mse is {}
        try:
            same = (
                recipe_of(p).base.build_quantizer()
                == recipe_of(p | {"options": {}}).base.build_quantizer()
            )
        except (TypeError, ValueError):  # e.g. an own quantizer with an option it requires
            same = False
        inert += ["options"] if same else []
    if p["zero_point"] != "auto":  # the quantizer's own kind asked for by name
        try:
            same = recipe_of(p) == recipe_of(p | {"zero_point": "auto"})
        except ValueError:
            same = False
        inert += ["zero_point"] if same else []
    return inert


def effective_hash(point: Point) -> str:
    """`config_hash` of the point with its `inert_fields` at their defaults (``bits`` and
    ``group_size`` beside a budget: its narrowest width, its smallest group size): equal for
    points that run the same configuration."""
    p = with_defaults(point)
    reset = {f: FIELDS[f][0] for f in inert_fields(p)}
    if "bits" in reset:
        reset["bits"] = min(p["budget_widths"])
    if "group_size" in reset:
        reset["group_size"] = min(p["budget_groups"])
    return config_hash(p | reset)


def _check_act_fields(p: Point) -> None:
    """The activation fields name valid values, at 16 bits too: there a typo ("dynamc") would
    pass unused and make a new point that reruns the float-activation one."""
    bits, mode, clipping = p["act_bits"], p["act_mode"], p["act_clipping"]
    if bits != 16 and (type(bits) is not int or not 2 <= bits <= 8):
        raise ValueError(
            f"act_bits={bits!r} is invalid; allowed: an int in 2..8, or 16 (float activations)"
        )
    if mode not in ACT_MODES:
        raise ValueError(f"act_mode={mode!r} is invalid; allowed: {', '.join(ACT_MODES)}")
    if clipping not in range_quantizers():
        raise ValueError(
            f"act_clipping={clipping!r} is invalid; allowed: {', '.join(range_quantizers())} "
            "(a clipping quantizer: one that picks a range without calibration statistics)"
        )


def _zero_point(p: Point) -> str:
    """The `QuantSpec.zero_point` of the ``zero_point`` field ("auto": int, which a `Rule`
    turns to float for a quantizer that fits real-valued zero points)."""
    zero_point = p["zero_point"]
    if zero_point not in ZERO_POINT_VALUES:
        raise ValueError(
            f"zero_point={zero_point!r} is invalid; allowed: {', '.join(ZERO_POINT_VALUES)}"
        )
    if zero_point == "float" and p["symmetric"]:
        raise ValueError(
            "zero_point='float' is invalid with symmetric=True (symmetric codes have no zero "
            "point); allowed: symmetric=False, or zero_point 'auto' or 'int'"
        )
    return "float" if zero_point == "float" else "int"


def _rule(p: Point, pattern: str) -> Rule:
    """The rule of the recipe fields of ``p`` (a point with defaults) for ``pattern``."""
    if p["quantizer"] is None:
        return Rule.float(pattern)
    weight = QuantSpec(
        bits=p["bits"],
        symmetric=p["symmetric"],
        group_size=p["group_size"] or None,
        scale_dtype=p["scale_dtype"],
        zero_point=_zero_point(p),
        symmetric_grid=p["symmetric_grid"],
    )
    _check_act_fields(p)
    act = None
    if p["act_bits"] != 16:
        act = ActSpec(
            bits=p["act_bits"],
            mode=p["act_mode"],
            granularity="per_row" if p["act_mode"] == "dynamic" else "per_tensor",
            symmetric=p["act_symmetric"],
            clipping=p["act_clipping"],
            clipping_options=p["act_clipping_options"],
        )
    transform = None
    if p["rotation"] != "none" or p["smooth_alpha"]:
        transform = TransformSpec(
            rotation=p["rotation"], smooth_alpha=p["smooth_alpha"] or None, seed=p["seed"]
        )
    rule = Rule(
        pattern=pattern,
        quantizer=p["quantizer"],
        options=p["options"],
        weight=weight,
        act=act,
        transform=transform,
    )
    if p["zero_point"] == "int" and rule.weight.float_zero:
        raise ValueError(
            f"zero_point='int' is invalid with quantizer {p['quantizer']!r}, which fits "
            "real-valued zero points; allowed: 'auto' or 'float'"
        )
    return rule


def rules_of(point: Point) -> tuple[Rule, ...]:
    """The point's ``rules`` as `Rule`s (without the catch-all rule of its flat fields)."""
    p = with_defaults(point)
    rules = p["rules"]
    if isinstance(rules, str | Mapping) or not isinstance(rules, Sequence):
        raise ValueError(f"rules={rules!r} is invalid; allowed: a list of dicts with a 'pattern'")
    out = []
    for i, override in enumerate(rules):
        where = f"rules[{i}]"
        if not isinstance(override, Mapping) or not isinstance(override.get("pattern"), str):
            raise ValueError(f"{where}={override!r} is invalid; allowed: a dict with a 'pattern'")
        fields = {k: v for k, v in override.items() if k != "pattern"}
        check_field_names(list(fields), where, ["pattern", *RULE_FIELDS])
        if "quantizer" in fields and fields["quantizer"] is None and len(fields) > 1:
            raise ValueError(
                f"{where}={dict(override)!r} is invalid: 'quantizer': None keeps the layers "
                "float; allowed: only 'pattern' beside it"
            )
        if "quantizer" in fields and "options" not in fields:
            fields["options"] = {}  # another quantizer: the point's options are not its own
        try:
            out.append(_rule(p | fields, override["pattern"]))
        except ValueError as err:
            inherited = {  # the rule's other fields are the point's: say which it took
                k: p[k]
                for k in RULE_FIELDS
                if k not in fields and repr(p[k]) != repr(FIELDS[k][0]) and k in str(err)
            }
            took = f" (inherited from the point: {inherited})" if inherited else ""
            raise ValueError(f"{where}: {err}{took}") from None
    return tuple(out)


def recipe_of(point: Point) -> Recipe:
    """The recipe of a point: its ``rules``, then one rule of its flat fields for every layer."""
    p = with_defaults(point)
    return Recipe((*rules_of(p), _rule(p, ".*")), sequential=p["sequential"])


def qat_of(point: Point) -> QATConfig | None:
    """The quantization-aware training of a point, or None (``qat_steps=0``)."""
    p = with_defaults(point)
    if p["qat_steps"] == 0:
        return None
    return QATConfig(
        steps=p["qat_steps"],
        lr=p["qat_lr"],
        method=p["qat_method"],
        loss=p["qat_loss"],
        batch_size=p["qat_batch_size"],
    )


def validate_point(point: Point) -> Recipe:
    """Check a point's fields (task, calibration size, recipe); return its recipe."""
    from q4lab.tasks import available_tasks

    if point["task"] not in available_tasks():
        raise ValueError(
            f"task={point['task']!r} is unknown; allowed: {', '.join(available_tasks())}"
        )
    for name in ("seed", "calib_size"):
        value = point[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}={value!r} is invalid; allowed: an int >= 0")
    steps = point["qat_steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"qat_steps={steps!r} is invalid; allowed: an int >= 0 (0: no training)")
    from q4lab.tasks import get_task

    get_task(point["task"]).calibration_row_mask(point["calib_padding"])  # padded inputs only
    if (qat := qat_of(point)) is not None:
        get_task(point["task"]).qat_loss(qat.loss)  # e.g. minilm has no labels: distill only
    budget = point["bits_budget"]
    if (
        isinstance(budget, bool)
        or not isinstance(budget, int | float)
        or not math.isfinite(budget)
        or budget < 0
    ):
        raise ValueError(f"bits_budget={budget!r} is invalid; allowed: 0 (off) or a number > 0")
    if budget:
        from q4lab.allocate import METHODS

        widths = point["budget_widths"]
        if not widths or any(type(w) is not int or not 2 <= w <= 8 for w in widths):
            raise ValueError(
                f"budget_widths={widths!r} is invalid; allowed: a list of ints in 2..8"
            )
        if budget < min(widths):
            raise ValueError(
                f"bits_budget={budget} is invalid with budget_widths={widths}; allowed: at least "
                f"the narrowest width, {min(widths)} (plus its scales: the allocator names the "
                "exact floor)"
            )
        if point["bits"] not in widths:
            raise ValueError(
                f"bits={point['bits']} is invalid with budget_widths={widths}; "
                "allowed: one of the widths"
            )
        groups = point["budget_groups"]
        if not isinstance(groups, list | tuple) or any(type(g) is not int or g < 0 for g in groups):
            raise ValueError(
                f"budget_groups={groups!r} is invalid; allowed: a list of ints >= 0 "
                "(0 = per-channel), or [] for the point's group_size"
            )
        if groups and point["group_size"] not in groups:
            raise ValueError(
                f"group_size={point['group_size']} is invalid with budget_groups={list(groups)}; "
                "allowed: one of the group sizes"
            )
        if point["budget_method"] not in METHODS:
            raise ValueError(
                f"budget_method={point['budget_method']!r} is invalid; allowed: "
                + ", ".join(METHODS)
            )
        if point["rules"]:
            raise ValueError(
                "rules are invalid with a bits_budget (the allocation writes them); "
                "allowed: rules=[]"
            )
    for name, example in (
        ("options", "{'act_order': True}"),
        ("act_clipping_options", "{'p': 2.4}"),
    ):
        if not isinstance(point[name], Mapping):
            raise ValueError(f"{name}={point[name]!r} is invalid; allowed: a dict, e.g. {example}")
    recipe = recipe_of(point)
    fitting = [r for r in recipe.rules if r.quantizer and r.weight.float_zero]
    if point["qat_steps"] and fitting:
        why = "fits" if fitting[0].build_quantizer().zero_point == "float" else "is given"
        raise ValueError(
            f"qat_steps={point['qat_steps']} is invalid with quantizer {fitting[0].quantizer!r}: "
            f"training keeps integer zero points, and it {why} real-valued ones; allowed: "
            "qat_steps=0"
        )
    if budget:  # the sensitivity quantizes every layer at each candidate, from float inputs
        from q4lab.sweep.mixed import candidates

        for label, candidate in candidates(point).items():
            try:
                recipe_of(candidate)
            except ValueError as err:
                raise ValueError(
                    f"bits_budget={budget} is invalid with this point: its sensitivity "
                    f"quantizes every layer at {label} from the float model's inputs "
                    f"(sequential=False), and then {err}; allowed: bits_budget=0"
                ) from err
    return recipe
