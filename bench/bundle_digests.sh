#!/bin/bash
# The sha256 of every file that quantizing and exporting the two example models writes, for
# checking that a refactoring leaves bundles byte-identical:
#
#     bench/bundle_digests.sh CHECKOUT OUTDIR     (CHECKOUT holds a set-up .venv)
#     diff OLD_OUTDIR/sha256.txt NEW_OUTDIR/sha256.txt
#
# Both models: kl int8, and percentile uint8 activations within a 99.5 % agreement budget, each
# exported to every target; the float models to every host target plus x86_64 and aarch64.
set -u
REPO=$(cd "$1" && pwd); OUT=$2
rm -rf "$OUT"; mkdir -p "$OUT"
F=$REPO/.venv/bin/fwedge
EX=$REPO/examples/fashion_mnist
for m in cnn_small mobilenet_v2_tiny; do
  $F quantize "$EX/$m.onnx" --data fashion-mnist:train --num-samples 256 --method kl \
    -o "$OUT/$m.kl.onnx" --save-table "$OUT/$m.kl.table.json" >"$OUT/log.$m.kl" 2>&1 || echo "FAIL quantize kl $m"
  $F quantize "$EX/$m.onnx" --data fashion-mnist:train --num-samples 256 --method percentile \
    --activation-dtype uint8 --min-agreement 0.995 --eval-data fashion-mnist:test --eval-samples 300 \
    -o "$OUT/$m.u8b.onnx" >"$OUT/log.$m.u8b" 2>&1 || echo "FAIL quantize u8b $m"
  for v in kl u8b; do
    for t in onnx openvino tflite ncnn x86_64 aarch64 riscv64 loongarch64; do
      $F export "$OUT/$m.$v.onnx" -t $t -o "$OUT/b.$m.$v.$t" >"$OUT/log.exp.$m.$v.$t" 2>&1 || echo "FAIL export $m $v $t"
    done
  done
  for t in onnx openvino tflite ncnn x86_64 aarch64; do
    $F export "$EX/$m.onnx" --fp32 -t $t -o "$OUT/b.$m.fp32.$t" >"$OUT/log.exp.$m.fp32.$t" 2>&1 || echo "FAIL export $m fp32 $t"
  done
done
(cd "$OUT" && find . -type f ! -name 'log.*' ! -name sha256.txt | sort | xargs sha256sum > sha256.txt)
echo "$(wc -l < "$OUT/sha256.txt") files digested into $OUT/sha256.txt"
