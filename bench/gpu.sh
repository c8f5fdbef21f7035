#!/usr/bin/env bash
# GPU benchmark, sized for under 5 minutes on one GPU: full-size SD1.5 architecture (random weights)
# at 512 px, rank 16, batch 1 and 4, fp16 and bf16, gradient checkpointing on/off.
# Prints one JSON line per configuration (images/s, peak allocated memory). Set REFERENCE_SCRIPT to
# also run diffusers' train_text_to_image_lora.py on the same settings and print ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
STEPS="${STEPS:-12}"
for precision in bf16 fp16; do
  for batch in 1 4; do
    "$PYTHON" -m bench --model sd15 --resolution 512 --rank 16 --batch-size "$batch" --precision "$precision" \
      --steps "$STEPS" --warmup 3 --variants default,checkpointing --device cuda "$@"
  done
done
