"""The lowered room: the integer IR (graph), the shared QDQ view (view), the lowering toolkit
(build), the lowering driver (lower) and the reference interpreter (interp).

Kept import-free on purpose: the op cards in fwedge/ops import graph, view, build and arith,
and lower and interp import the cards, so this package must not import either side.
"""
