"""Command line: ``python -m core demo`` and ``python -m core train``.

Human progress goes to stderr; the last line of stdout is one JSON object
describing the run, so scripts can read the outcome.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .distributed import SINGLE, ProcessGroup
from .caption_cli import add_caption_parser, caption_main
from .errors import TrainerError
from .optim import LR_SCHEDULERS

DEMO_DEFAULTS = {"steps": 150, "rank": 8, "lr": 1e-3, "resolution": 64, "batch_size": 2}
DEMO_FAMILIES = {"sd1": "tiny_sd15.safetensors", "sd2": "tiny_sd2.safetensors", "sdxl": "tiny_sdxl.safetensors"}


OFFLINE_REASON = "LORA_TRAINER_OFFLINE_REASON"  # why datasets are offline, for core.hf_dataset's message


def _quiet_libraries(offline: bool = False) -> None:
    """Quiet the libraries' logs. Models never touch the network (every load is local_files_only); a hub dataset
    the user names may be downloaded unless ``offline`` (--offline) or the user's own HF_HUB_OFFLINE says no."""
    if offline:
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
        os.environ[OFFLINE_REASON] = "--offline was given"
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


def _add_training_arguments(parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--steps", type=int, default=defaults.get("steps", 1000), help="optimizer steps (default %(default)s)")
    group.add_argument("--rank", type=int, default=defaults.get("rank", 4), help="LoRA rank (default %(default)s)")
    group.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: equal to the rank)")
    group.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout (default 0)")
    group.add_argument("--targets", default="kohya", help="UNet modules that get adapters: attention, kohya (default: attention, feed-forward and projections), kohya+conv (LoCon: also ResNet and down/upsampler convs) or a regular expression over diffusers module names")
    group.add_argument("--train-text-encoder", action="store_true", help="also train a LoRA on the CLIP text encoder")
    group.add_argument("--lr", type=float, default=defaults.get("lr", 1e-4), help="learning rate (default %(default)s)")
    group.add_argument("--lr-scheduler", "--scheduler", dest="lr_scheduler", default="cosine", choices=list(LR_SCHEDULERS), help="learning-rate schedule (diffusers get_scheduler; default %(default)s)")
    group.add_argument("--warmup-steps", type=int, default=0)
    group.add_argument("--batch-size", type=int, default=defaults.get("batch_size", 1))
    group.add_argument("--resolution", type=int, default=defaults.get("resolution"), help="square training size in px, a multiple of 64 (default: the base model's own: SD1.x 512, SD2.x 512 or 768 for v-models, SDXL 1024)")
    group.add_argument("--no-flip", action="store_true", help="turn random horizontal flips off")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    group.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for memory")
    group.add_argument("--no-cache", action="store_true", help="encode images and captions every step (slower; for comparison)")
    group.add_argument("--save-every", type=int, default=0, help="write a checkpoint every N steps (needs --checkpoint-dir)")
    group.add_argument("--checkpoint-dir", default=None, help="folder for resumable checkpoints")
    group.add_argument("--resume", default=None, help="a checkpoint folder, or a --checkpoint-dir to take the newest one from")
    group.add_argument("--device", default=None, help="torch device (default: the best available; under accelerate launch / torchrun each process takes its local rank's GPU)")
    group.add_argument("--dist-timeout", type=float, default=300, metavar="SECONDS",
                       help="with several processes: how long to wait for the others (forming the group, a collective) before giving up (default %(default)s)")
    _add_depth_arguments(parser)


def _add_depth_arguments(parser: argparse.ArgumentParser) -> None:
    """Adapter types and continuing from a file, then every advanced setting of ``core.setting_table``."""
    group = parser.add_argument_group("adapters and continuing")
    group.add_argument("--warmup", dest="warmup_steps", type=float, default=0, help="warm-up in steps, or as a fraction of the run when below 1.0 (e.g. 0.05)")
    group.add_argument("--te-rank", type=int, default=None, help="text-encoder LoRA rank (default: --rank); turns text-encoder training on")
    group.add_argument("--conv-rank", type=int, default=None, help="rank of 3x3 conv adapters with --targets kohya+conv (default: --rank)")
    group.add_argument("--conv-alpha", type=float, default=None, help="alpha of the conv adapters (default: the conv rank)")
    group.add_argument("--dora", action="store_true", help="weight-decomposed LoRA (DoRA); saved with .dora_scale keys")
    group.add_argument("--adapter", default="lora", choices=["lora", "loha", "lokr"],
                       help="lora, loha (LyCORIS LoHa: two rank-r pairs multiplied elementwise; .hada_* keys) or lokr (LyCORIS LoKr: a Kronecker product; .lokr_* keys)")
    group.add_argument("--init-lora", default=None, help="continue from an existing LoRA file (ours or kohya-format); its ss_steps is where the step count starts")
    _add_setting_arguments(parser)


