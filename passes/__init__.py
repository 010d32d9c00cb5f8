"""Graph passes: fold BN, prune, distill, quantize (QDQ insertion), lower."""
