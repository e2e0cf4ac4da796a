"""The INT4 numerical core: specs, packed tensors, fake quantization (weights and activations)
and the size ledger."""

from q4lab.core.act_quant import (
    Clipper,
    act_codes,
    act_fake_quant,
    act_lsq_fake_quant,
    act_params,
)
from q4lab.core.affine import from_codes, group_view, round_trip, scale_zero_from_range, to_codes
from q4lab.core.fake_quant import fake_quant
from q4lab.core.ledger import LeafSize, Ledger, size_ledger
from q4lab.core.lsq import lsq_grad_scale, lsq_round_trip, stored_scale
from q4lab.core.packing import pack, pack_numpy, unpack, unpack_numpy
from q4lab.core.qtensor import (
    LAYOUTS,
    QTensor,
    dequantize,
    dequantize_matrix,
    from_matrix,
    normalize_in_axes,
    quantize,
    relayout,
    relayout_tree,
    stored_bytes,
    to_matrix,
)
from q4lab.core.spec import QuantSpec

__all__ = [
    "LAYOUTS",
    "Clipper",
    "LeafSize",
    "Ledger",
    "QTensor",
    "QuantSpec",
    "act_codes",
    "act_fake_quant",
    "act_lsq_fake_quant",
    "act_params",
    "dequantize",
    "dequantize_matrix",
    "fake_quant",
    "from_codes",
    "from_matrix",
    "group_view",
    "lsq_grad_scale",
    "lsq_round_trip",
    "normalize_in_axes",
    "pack",
    "pack_numpy",
    "quantize",
    "relayout",
    "relayout_tree",
    "round_trip",
    "scale_zero_from_range",
    "size_ledger",
    "stored_bytes",
    "stored_scale",
    "to_codes",
    "to_matrix",
    "unpack",
    "unpack_numpy",
]
