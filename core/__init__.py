"""Headless LoRA training core for Stable Diffusion: SD1.x, SD2.x and SDXL (core.families).

Importing this package is cheap: heavy libraries (torch, diffusers,
transformers, peft) are imported by the submodules that need them, so that
loading the ComfyUI node suite adds almost nothing to ComfyUI's start-up.
"""

__version__ = "0.1.0"
