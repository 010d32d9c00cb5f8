"""Op cards: one module per op family (conv, elementwise, pool, shape, unary, softmax, qdq).

fwedge.ops.base defines OpCard/OpInfo/KindSpec and the registry; fwedge.ops.registry imports
every card and is what the other rooms read. Copy TEMPLATE.py to add a family. This package
module imports nothing, so that a card can import fwedge.ops.base without a circle.
"""
