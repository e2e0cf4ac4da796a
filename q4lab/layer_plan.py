"""Layer plans: which recipe rule quantizes which layer of a model, with every combination
checked (rules that match nothing or are shadowed, group sizes, activation quantization, input
transforms, Hadamard sizes) before any work is done."""

from __future__ import annotations

import dataclasses
import warnings

from q4lab.adapters import Layer
from q4lab.core import QuantSpec
from q4lab.core.transforms import hadamard_factors
from q4lab.quantizers import ACTIVATIONS, RangeQuantizer, range_quantizers
from q4lab.recipe import Recipe, Rule


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    layer: Layer
    rule: Rule
    rule_index: int
    spec: QuantSpec  # the rule's weight spec, per-channel where one group spans the layer

    @property
    def rounds_to_nearest(self) -> bool:
        """True when the codes are the float weight rounded with the stored scales, so the
        fake-quant simulation applies to the float weight (not so for GPTQ)."""
        return isinstance(self.rule.build_quantizer(), RangeQuantizer)


def _effective_spec(spec: QuantSpec, k: int) -> QuantSpec:
    """A group at least as large as the layer's input is one group: per-channel."""
    if spec.granularity == "per_group" and spec.group_size >= k:
        return dataclasses.replace(spec, granularity="per_channel", group_size=None)
    return spec


def plan(recipe: Recipe, layers: list[Layer]) -> dict[str, LayerPlan]:
    """Match rules to layers and check every combination before any work is done.

    Layers matched first by a float rule, or by none, stay float. A per-group spec whose group
    size is at least a layer's input size K quantizes that layer per-channel (one group); a group
    size smaller than K must divide it.
    """
    first = {layer.path: recipe.match(layer.path) for layer in layers}  # (index, rule) or None
    chosen: dict[str, LayerPlan] = {}
    for layer in layers:
        match = first[layer.path]
        if match is not None and not match[1].keeps_float:
            i, rule = match
            chosen[layer.path] = LayerPlan(layer, rule, i, _effective_spec(rule.weight, layer.k))
    paths = list(first)
    winners = {match[0] for match in first.values() if match is not None}
    for i, rule in enumerate(recipe.rules):
        if not any(rule.matches(p) for p in paths):
            raise ValueError(
                f"recipe rule {i} (pattern {rule.pattern!r}) matches no quantizable layer; "
                f"the model's layers are: {paths}"
            )
        if i not in winners:
            taken = sorted({first[p][0] for p in paths if rule.matches(p)})
            raise ValueError(
                f"recipe rule {i} (pattern {rule.pattern!r}) applies to no layer: every layer "
                f"it matches is taken by the earlier rule(s) {taken}; allowed: a rule that is "
                "the first match of at least one layer"
            )
    if not chosen:
        raise ValueError(
            f"the recipe quantizes no layer (its rules keep every layer float): {paths}"
        )
    places = {
        path: f"recipe rule {p.rule_index} (pattern {p.rule.pattern!r}), layer {path!r}"
        for path, p in chosen.items()
    }
    sizes = []  # every layer a group size does not divide, in one error
    for path, p in chosen.items():
        try:
            p.spec.check_input_size(p.layer.k)
        except ValueError as err:
            sizes.append(f"{places[path]}: {err}")
    if sizes:
        raise ValueError("\n".join(sizes))
    for path, p in chosen.items():
        where = places[path]
        a_kind = f"{'an' if p.layer.kind[0] in 'aeiou' else 'a'} {p.layer.kind}"
        if p.rule.act is not None and not p.layer.hookable:
            raise ValueError(
                f"{where}: activation quantization is not supported on {a_kind} layer; "
                "allowed: dense (Dense, DenseGeneral without batch dims, Linear) and conv layers"
            )
        needs = p.rule.build_quantizer().needs
        if needs and not p.layer.hookable:  # calibration sees the inputs of hooked layers only
            raise ValueError(
                f"{where}: quantizer {p.rule.quantizer!r} needs statistics of the layer's inputs "
                f"({', '.join(sorted(needs))}), which calibration does not collect on {a_kind} "
                f"layer; allowed there: a quantizer of the weights alone "
                f"({', '.join(range_quantizers())})"
            )
        scales_inputs = ACTIVATIONS in needs  # AWQ: its own transform
        dense = p.layer.hookable and p.layer.kind == "dense"
        if scales_inputs and not dense:
            raise ValueError(
                f"{where}: quantizer {p.rule.quantizer!r} scales the layer's input channels (an "
                f"input transform folded into the weight), which {a_kind} layer does not take; "
                "allowed: dense layers (Dense, DenseGeneral without batch dims, Linear): give "
                "it a rule whose pattern matches those only, and the others another quantizer"
            )
        if p.rule.transform is not None and not dense:
            raise ValueError(
                f"{where}: an input transform is not supported on {a_kind} layer; "
                "allowed: dense layers (Dense, DenseGeneral without batch dims, Linear)"
            )
        if p.rule.transform is not None and scales_inputs:
            raise ValueError(
                f"{where}: quantizer {p.rule.quantizer!r} chooses its own input scales; "
                "allowed: transform=None"
            )
        if p.rule.transform is not None and p.rule.transform.rotates:
            _check_rotation(where, p.layer.k)
    return chosen


def _check_rotation(where: str, k: int) -> None:
    """A Hadamard rotation mixes a layer's K inputs in blocks (`hadamard_factors`): refuse one
    that would mix nothing (odd K), and warn of one that mixes less than all of them."""
    m, b = hadamard_factors(k)
    if m * b == 1:
        raise ValueError(
            f"{where}: rotation='hadamard' would leave the layer's K={k} inputs as they are (an "
            "odd K has no Hadamard factor); allowed: layers with an even K"
        )
    if m * b < k:
        warnings.warn(
            f"{where}: rotation='hadamard' mixes the layer's K={k} inputs in blocks of {m * b}, "
            "not all together (whole for K = 2^p, 12·2^p and 20·2^p), so an outlier channel is "
            f"spread over {m * b} channels only",
            stacklevel=4,  # _check_rotation < plan < quantize_model < the caller
        )


__all__ = ["LayerPlan", "plan"]
