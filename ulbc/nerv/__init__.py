"""Video implicit neural representations (NeRV family) for the ``nerv`` and ``supermask-nerv`` codecs.

* :mod:`.arch` — sizes of a NeRV chosen from the clip (strides, channels), header bytes, MACs.
* :mod:`.model` — positional encoding, the shared forward pass :func:`~.model.render`, the dense
  :class:`~.model.DenseNeRV` and the supermasked random :class:`~.model.SupermaskNeRV`.
* :mod:`.training` — per-clip Adam training with cosine schedule, best checkpoint, NaN recovery.
* :mod:`.entropy` — categorical range coding (constriction) of integer tensors with stored tables.
* :mod:`.stream` — parameter block and payload of both codecs, and the decoder.
"""

from .arch import Architecture, build_architecture, choose_strides
from .model import DenseNeRV, SupermaskNeRV, nested_levels, positional_encoding, random_weights, render

__all__ = [
    "Architecture",
    "DenseNeRV",
    "SupermaskNeRV",
    "build_architecture",
    "choose_strides",
    "nested_levels",
    "positional_encoding",
    "random_weights",
    "render",
]
