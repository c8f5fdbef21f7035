"""``python -m core caption``: caption a dataset folder with the WD14 tagger, Florence-2 or BLIP and write
the captions (with copies of the images) into ``--output-dir`` for review, the same way the Captioner node does.

Only ``--output-dir`` is written (never the dataset's folder unless ``--allow-dataset-folder``); progress goes to
stderr and the last stdout line is a JSON summary, as with ``train``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from .dataset import LAYOUTS

CAPTIONERS = {"wd14": "wd14_tagger", "florence2": "florence2", "blip": "blip", "filename": "filename"}
TASK_NAMES = {"caption": "<CAPTION>", "detailed": "<DETAILED_CAPTION>", "more-detailed": "<MORE_DETAILED_CAPTION>"}
SAMPLE_CAPTIONS = 3


def add_caption_parser(commands) -> None:
    """The ``caption`` subcommand and its flags."""
    from .captioners import MODES

    parser = commands.add_parser("caption", help="caption a dataset folder (WD14 tagger, Florence-2, BLIP) into .txt files for review")
    parser.add_argument("--data", required=True, help="dataset folder in any layout of docs/data.md (images without captions are fine)")
    parser.add_argument("--layout", default="auto", choices=list(LAYOUTS), help="folder layout (default: detected)")
    parser.add_argument("--caption-extension", default=".txt", help="caption files read and written (default %(default)s)")
    parser.add_argument("--captioner", required=True, choices=list(CAPTIONERS), help="wd14 (booru tags), florence2 or blip (sentences), filename")
    parser.add_argument("--model", default=None, help="model folder (WD14: model.onnx + selected_tags.csv; Florence-2 / BLIP: a transformers folder) or a hub id")
    parser.add_argument("--output-dir", required=True, help="where the .txt files (and copies of the images) are written")
    parser.add_argument("--mode", default="fill", choices=list(MODES), help="fill: only images without a caption (default); replace; append / prepend: new tags after / before the existing caption, without repeats")
    parser.add_argument("--trigger", default="", help="put first in every caption")
    parser.add_argument("--prefix", default="", help="put at the start of every caption, after the trigger")
    parser.add_argument("--suffix", default="", help="put at the end of every caption")
    parser.add_argument("--batch-size", type=int, default=8, help="images per model run (default %(default)s)")
    parser.add_argument("--device", default=None, help="torch device for Florence-2 and BLIP; for WD14, cuda uses onnxruntime's CUDA provider when present (default: the best available)")
    parser.add_argument("--offline", action="store_true", help="never download a model (as HF_HUB_OFFLINE=1 does); a hub id must be in the cache")
    parser.add_argument("--captions-only", action="store_true", help="write only the caption files, not copies of the images")
    parser.add_argument("--allow-dataset-folder", action="store_true", help="allow --output-dir inside the dataset folder (captions next to the images)")
    tagger = parser.add_argument_group("WD14 tagger")
    tagger.add_argument("--general-threshold", type=float, default=0.35, help="keep a general tag at this confidence or more (default %(default)s)")
    tagger.add_argument("--character-threshold", type=float, default=0.85, help="keep a character tag at this confidence or more (default %(default)s)")
    tagger.add_argument("--max-tags", type=int, default=0, help="at most N character + general tags, most confident first (0: no limit)")
    tagger.add_argument("--exclude-tags", default="", help="comma-separated tags never written")
    tagger.add_argument("--keep-underscores", action="store_true", help="keep long_hair as it is (default: long hair)")
    tagger.add_argument("--no-escape", action="store_true", help="leave parentheses unescaped (default: star \\(symbol\\))")
    tagger.add_argument("--rating", action="store_true", help="add the most likely rating tag last")
    text = parser.add_argument_group("Florence-2 and BLIP")
    text.add_argument("--task", default="detailed", choices=list(TASK_NAMES), help="Florence-2: caption, detailed (default) or more-detailed")
    text.add_argument("--max-new-tokens", type=int, default=None, help="longest caption in tokens (default: Florence-2 256, BLIP 40)")
    text.add_argument("--num-beams", type=int, default=3, help="Florence-2 beam search width (default %(default)s)")


def _settings(args) -> Any:
    from .captioners import BlipSettings, Florence2Settings, TaggerSettings, parse_tag_text

    if args.captioner == "wd14":
        return TaggerSettings(
            general_threshold=args.general_threshold, character_threshold=args.character_threshold, max_tags=args.max_tags,
            exclude=parse_tag_text(args.exclude_tags), underscores_to_spaces=not args.keep_underscores,
            escape_parentheses=not args.no_escape, rating=args.rating,
        )
    if args.captioner == "florence2":
        return Florence2Settings(task=TASK_NAMES[args.task], max_new_tokens=args.max_new_tokens or 256, num_beams=args.num_beams)
    if args.captioner == "blip":
        return BlipSettings(max_new_tokens=args.max_new_tokens or 40)
    return None


def _quiet(captioner: str, offline: bool) -> None:
    """HF_HUB_OFFLINE for --offline; transformers' logs down for the models that use it (the tagger does not import it)."""
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    if captioner in ("florence2", "blip"):
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


def run_caption(args: argparse.Namespace) -> dict[str, Any]:
    from .captioners import caption_dataset, caption_folder, write_caption_files
    from .dataset import load_folder_dataset
    from .progress import ConsolePrinter

    _quiet(args.captioner, args.offline)
    settings = _settings(args)
    dataset = load_folder_dataset(args.data, layout=args.layout, caption_extension=args.caption_extension, allow_uncaptioned=True)
    output = caption_folder(dataset, args.output_dir, args.allow_dataset_folder)  # refused before any work
    print(f"data: {dataset.summary()}", file=sys.stderr)
    started = time.perf_counter()
    result = caption_dataset(
        dataset, CAPTIONERS[args.captioner], trigger=args.trigger, prefix=args.prefix, suffix=args.suffix, model=args.model,
        mode=args.mode, settings=settings, batch_size=args.batch_size, device=args.device, progress=ConsolePrinter(),
    )
    seconds = time.perf_counter() - started
    written = write_caption_files(result, output, extension=args.caption_extension, allow_source_folder=args.allow_dataset_folder,
                                  with_images=not args.captions_only)
    print(f"wrote {len(written)} caption files to {output}", file=sys.stderr)
    changed = sum(1 for old, new in zip(dataset.entries, result.entries) if old.caption != new.caption)
    return {
        "output_dir": str(output), "files_written": len(written), "images": len(result.entries), "captions_changed": changed,
        "captioner": args.captioner, "model": args.model, "mode": args.mode, "note": result.notes[-1] if result is not dataset and result.notes else "",
        "caption_seconds": round(seconds, 3), "images_per_second": round(len(result.entries) / seconds, 2) if seconds > 0 else None,
        "sample": {entry.name: entry.caption for entry in result.entries[:SAMPLE_CAPTIONS]},
    }


def caption_main(args: argparse.Namespace) -> int:
    """Run ``caption``: exit 0 with the JSON summary last on stdout, 2 with one sentence on bad input."""
    import json

    from .errors import TrainerError

    started = time.perf_counter()
    try:
        summary = run_caption(args)
    except TrainerError as error:
        print(f"error: {error}", file=sys.stderr)
        print(json.dumps({"error": str(error)}))
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    summary["wall_seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(summary))
    return 0
