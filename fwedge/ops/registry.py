"""Every op card, registered: the module the rest of fwedge asks about ops and lowered kinds.

Importing this module imports every card module of fwedge/ops/, which fill fwedge.ops.base's
registry. Cards themselves import only fwedge.ops.base (and the lowered room's toolkit), so
the import graph stays one-way: registry -> cards -> lowered toolkit -> base.
"""
from __future__ import annotations

from fwedge.ops.base import (
    KindSpec, OpCard, OpInfo, UnaryFunction, all_cards, all_kinds, attribute, card, fuses_into, gelu_tanh_chain,
    kind, silu_mul,
)
from fwedge.ops import conv, depth_to_space, elementwise, embedding, layer_norm, pool, prelu, qdq, resize, shape, softmax, take, unary  # noqa: F401  (they register)

# Every lowered kind, sorted (registration order depends on which card was imported first).
KINDS: tuple[str, ...] = tuple(sorted(all_kinds()))
# The element-wise functions of one input (each lowers to an int8 table).
UNARY_KINDS: tuple[str, ...] = tuple(name for name in KINDS if all_kinds()[name].unary is not None)

__all__ = [
    "KINDS", "UNARY_KINDS", "KindSpec", "OpCard", "OpInfo", "UnaryFunction", "all_cards", "all_kinds",
    "attribute", "card", "fuses_into", "gelu_tanh_chain", "kind", "silu_mul",
]
