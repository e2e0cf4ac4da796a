"""Recipes: which layers get which weight quantizer and activation quantization.

A `Recipe` is an ordered list of `Rule`s. A rule's ``pattern`` is a regular expression matched
(``re.fullmatch``) against a layer's path, its module names joined by "/" (Linen:
``"Dense_0"``, ``"encoder/layers_1/attn/query"``; NNX: attribute names, ``"blocks/0/fc1"``).
The first matching rule wins; unmatched layers stay in float and are counted as float, and so do
layers matched by a float rule (``Rule.float(pattern)``: ``quantizer=None``) — put one ahead of
a catch-all rule to keep, say, the first and last layers float.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

import jax

from q4lab.core import QuantSpec, act_params
from q4lab.quantizers import CROSS, RangeQuantizer, get_quantizer, quantizer_identity

ACT_MODES = ("dynamic", "static")
ACT_GRANULARITIES = ("per_row", "per_tensor")
ROTATIONS = ("none", "hadamard")


def _items(options: Mapping[str, Any] | tuple) -> tuple[tuple[str, Any], ...]:
    """Options as sorted ``(key, value)`` pairs, nested mappings too (hashable)."""
    return tuple(
        (k, _items(v) if isinstance(v, Mapping) else v) for k, v in sorted(dict(options).items())
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ActSpec:
    """Quantization of a layer's input activations (the arithmetic: `q4lab.core.act_quant`).

    A row is one token of a dense layer's input (all axes but the contracting ones) and one
    example of a convolution's input (a per-position scale cannot be factored out of a conv).
    """

    bits: int = 4  # code width, 2..8
    mode: Literal["dynamic", "static"] = "dynamic"  # ranges computed at run time, or calibrated
    # one scale per row, or per tensor; None: per row when dynamic, per tensor when static
    granularity: Literal["per_row", "per_tensor"] | None = None
    symmetric: bool = True  # signed codes; False adds a zero point (e.g. after ReLU)
    clipping: str = "minmax"  # a registered clipping quantizer choosing the range
    clipping_options: tuple[tuple[str, Any], ...] | Mapping[str, Any] = ()  # its options

    def __post_init__(self) -> None:
        object.__setattr__(self, "clipping_options", _items(self.clipping_options))
        if self.mode not in ACT_MODES:
            raise ValueError(f"ActSpec.mode={self.mode!r} is invalid; allowed: {ACT_MODES}")
        if self.granularity is None:
            by_mode = "per_row" if self.mode == "dynamic" else "per_tensor"
            object.__setattr__(self, "granularity", by_mode)
        if self.granularity not in ACT_GRANULARITIES:
            raise ValueError(
                f"ActSpec.granularity={self.granularity!r} is invalid; allowed: {ACT_GRANULARITIES}"
            )
        if self.mode == "static" and self.granularity != "per_tensor":
            raise ValueError(
                "ActSpec.granularity='per_row' is invalid with mode='static' (rows are not known "
                "before run time); allowed: 'per_tensor'"
            )
        self.quant_spec()  # validates bits and symmetric with QuantSpec's messages
        clipper = get_quantizer(self.clipping, **dict(self.clipping_options))
        if not isinstance(clipper, RangeQuantizer):
            raise ValueError(
                f"ActSpec.clipping={self.clipping!r} is invalid; allowed: a clipping quantizer "
                "(one that picks a range without calibration statistics)"
            )

    def quant_spec(self) -> QuantSpec:
        """The spec of the activation codes, rows seen as channels."""
        gran = "per_channel" if self.granularity == "per_row" else "per_tensor"
        return QuantSpec(bits=self.bits, symmetric=self.symmetric, granularity=gran)

    def clipper(self) -> RangeQuantizer:
        return get_quantizer(self.clipping, **dict(self.clipping_options))

    def params(self, rows: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        """Scale (and zero) of activation rows ``[M, K]``: ``[M, 1]`` per row, ``[1, 1]`` per
        tensor, by this spec's clipping (`q4lab.core.act_params`; static ranges: on calibration
        rows)."""
        return act_params(rows, self.quant_spec(), self.clipper())

    def describe(self) -> str:
        """``"A4 dynamic"``, with the clipping when it is not min-max (``"A4 dynamic mse"``)."""
        clipping = "" if self.clipping == "minmax" else f" {self.clipping}"
        return f"A{self.bits} {self.mode}{clipping}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformSpec:
    """An input transform folded into the weight before quantization and applied to the layer's
    input at run time (`q4lab.core.transforms`): exact in float, it reshapes what is rounded.
    Dense layers only. Smoothing comes first, then the rotation. The rotation mixes all K inputs
    when K is 2^p, 12·2^p or 20·2^p, else blocks of K's largest power-of-two factor (a warning
    says so); a layer with an odd K is refused (`q4lab.core.transforms.hadamard_factors`)."""

    rotation: Literal["none", "hadamard"] = "none"  # "hadamard": randomised Hadamard
    smooth_alpha: float | None = None  # SmoothQuant's migration strength in (0, 1]; None: off
    seed: int = 0  # the rotation's signs (a layer's seed mixes this with its path)

    def __post_init__(self) -> None:
        if self.rotation not in ROTATIONS:
            raise ValueError(
                f"TransformSpec.rotation={self.rotation!r} is invalid; allowed: {ROTATIONS}"
            )
        alpha = self.smooth_alpha
        if alpha is not None and (
            isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha <= 1
        ):
            raise ValueError(
                f"TransformSpec.smooth_alpha={alpha!r} is invalid; allowed: None or a number "
                "in (0, 1]"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"TransformSpec.seed={self.seed!r} is invalid; allowed: an int >= 0")

    @property
    def rotates(self) -> bool:
        return self.rotation != "none"

    def describe(self) -> str:
        parts = [] if self.smooth_alpha is None else [f"smooth{self.smooth_alpha:g}"]
        return "+".join(parts + ([self.rotation] if self.rotates else []))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Rule:
    """Layers whose path matches ``pattern`` get ``quantizer`` with ``weight`` (and ``act``);
    ``quantizer=None`` keeps them float (`Rule.float`)."""

    pattern: str = ".*"  # regex, full match on the layer path
    quantizer: str | None = "minmax"  # a registered quantizer name; None: the layers stay float
    options: tuple[tuple[str, Any], ...] | Mapping[str, Any] = ()  # the quantizer's options
    weight: QuantSpec = dataclasses.field(default_factory=QuantSpec)  # weight spec
    act: ActSpec | None = None  # None keeps activations in float (weight-only, "A16")
    transform: TransformSpec | None = None  # smoothing / rotation of the input (dense layers)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", _items(self.options))
        try:
            re.compile(self.pattern)
        except re.error as err:
            raise ValueError(f"Rule.pattern={self.pattern!r} is not a valid regex: {err}") from None
        if self.quantizer is None:
            if self.options or self.act is not None or self.transform is not None:
                raise ValueError(
                    f"Rule(pattern={self.pattern!r}, quantizer=None) keeps its layers float; "
                    "allowed: no options, act=None, transform=None"
                )
            return
        try:
            quantizer = get_quantizer(self.quantizer, **dict(self.options))
        except ValueError as err:
            raise ValueError(f"Rule(pattern={self.pattern!r}).quantizer: {err}") from None
        if not isinstance(self.weight, QuantSpec):
            raise ValueError(f"Rule.weight={self.weight!r} is invalid; allowed: a QuantSpec")
        if quantizer.zero_point == "float" and not self.weight.float_zero:
            if self.weight.symmetric:  # HQQ: its zero points are what it fits
                by = "" if type(quantizer).zero_point == "float" else " (its final quantizer)"
                raise ValueError(
                    f"Rule(pattern={self.pattern!r}): quantizer {self.quantizer!r}{by} fits "
                    "real-valued zero points; allowed: an asymmetric weight spec "
                    "(QuantSpec(symmetric=False), sweep field symmetric=False, CLI "
                    "--symmetric false)"
                )
            weight = dataclasses.replace(self.weight, zero_point="float")
            object.__setattr__(self, "weight", weight)
        if self.weight.float_zero and not quantizer.takes_float_zero:
            raise ValueError(
                f"Rule(pattern={self.pattern!r}): quantizer {self.quantizer!r} rounds with "
                f"integer zero points; {self.weight.describe()} has real-valued ones; allowed: "
                "zero_point='int'"
            )
        if self.weight.float_zero and self.act is not None:
            raise ValueError(
                f"Rule(pattern={self.pattern!r}): activation quantization multiplies integer "
                f"weight codes less integer zero points; {self.weight.describe()} has "
                "real-valued ones; allowed: act=None (weight-only), or zero_point='int'"
            )
        if self.transform is not None and not isinstance(self.transform, TransformSpec):
            raise ValueError(
                f"Rule.transform={self.transform!r} is invalid; allowed: None or a TransformSpec"
            )

    @classmethod
    def float(cls, pattern: str) -> Rule:
        """A rule that keeps the layers matching ``pattern`` in float."""
        return cls(pattern=pattern, quantizer=None)

    @property
    def keeps_float(self) -> bool:
        return self.quantizer is None

    def matches(self, path: str) -> bool:
        return re.fullmatch(self.pattern, path) is not None

    def build_quantizer(self):
        if self.quantizer is None:
            raise ValueError(f"Rule(pattern={self.pattern!r}) keeps its layers float")
        return get_quantizer(self.quantizer, **dict(self.options))

    def options_label(self) -> str:
        """The quantizer's options as ``key=value`` pairs, e.g. ``"act_order=True"``; nested
        options in braces (``"quantizer='gptq',quantizer_options={act_order=True}"``)."""
        return _label(self.options)

    def quantizer_label(self) -> str:
        """``name`` or ``name(options)``, e.g. ``"gptq(act_order=True)"``."""
        options = self.options_label()
        return f"{self.quantizer}({options})" if options else str(self.quantizer)

    def describe(self) -> str:
        """``"gptq(act_order=True) W4 g128 A4 dynamic hadamard"``, or ``"float"``."""
        if self.quantizer is None:
            return "float"
        act = self.act.describe() if self.act else "A16"
        text = f"{self.quantizer_label()} {self.weight.describe()} {act}"
        return text if self.transform is None else f"{text} {self.transform.describe()}"


def _label(options: tuple[tuple[str, Any], ...]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, str):
            return repr(v)
        nested = isinstance(v, tuple) and all(
            isinstance(i, tuple) and len(i) == 2 and isinstance(i[0], str) for i in v
        )
        return "{" + _label(v) + "}" if nested and v else str(v)

    return ",".join(f"{k}={value(v)}" for k, v in options)


def literal_value(value: str) -> Any:
    """``"true"`` -> True, ``"0.5"`` -> 0.5, ``"{'a': 1}"`` or JSON ``'{"a": true}'`` -> a dict;
    other text stays text."""
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        pass
    try:
        return json.loads(value)
    except ValueError:
        return value


def parse_quantizer(text: str) -> tuple[str, dict[str, Any]]:
    """``"gptq:act_order=true,percdamp=0.1"`` -> ``("gptq", {"act_order": True, "percdamp": 0.1})``.

    Values are Python literals (``true``/``false`` accepted); anything else is kept as a string.
    """
    name, _, rest = text.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = (part.strip() for part in item.partition("="))
        if not eq or not key:
            raise ValueError(
                f"quantizer option {item!r} in {text!r} is invalid; allowed: key=value"
            )
        options[key] = literal_value(value)
    return name.strip(), options


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Ordered rules; the first that matches a layer's path applies to it."""

    rules: tuple[Rule, ...]
    name: str = ""
    sequential: bool = True  # calibration inputs from the model with earlier layers quantized

    def __post_init__(self) -> None:
        if isinstance(self.rules, Rule):
            raise ValueError(
                "Recipe.rules is one Rule; allowed: a tuple of Rules, Recipe((rule,)), or "
                "Recipe.single(**fields) for one rule matching every layer"
            )
        object.__setattr__(self, "rules", tuple(self.rules))
        if not self.rules:
            raise ValueError("Recipe.rules is empty; allowed: one or more Rule")
        if bad := [r for r in self.rules if not isinstance(r, Rule)]:
            raise ValueError(f"Recipe.rules holds {bad[0]!r}; allowed: Rule objects only")
        if not isinstance(self.sequential, bool):
            raise ValueError(f"Recipe.sequential={self.sequential!r} is invalid; allowed: bool")
        for i, rule in enumerate(self.rules):
            if (
                not self.sequential
                and not rule.keeps_float
                and CROSS in rule.build_quantizer().needs
            ):
                raise ValueError(
                    f"recipe rule {i} ({rule.quantizer_label()}) fits the float model's outputs "
                    "from the quantized model's inputs; Recipe.sequential=False is invalid with "
                    "it (the inputs would be the float ones); allowed: sequential=True"
                )

    @classmethod
    def single(cls, name: str = "", sequential: bool = True, **rule: Any) -> Recipe:
        """A recipe of one rule matching every layer."""
        return cls((Rule(**rule),), name=name, sequential=sequential)

    def match(self, path: str) -> tuple[int, Rule] | None:
        """The first rule matching ``path`` and its index, or None (the layer stays float)."""
        return next(((i, r) for i, r in enumerate(self.rules) if r.matches(path)), None)

    @property
    def base(self) -> Rule:
        """The rule the flat fields of a results row describe: the last one that quantizes
        (the catch-all after any per-layer exceptions)."""
        quantizing = [r for r in self.rules if not r.keeps_float]
        if not quantizing:
            raise ValueError("Recipe.rules keep every layer float; allowed: at least one quantizer")
        return quantizing[-1]

    def fields(self) -> dict[str, Any]:
        """Flat description for a results row: the fields of the `base` rule (``recipe``: its
        text, ``+ n rules`` when there are others); a recipe of several rules adds
        ``recipe_rules``, every rule in the text form of `describe`."""
        r = self.base
        extra = len(self.rules) - 1
        short = f"{r.describe()} + {extra} rule{'s' * (extra > 1)}" if extra else r.describe()
        out: dict[str, Any] = {
            "recipe": self.name or short,
            "quantizer": r.quantizer_label(),
            "quantizer_name": r.quantizer,
            "quantizer_options": r.options_label(),
            "quantizer_identity": quantizer_identity(r.build_quantizer()),
            "bits": r.weight.bits,
            "symmetric": r.weight.symmetric,
            "granularity": r.weight.granularity,
            "group_size": r.weight.group_size or 0,
            "scale_dtype": r.weight.scale_dtype,
            "act_bits": r.act.bits if r.act else 16,
            "act_mode": r.act.mode if r.act else "none",
        }
        if r.weight.symmetric_grid != "max":
            out["symmetric_grid"] = r.weight.symmetric_grid
        if r.transform is not None:
            out["transform"] = r.transform.describe()
        if any(r.build_quantizer().needs for r in self.rules if not r.keeps_float):
            out["sequential"] = self.sequential
        if len(self.rules) > 1:
            out["recipe_rules"] = self.describe()
        return out

    def describe(self) -> str:
        """One rule: its description (``"minmax W4 g128 A16"``); several: ``"pattern: rule"``
        for each, joined by ``" | "`` in order (a stable text form)."""
        if len(self.rules) == 1:
            return self.rules[0].describe()
        return " | ".join(f"{r.pattern}: {r.describe()}" for r in self.rules)
