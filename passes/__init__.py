"""Graph passes on float models: simplify, fold BN, prune, distill. Quantization is fwedge.quantization, the lowering fwedge.lowered."""
