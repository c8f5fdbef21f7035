#!/usr/bin/env bash
# GPU benchmark sized for under 5 minutes on one GPU: full-size SD1.5 architecture (random weights),
# 512 px, rank 16; batch 1 and 4, bf16 and fp16, gradient checkpointing on/off, 8-bit AdamW on/off
# (8-bit AdamW needs bitsandbytes; without it that line reports the one-sentence error instead).
# Prints one JSON line per configuration with images/s and peak allocated memory. With
# REFERENCE_SCRIPT set, each group also runs diffusers' train_text_to_image_lora.py and prints ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
STEPS="${STEPS:-12}"
run() { "$PYTHON" -m bench --model sd15 --resolution 512 --rank 16 --steps "$STEPS" --warmup 3 --device cuda "$@"; }
run --precision bf16 --batch-size 1 --variants default,checkpointing,checkpointing+adamw8bit
run --precision bf16 --batch-size 4 --variants default,checkpointing
run --precision fp16 --batch-size 1 --variants default,checkpointing
