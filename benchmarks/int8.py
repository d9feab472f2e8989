"""int8 measured (docs/speed.md): the network's graph quantised by ONNX Runtime's static quantisation,
calibrated on training images, against fp32; speed of the graph, and AR through `fastmask eval`.

Not part of fastmask: int8 lost masks AR@100 beyond the 0.3 points allowed, so `propose` has no int8
precision. Reproduce with

    fastmask export fast-stride8-iou-mnv2ssd-coco482-lsj --onnx /tmp/q/fp32.onnx
    python benchmarks/int8.py /tmp/q/fp32.onnx ../shared/data/train --calibration 16

then, for AR, put the int8 file in place of the cached graph of the weights (in $FASTMASK_CACHE, with
its `.sha256` rewritten) and run `fastmask eval GT results.json --images VAL --top-k 1000 --jobs 1`.

Calibration: the first N training images in sorted order, resized as `propose` resizes them (longer
side 800), MinMax ranges, QDQ format, weights int8 per channel, activations uint8.
"""

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process


def as_input(path: Path, size: int = 800) -> np.ndarray:
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    h, w = image.shape[:2]
    scale = size / max(h, w)
    image = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None].astype(np.float32))


class Images(CalibrationDataReader):
    def __init__(self, files: list[Path]) -> None:
        self.files = iter(files)

    def get_next(self) -> dict | None:
        path = next(self.files, None)
        return None if path is None else {"images": as_input(path)}


def seconds(path: Path, image: np.ndarray, threads: int, runs: int = 8) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, {"images": image})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {"images": image})
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("graph", type=Path, help="fp32 graph from `fastmask export ... --onnx`")
    parser.add_argument("images", type=Path, help="training images to calibrate on")
    parser.add_argument("--calibration", type=int, default=16, help="first N images in sorted order")
    args = parser.parse_args()
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    prepared, int8 = args.graph.with_suffix(".pre.onnx"), args.graph.with_suffix(".int8.onnx")
    quant_pre_process(str(args.graph), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(int8), Images(files[: args.calibration]), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    image = as_input(files[-1])
    for threads in (1, 2):
        fp32, q = seconds(args.graph, image, threads), seconds(int8, image, threads)
        print(f"{threads} threads: fp32 {fp32:.4f} s, int8 {q:.4f} s ({fp32 / q:.2f}x)")
    print(f"int8 graph: {int8}")


if __name__ == "__main__":
    main()