def _add_setting_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per row of ``ADVANCED_SETTINGS``, with TrainSettings' own default."""
    from .setting_table import ADVANCED_SETTINGS

    groups: dict[str, Any] = {}
    for setting in ADVANCED_SETTINGS:
        group = groups.get(setting.group) or groups.setdefault(setting.group, parser.add_argument_group(setting.group))
        shown = "off" if setting.default in (None, False, 0, ()) and setting.kind != "str" else setting.default
        options: dict[str, Any] = {"dest": setting.field, "help": f"{setting.help} (default: {shown})".replace("%", "%%")}
        if setting.kind == "bool":
            options.update(action="store_true")
        elif setting.kind == "lines":
            options.update(action="append", default=[])
        else:
            options.update(type={"int": int, "float": float, "str": str}[setting.kind], default=setting.default,
                           metavar=setting.flag.lstrip("-").upper().replace("-", "_"))
            if setting.choices:
                options["choices"] = list(setting.choices)
        group.add_argument(setting.flag, **options)


def _setting_values(args: argparse.Namespace) -> dict[str, Any]:
    from .setting_table import ADVANCED_SETTINGS

    return {s.field: tuple(getattr(args, s.field)) if s.kind == "lines" else getattr(args, s.field) for s in ADVANCED_SETTINGS}


