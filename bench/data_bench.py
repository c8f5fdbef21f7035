"""Data-side measurements (not tests): HF indexing cost, and the cost of caption augmentation's text encoding.

    python -m bench.data_bench index --rows 800 --size 1280 --workdir /tmp/pq800
    python -m bench.data_bench text-cost

``index`` writes a synthetic pokemon-sized parquet dataset (JPEG, like the hub's copy), then
in fresh processes indexes it twice with ``load_hf_dataset`` (cold: datasets converts the
parquet into its Arrow cache; warm: the cache is reused) and reports seconds, the process's
resident memory after indexing and its peak, and the memory after opening every image once
(each decoded image is dropped after use, so it must not grow with the row count).
``text-cost`` times the full-size SD1.5 CLIP text encoder (random weights) on one caption,
the per-step price of a caption variant that is not in the cache.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_parquet(folder: Path, rows: int, size: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train-00000-of-00001.parquet"
    if path.exists():
        return
    rng = np.random.default_rng(0)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("image", image_type), ("en_text", pa.string()), ("zh_text", pa.string())],
                       metadata={"huggingface": json.dumps({"info": {"features": {
                           "image": {"_type": "Image"}, "en_text": {"dtype": "string", "_type": "Value"},
                           "zh_text": {"dtype": "string", "_type": "Value"}}}})})
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, 50):
            batch = []
            for index in range(start, min(rows, start + 50)):
                small = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)  # a smooth picture with detail, like art
                image = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=90)
                batch.append({"image": {"bytes": buffer.getvalue(), "path": None},
                              "en_text": f"a drawing of a creature number {index}", "zh_text": "一只宝可梦"})
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))


def index_once(folder: str, cache: str, open_all: bool) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    before = rss_mib()
    start = time.perf_counter()
    from core.hf_dataset import load_hf_dataset

    dataset = load_hf_dataset(folder, cache_dir=cache)
    seconds = time.perf_counter() - start
    result = {"rows": len(dataset), "index_seconds": round(seconds, 2), "rss_before_mib": round(before), "rss_after_index_mib": round(rss_mib()),
              "peak_mib": round(peak_mib()), "summary": dataset.summary()[:120]}
    if open_all:
        start = time.perf_counter()
        for entry in dataset.entries:
            entry.open_image()
        result["open_all_seconds"] = round(time.perf_counter() - start, 2)
        result["rss_after_opening_all_mib"] = round(rss_mib())
    return result


def text_cost() -> dict:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig.from_json_file(str(Path(__file__).resolve().parent.parent / "core" / "configs" / "sd15_text_encoder.json"))
    model = CLIPTextModel(config).eval()
    ids = torch.randint(0, 49000, (1, 77))
    with torch.no_grad():
        model(ids)
        start = time.perf_counter()
        for _ in range(10):
            model(ids)
    per = (time.perf_counter() - start) / 10
    return {"device": "cpu", "threads": torch.get_num_threads(), "clip_l_seconds_per_caption": round(per, 4),
            "embedding_kib_fp32": 77 * 768 * 4 // 1024}


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    index = commands.add_parser("index")
    index.add_argument("--rows", type=int, default=800)
    index.add_argument("--size", type=int, default=1280)
    index.add_argument("--workdir", default="/tmp/data_bench")
    once = commands.add_parser("index-once")
    once.add_argument("folder")
    once.add_argument("cache")
    once.add_argument("--open-all", action="store_true")
    commands.add_parser("text-cost")
    args = parser.parse_args()
    if args.command == "index":
        folder, cache = Path(args.workdir) / "parquet", Path(args.workdir) / "hf_cache"
        start = time.perf_counter()
        write_parquet(folder, args.rows, args.size)
        size = sum(p.stat().st_size for p in folder.iterdir())
        print(json.dumps({"generated_seconds": round(time.perf_counter() - start, 1), "parquet_mib": round(size / 2**20)}))
        for label, extra in (("cold", []), ("warm", ["--open-all"])):
            output = subprocess.run([sys.executable, "-m", "bench.data_bench", "index-once", str(folder), str(cache), *extra],
                                    capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent)
            print(label, output.stdout.strip().splitlines()[-1])
    elif args.command == "index-once":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        import datasets

        datasets.disable_progress_bars()
        print(json.dumps(index_once(args.folder, args.cache, args.open_all)))
    else:
        print(json.dumps(text_cost()))


if __name__ == "__main__":
    main()
