"""Static memory planning: arena offsets for tensors from their lifetimes over a straight-line schedule."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Buffer:
    """A tensor that needs arena memory.

    Attributes:
        name: tensor name.
        size: bytes.
        first: index of the step that writes it (graph inputs: 0).
        last: index of the last step that reads it (graph outputs: the final step).
    """

    name: str
    size: int
    first: int
    last: int

    def overlaps_in_time(self, other: "Buffer") -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass
class MemoryPlan:
    """Arena offsets and the figures the bundle manifest reports.

    Attributes:
        offsets: tensor name -> byte offset in the arena.
        arena_bytes: the arena size (highest offset + size, rounded up to the alignment).
        lower_bound_bytes: the largest total size of tensors live at the same step; no planner
            that keeps every tensor whole can use less.
        peak_step: the step where that lower bound is reached.
        alignment: every offset is a multiple of this.
    """

    offsets: dict[str, int]
    arena_bytes: int
    lower_bound_bytes: int
    peak_step: int
    alignment: int
    buffers: list[Buffer] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """arena / lower bound (1.0 is optimal)."""
        return self.arena_bytes / self.lower_bound_bytes if self.lower_bound_bytes else 1.0

    def to_dict(self) -> dict:
        return {
            "arena_bytes": self.arena_bytes,
            "lower_bound_bytes": self.lower_bound_bytes,
            "ratio": round(self.ratio, 4),
            "peak_step": self.peak_step,
            "alignment": self.alignment,
            "tensors": {b.name: {"offset": self.offsets[b.name], "bytes": b.size, "first": b.first, "last": b.last}
                        for b in self.buffers},
        }


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def lower_bound(buffers: list[Buffer]) -> tuple[int, int]:
    """(bytes, step): the largest sum of sizes of buffers live at one step."""
    if not buffers:
        return 0, 0
    steps = range(min(b.first for b in buffers), max(b.last for b in buffers) + 1)
    best, best_step = 0, 0
    for step in steps:
        live = sum(b.size for b in buffers if b.first <= step <= b.last)
        if live > best:
            best, best_step = live, step
    return best, best_step


def _greedy(buffers: list[Buffer], order: list[Buffer], alignment: int) -> tuple[dict[str, int], int]:
    """Place buffers in `order` at the lowest aligned offset that clashes with no placed buffer
    live at the same time (TFLite Micro's greedy-by-size planner when `order` is by size)."""
    placed: list[tuple[Buffer, int]] = []
    offsets: dict[str, int] = {}
    for buffer in order:
        clashes = sorted((offset, offset + other.size) for other, offset in placed if other.overlaps_in_time(buffer))
        candidate = 0
        for start, end in clashes:
            if candidate + buffer.size <= start:
                break
            candidate = max(candidate, _align(end, alignment))
        offsets[buffer.name] = candidate
        placed.append((buffer, candidate))
    arena = max((offsets[b.name] + b.size for b in buffers), default=0)
    return offsets, _align(arena, alignment)


def plan_memory(buffers: list[Buffer], alignment: int = 16) -> MemoryPlan:
    """Assign arena offsets so that tensors live at the same step never share bytes.

    Tries greedy placement by decreasing size, by decreasing size × lifetime and in schedule order,
    and keeps the smallest arena. Each is O(n²) in the number of tensors, which is fine for
    the hundreds of tensors of an edge model.

    Args:
        buffers: every tensor that needs arena memory, with its lifetime.
        alignment: byte alignment of every offset.

    Returns:
        The MemoryPlan with the arena size and the live-set lower bound.
    """
    orders = [
        sorted(buffers, key=lambda b: (-b.size, b.first, b.name)),
        sorted(buffers, key=lambda b: (-b.size * (b.last - b.first + 1), b.first, b.name)),
        sorted(buffers, key=lambda b: (b.first, -b.size, b.name)),
    ]
    best_offsets, best_arena = None, None
    for order in orders:
        offsets, arena = _greedy(buffers, order, alignment)
        if best_arena is None or arena < best_arena:
            best_offsets, best_arena = offsets, arena
    bound, step = lower_bound(buffers)
    plan = MemoryPlan(best_offsets or {}, best_arena or 0, bound, step, alignment, list(buffers))
    check_plan(plan)
    return plan


def check_plan(plan: MemoryPlan) -> None:
    """Assert that no two buffers live at the same step overlap in the arena.

    Raises:
        AssertionError: the plan is invalid (a planner bug, never a user error).
    """
    for i, a in enumerate(plan.buffers):
        start_a = plan.offsets[a.name]
        assert start_a % plan.alignment == 0 and start_a + a.size <= plan.arena_bytes, a.name
        for b in plan.buffers[i + 1:]:
            if a.overlaps_in_time(b):
                start_b = plan.offsets[b.name]
                assert start_a + a.size <= start_b or start_b + b.size <= start_a, (a.name, b.name)
