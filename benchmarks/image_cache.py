"""Loading an image-folder data set: decoding every file (what each run did before the cache;
the first run still does) against the cached load of later runs, timed in one run on the
same synthetic TinyImageNet-like JPEGs (64x64).

    python benchmarks/image_cache.py [--images 5000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def write_jpegs(folder: Path, n: int) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        path = folder / f"class{i % 20}" / f"{i}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        smooth = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
        Image.fromarray(smooth).save(path, quality=90)
        files.append(path)
    return files


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["IMPLICIT_SPARSITY_CACHE"] = str(Path(tmp) / "cache")
        from implicit_sparsity.data import formats, image_cache

        files = write_jpegs(Path(tmp) / "images", args.images)
        decoded, t_first = timed(lambda: image_cache.load_images(files, 64, "bench"))
        cached, t_cached = timed(lambda: image_cache.load_images(files, 64, "bench"))
        assert np.array_equal(decoded, cached)
        assert np.array_equal(decoded[-1], formats.load_image(files[-1], 64))
    print(f"{args.images} JPEGs 64x64 ({decoded.nbytes / 2**20:.0f} MiB decoded)")
    print(f"decoding (first run, cache written) {args.images / t_first:9.0f} img/s "
          f"({t_first:.2f} s)")
    print(f"from the cache (later runs)         {args.images / t_cached:9.0f} img/s "
          f"({t_cached:.3f} s): {t_first / t_cached:.1f}x")


if __name__ == "__main__":
    main()
