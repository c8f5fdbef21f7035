#!/usr/bin/env bash
# GPU benchmark sized for under 10 minutes on one GPU: full-size SD1.5 architecture (random weights),
# 512 px, rank 16; batch 1 and 4, bf16 and fp16, gradient checkpointing on/off, 8-bit AdamW on/off, torch.compile
# (8-bit AdamW needs bitsandbytes; without it that line reports the one-sentence error instead).
# Prints one JSON line per configuration with images/s and peak allocated memory. With
# REFERENCE_SCRIPT set, each group also runs diffusers' train_text_to_image_lora.py and prints ratios.
# Then SDXL (full-size architecture, random weights, XL_RESOLUTION 1024, rank 16, batch 1): bf16 with and
# without gradient checkpointing (the 8 GB configuration: UNet only, cached latents and text, bf16 weights) and
# compiled; with REFERENCE_SCRIPT_SDXL set, beside diffusers' train_text_to_image_lora_sdxl.py.
# Last, on a machine with several GPUs (NGPU, default: all torch sees), the scaling figure: the same global batch
# on 1 GPU and on NGPU GPUs through accelerate launch, images/s of each (python -m bench.scaling speed).
# MODEL, RESOLUTION, XL_MODEL, XL_RESOLUTION, DEVICE, STEPS, WARMUP and NGPU override the defaults; the test suite
# runs this script with MODEL=tiny XL_MODEL=tiny-sdxl DEVICE=cpu NGPU=2 so that it keeps working without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
MODEL="${MODEL:-sd15}"
RESOLUTION="${RESOLUTION:-512}"
XL_MODEL="${XL_MODEL:-sdxl}"
XL_RESOLUTION="${XL_RESOLUTION:-1024}"
NGPU="${NGPU:-$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')}"
DEVICE="${DEVICE:-cuda}"
STEPS="${STEPS:-12}"
WARMUP="${WARMUP:-3}"
run() {
  "$PYTHON" -m bench --model "$MODEL" --resolution "$RESOLUTION" --rank 16 --steps "$STEPS" --warmup "$WARMUP" --device "$DEVICE" "$@"
}
run --precision bf16 --batch-size 1 --variants default,checkpointing,checkpointing+adamw8bit,compile
run --precision bf16 --batch-size 4 --variants default,checkpointing
run --precision fp16 --batch-size 1 --variants default,checkpointing
"$PYTHON" -m bench --model "$XL_MODEL" --resolution "$XL_RESOLUTION" --rank 16 --steps "$STEPS" --warmup "$WARMUP" --device "$DEVICE" \
  --precision bf16 --batch-size 1 --variants default,checkpointing,checkpointing+compile
if [ "$NGPU" -gt 1 ]; then
  "$PYTHON" -m bench.scaling speed --model "$MODEL" --resolution "$RESOLUTION" --rank 16 --processes "$NGPU" --steps "$STEPS" --precision bf16
fi
