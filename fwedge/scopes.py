"""Names across graph scopes: what a graph and its If/Loop/Scan bodies read, renaming outer reads, topological order."""
from __future__ import annotations

import heapq

import onnx


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs held in a node's attributes (If branches, Loop and Scan bodies)."""
    graphs = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            graphs.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            graphs.extend(attr.graphs)
    return graphs


def read_names(graph: onnx.GraphProto) -> set[str]:
    """Tensor names the graph's nodes read, including those read inside their subgraphs.

    An If branch or a Loop/Scan body reads the outer graph's values by name (silero-vad's
    decoder If reads a Constant of the main graph): a pass that dropped what only a subgraph
    reads would leave the branch a dangling name, which onnxruntime reports as "Nodes in a
    graph must be topologically sorted".
    """
    names: set[str] = set()
    for node in graph.node:
        names.update(node.input)
        for sub in subgraphs(node):
            names |= read_names(sub)
            names.update(value.name for value in sub.output)
    names.discard("")
    return names


def rename_reads(graph: onnx.GraphProto, rename: dict[str, str]) -> None:
    """Point, in place, the inputs of the nodes inside `graph`'s subgraphs (and the subgraphs'
    outputs) that read an outer value in `rename` at its new name."""
    for node in graph.node:
        for sub in subgraphs(node):
            for inner in sub.node:
                for index, name in enumerate(inner.input):
                    if name in rename:
                        inner.input[index] = rename[name]
            for value in sub.output:
                if value.name in rename:
                    value.name = rename[value.name]
            rename_reads(sub, rename)


def _defined_inside(graph: onnx.GraphProto) -> set[str]:
    """Names a graph (or a graph nested in it) defines: inputs, initializers, node outputs."""
    names = {value.name for value in graph.input} | {init.name for init in graph.initializer}
    for node in graph.node:
        names.update(node.output)
        for sub in subgraphs(node):
            names |= _defined_inside(sub)
    return names


def _node_reads(node: onnx.NodeProto) -> set[str]:
    """What a node needs computed before it: its inputs and the outer values its subgraphs read."""
    reads = set(node.input)
    for sub in subgraphs(node):
        reads |= read_names(sub) - _defined_inside(sub)
    return reads


def sort_nodes(graph: onnx.GraphProto) -> bool:
    """Order graph.node, in place, so that every node follows the producers of what it reads
    (its subgraphs' outer reads included), as onnxruntime does when it loads a model; nodes keep
    their order wherever it already holds (Kahn's algorithm, lowest original index first).
    Subgraphs are sorted too. Nodes that cannot be placed (a cycle) stay last, in order, for the
    checker to refuse.

    Returns:
        Whether any node moved.
    """
    moved = False
    for node in graph.node:
        for sub in subgraphs(node):
            moved = sort_nodes(sub) or moved
    nodes = list(graph.node)
    producer = {name: index for index, node in enumerate(nodes) for name in node.output if name}
    waiting = [0] * len(nodes)
    readers: dict[int, list[int]] = {}
    for index, node in enumerate(nodes):
        needs = {producer[name] for name in _node_reads(node) if name in producer} - {index}
        waiting[index] = len(needs)
        for need in needs:
            readers.setdefault(need, []).append(index)
    ready = [index for index, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for reader in readers.get(index, []):
            waiting[reader] -= 1
            if waiting[reader] == 0:
                heapq.heappush(ready, reader)
    placed = set(order)
    order += [index for index in range(len(nodes)) if index not in placed]
    if order == list(range(len(nodes))):
        return moved
    del graph.node[:]
    graph.node.extend(nodes[index] for index in order)
    return True
