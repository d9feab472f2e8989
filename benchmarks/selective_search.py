"""The peer of the "Selective Search" comparison in docs/speed.md: OpenCV's Selective Search, fast mode, on a folder.

Not part of fastmask and not a dependency: run it from a scratch environment with the contrib build,

    python -m venv /tmp/ss && /tmp/ss/bin/pip install opencv-contrib-python-headless
    /tmp/ss/bin/python benchmarks/selective_search.py ../shared/data/val --count 20

Each image is resized to 500 px on its longer side (as its authors' fast setting is used for
proposals), segmented with `switchToSelectiveSearchFast`, and its first 1000 boxes kept; 2 threads.
Prints the seconds per image (reading and resizing included, start-up not), as `fastmask propose` does.
"""

import argparse
import time
from pathlib import Path

import cv2


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--count", type=int, default=20, help="first N images in sorted order")
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--boxes", type=int, default=1000)
    args = parser.parse_args()
    cv2.setNumThreads(2)
    files = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.count]
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    started = time.perf_counter()
    for path in files:
        image = cv2.imread(str(path))
        scale = args.size / max(image.shape[:2])
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        search.setBaseImage(image)
        search.switchToSelectiveSearchFast()
        search.process()[: args.boxes]
    print(f"selective search (fast): {len(files)} images, {(time.perf_counter() - started) / len(files):.3f} s/img")


if __name__ == "__main__":
    main()