def _depth_lora_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "train_text_encoder": args.train_text_encoder or args.te_rank is not None or args.text_encoder_learning_rate is not None
        or args.text_encoder_2_learning_rate is not None,
        "text_encoder_rank": args.te_rank, "conv_rank": args.conv_rank, "conv_alpha": args.conv_alpha, "use_dora": args.dora,
        "adapter": args.adapter,
    }


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the images come from, how captions are varied, and aspect-ratio buckets."""
    source = parser.add_argument_group("data (one of --data or --hf-dataset)")
    which = source.add_mutually_exclusive_group(required=True)
    which.add_argument("--data", help="dataset folder: image/ + text/, sidecar .txt files, kohya 10_name folders, or metadata.jsonl/csv")
    which.add_argument("--hf-dataset", metavar="ID_OR_PATH", help="Hugging Face hub id (downloaded once into the standard cache; from the cache alone with --offline), save_to_disk folder, or folder of parquet/arrow/jsonl/csv files")
    source.add_argument("--offline", action="store_true", help="never download a dataset (models are always read locally); as HF_HUB_OFFLINE=1 does")
    source.add_argument("--layout", default="auto", choices=["auto", "image-text", "sidecar", "kohya", "imagefolder"], help="folder layout (default: detected)")
    source.add_argument("--caption-extension", default=".txt", help="caption file extension for folders (default %(default)s)")
    source.add_argument("--repeats", type=int, default=1, help="times each image is seen per epoch (multiplies kohya folder repeats)")
    source.add_argument("--split", default=None, help="HF split (default: train, or the only one)")
    source.add_argument("--image-column", default=None, help="HF image column (default: the first Image feature)")
    source.add_argument("--caption-column", default=None, help="HF or metadata caption column (default: text, caption, captions, en_text, prompt, ...)")
    source.add_argument("--max-samples", type=int, default=None, help="use only the first N rows of an HF dataset")
    captions = parser.add_argument_group("captions")
    captions.add_argument("--trigger", default="", help="trigger word put first in every caption")
    buckets = parser.add_argument_group("aspect-ratio buckets (on or off)")
    buckets.add_argument("--bucket", action="store_const", const=True, default=None, help="train each image near its own aspect ratio (batches drawn from one bucket); on by default for SDXL")
    buckets.add_argument("--no-bucket", dest="bucket", action="store_const", const=False, help="square crops even where the model family would use buckets")


def _data_settings(args: argparse.Namespace) -> dict[str, Any]:
    """TrainSettings fields the data flags imply (absent on `demo`: the defaults)."""
    from .augment import split_tags

    keep_tokens = args.keep_tokens
    if getattr(args, "trigger", "") and args.shuffle_tags:
        keep_tokens = max(keep_tokens, len(split_tags(args.trigger)))  # the trigger never moves
    return {"keep_tokens": keep_tokens, "bucket": getattr(args, "bucket", False)}  # bucket None on `train`: the family's choice


def load_dataset_from_args(args: argparse.Namespace):
    """The dataset the data flags describe, trigger word added."""
    from .captioning import caption_dataset
    from .dataset import DEFAULT_RESOLUTION, load_folder_dataset
    from .errors import DatasetError
    from .hf_dataset import load_hf_dataset

    if args.hf_dataset is not None:
        if args.layout != "auto" or args.caption_extension != ".txt":
            raise DatasetError("--layout and --caption-extension are for --data folders; --hf-dataset reads columns.")
        dataset = load_hf_dataset(
            args.hf_dataset, split=args.split, image_column=args.image_column, caption_column=args.caption_column,
            max_samples=args.max_samples,
        )
        if args.repeats != 1:
            from dataclasses import replace

            dataset.entries = [replace(entry, repeats=args.repeats) for entry in dataset.entries]
    else:
        if args.split or args.image_column or args.max_samples:
            raise DatasetError("--split, --image-column and --max-samples are for --hf-dataset; --data reads a folder.")
        dataset = load_folder_dataset(
            args.data, layout=args.layout, repeats=args.repeats, caption_extension=args.caption_extension,
            caption_column=args.caption_column, resolution=args.resolution or DEFAULT_RESOLUTION,
        )
    if args.trigger.strip():
        dataset = caption_dataset(dataset, "keep", trigger=args.trigger)
    return dataset


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="Train SD1.x, SD2.x and SDXL LoRAs; models load offline, a hub dataset you name is downloaded once.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train on a built-in tiny model and synthetic images (no download)")
    demo.add_argument("--workdir", required=True, help="folder for the demo's model, images and LoRA")
    demo.add_argument("--family", default="sd1", choices=list(DEMO_FAMILIES), help="which built-in tiny model to train: sd1 (default), sd2 or sdxl")
    _add_training_arguments(demo, DEMO_DEFAULTS)
    train = commands.add_parser("train", help="train a LoRA on your base model and images")
    train.add_argument("--base", required=True, help="SD1.x, SD2.x or SDXL checkpoint (.safetensors in the original layout) or diffusers folder")
    train.add_argument("--tokenizer", default=None, help="CLIP tokenizer folder (vocab.json + merges.txt; every family's tokenizers are read from it, e.g. ComfyUI/comfy/sd1_tokenizer); diffusers folders bring their own")
    train.add_argument("--output", required=True, help="where to write the LoRA (.safetensors)")
    _add_data_arguments(train)
    _add_training_arguments(train, {})
    add_caption_parser(commands)
    return parser


def _settings_from(args: argparse.Namespace, output_name: str):
    from dataclasses import replace

    from .lora import LoRASettings
    from .training import TrainSettings

    lora_settings = LoRASettings(rank=args.rank, alpha=args.alpha, dropout=args.dropout, targets=args.targets, **_depth_lora_options(args))
    settings = TrainSettings(
        steps=args.steps,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        resolution=args.resolution,
        seed=args.seed,
        lr_scheduler=args.lr_scheduler,
        warmup_steps=args.warmup_steps,
        precision=args.precision,
        gradient_checkpointing=args.gradient_checkpointing,
        random_flip=not args.no_flip,
        save_every=args.save_every,
        cache_latents=not args.no_cache,
        cache_text=not args.no_cache,
        output_name=output_name,
        **_setting_values(args),
    )
    settings = replace(settings, **_data_settings(args))
    return lora_settings, settings


def _check_output(path: Path) -> Path:
    from .errors import OutputPathError

    if path.suffix != ".safetensors":
        raise OutputPathError(f"--output must end in .safetensors, got {path.name}.")
    if path.is_dir():
        raise OutputPathError(f"--output {path} is a folder; give a file name ending in .safetensors.")
    return path


def _run_training(args, base, dataset, output: Path, group: ProcessGroup = SINGLE) -> dict[str, Any] | None:
    """Train and write the LoRA; with several processes only the main one talks and writes (and returns the summary)."""
    from .lora import save_lora_file
    from .progress import ConsolePrinter
    from .training import train

    lora_settings, settings = _settings_from(args, output.stem)
    checkpoint_dir = args.checkpoint_dir
    if (args.save_every or args.sample_every or args.keep_best) and not checkpoint_dir:
        checkpoint_dir = str(output.with_name(output.stem + "_checkpoints"))
    if group.is_main:
        batch = f"{args.batch_size} x {group.world_size} processes x {args.grad_accum} accumulation = {args.batch_size * group.world_size * args.grad_accum}"
        print(f"base: {base!r}\ndata: {dataset.summary()}\nlora: {lora_settings!r}\n{_target_line(base, settings)}\n"
              f"global batch: {batch}", file=sys.stderr)
    result = train(
        base, dataset, lora_settings, settings,
        device=args.device, progress=ConsolePrinter() if group.is_main else None, checkpoint_dir=checkpoint_dir,
        resume_from=args.resume, init_lora=args.init_lora, release_frozen_models=True, group=group,
    )
    if not group.is_main:
        return None
    save_lora_file(result.lora, output)
    print(f"saved {output}", file=sys.stderr)
    return {"lora_path": str(output), **result.summary(), "checkpoint_dir": checkpoint_dir, "phase_seconds": result.phase_seconds}


def _target_line(base, settings) -> str:
    """What the run trains at and towards, and why: a single file does not say its prediction target."""
    from .losses import resolve_prediction_type

    resolved = settings.for_base(base)
    family = base.model_family
    size = f"{resolved.resolution} px" + (f" ({family.label}'s own size)" if settings.resolution is None else "")
    buckets = "on" if resolved.bucket else "off"
    target = resolve_prediction_type(settings.prediction, base.noise_scheduler)
    why = base.prediction_reason if settings.prediction == "auto" else f"--prediction {settings.prediction}"
    return f"model: {family.label}, {size}, buckets {buckets}, target {target} ({why})"


def _load_dtype(args):
    """Load the base directly in the training precision on the CPU (no second copy); fp32 otherwise."""
    import torch

    from .devices import resolve_precision, torch_dtype, usable_device

    device = usable_device(args.device)
    return torch_dtype(resolve_precision(args.precision, device)) if device.type == "cpu" else torch.float32


def run_demo(args) -> dict[str, Any]:
    from . import tiny
    from .dataset import load_folder_dataset
    from .model_loading import load_base_model

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = tiny.write_tiny_tokenizer(workdir / "tokenizer")
    checkpoint = workdir / DEMO_FAMILIES[args.family]
    if not checkpoint.exists():
        tiny.save_ldm_checkpoint(tiny.build_base_model(tokenizer_dir, seed=0, family=args.family), checkpoint)
    data_dir = workdir / "data"
    if not data_dir.exists():
        tiny.write_synthetic_dataset(data_dir, count=8, size=64)
    base = load_base_model(checkpoint, tokenizer_dir, dtype=_load_dtype(args))
    dataset = load_folder_dataset(data_dir)
    return _run_training(args, base, dataset, workdir / "demo_lora.safetensors")


def run_train(args, group: ProcessGroup = SINGLE) -> dict[str, Any] | None:
    from .model_loading import load_base_model

    output = _check_output(Path(args.output))
    dataset = load_dataset_from_args(args)
    base = load_base_model(args.base, args.tokenizer, dtype=_load_dtype(args))
    return _run_training(args, base, dataset, output, group)


def _join_launched_processes(args) -> ProcessGroup:
    """The process group when `accelerate launch` / `torchrun` started several processes (only `train` runs so)."""
    from .distributed import join, launched_processes

    if launched_processes() > 1 and args.command != "train":
        raise TrainerError("The demo runs in one process; run `python -m core train` under accelerate launch or torchrun.")
    group, device = join(getattr(args, "device", None), getattr(args, "dist_timeout", 300))
    if device is not None:
        args.device = str(device)
    return group


def main(argv: list[str] | None = None) -> int:
    from .distributed import leave

    args = build_parser().parse_args(argv)
    if args.command == "caption":
        return caption_main(args)  # no torch, no process group: its own errors and JSON (core/caption_cli.py)
    started = time.perf_counter()
    group = SINGLE
    try:
        _quiet_libraries(offline=getattr(args, "offline", False))
        group = _join_launched_processes(args)
        summary = run_demo(args) if args.command == "demo" else run_train(args, group)
    except TrainerError as error:
        print(f"error: {error}" + (f" (process {group.rank})" if group.active else ""), file=sys.stderr)
        if group.is_main:
            print(json.dumps({"error": str(error)}))
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        leave(group)
    if summary is None:  # not the main process: it reported nothing and wrote nothing
        return 0
    summary["wall_seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(summary))
    return 0
