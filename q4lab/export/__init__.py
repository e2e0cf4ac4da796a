"""Packed export: write a `QuantizedModel` to a directory, and `load` it back without its float
weights or calibration data.

A saved model is a directory of two files:

  ``weights-<digest>.safetensors``  (named by the first 16 hex digits of its sha256; files
      before 2026-11-29: ``weights.safetensors``) every array the model holds, bytes as held
      (safetensors has no int4: packed codes and zero points are the QTensor's ``uint8``
      bytes): per quantized layer its codes, scales, zeros, act-order permutation, input
      transform (smoothing scales, rotation seed) and activation state (static scale / zero,
      learned gain); every float leaf (biases, embeddings, layers left float). bfloat16 arrays
      are stored as their ``uint16`` bits.
  ``q4lab.json`` ``format`` / ``format_version``; ``weights_file``; ``model``: how to rebuild the
      module (Linen or NNX, its class, its settings: a Linen module's fields, an NNX module's plain
      attributes, `q4lab.model_settings`; the q4lab task it came from if any); ``rules``: each rule
      that quantized a layer, by its index in the recipe (pattern, quantizer and options,
      ``QuantSpec``, ``ActSpec``, ``TransformSpec``, and its text form; every rule, float ones too,
      with the recipe's ``name`` and ``sequential`` in ``recipe``); ``layers``: each quantized layer
      (its kernel's key, kind, shape, input axes, rule and effective spec, activation spec, code
      layout); ``tensors``: each array by name (role, layer, parameter key, dtype, shape, sha256 of
      its bytes); ``ledger`` totals; the ``manifest`` (versions, device, git commit).

Tensor names: a parameter leaf is its key joined by "/" (``Dense_0/bias``); a quantized kernel's
arrays add their role (``Dense_0/kernel.codes``, ``.scale``, ``.zero``, ``.perm``, ``.smooth``,
``.seed``); activation states are ``acts/<layer>.scale`` (``.zero``, ``.gain``).

The safetensors file is the ledger's bytes (`QuantizedModel.ledger`) plus its header and the few
bytes of activation states (which the ledger does not count). Its one metadata value names the
format, its version and the sha256 of ``q4lab.json`` but its manifest and file fields, so a
config edited by hand, or from another save, is refused. Saving writes the weights under a new
name, then ``q4lab.json`` (the commit: each by a temporary file, synced and renamed), then
removes the weights file the replaced config named: a save cut short leaves the previous model
whole, or a new file no config names.

The code: `q4lab.export.schema` (the names above, and the JSON of rules, specs and layers),
`q4lab.export.saving` (`save`), `q4lab.export.loading` (`load`, `LoadedModel`).
"""

from q4lab.export.loading import LoadedModel, load, weights_path
from q4lab.export.saving import save
from q4lab.export.schema import CONFIG_FILE, FORMAT, FORMAT_VERSION, WEIGHTS_FILE

__all__ = [
    "CONFIG_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "LoadedModel",
    "load",
    "save",
    "weights_path",
]
