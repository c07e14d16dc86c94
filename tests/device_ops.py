"""What a traced train step would run on an accelerator: every op of a concrete function's graph, nested
functions included (the branches of Case/If, loop bodies), checked against the ops that have no accelerator
kernel (TensorFlow places them on the host: a device -> host -> device copy inside the step) and the ops of
a loop (tf.map_fn / tf.while_loop over the batch)."""

from __future__ import annotations

from tensorflow.core.framework import types_pb2

# kernels registered for the CPU only, or Python/NumPy code: each would pull the batch back to the host
HOST_ONLY = {"ScaleAndTranslate", "ScaleAndTranslateGrad", "PyFunc", "PyFuncStateless", "EagerPyFunc",
             "NumpyFunction", "DecodeJpeg", "DecodePng", "DecodeImage", "DecodeAndCropJpeg", "DecodeBmp",
             "DecodeGif", "ReadFile", "RandomIndexShuffle", "Assert", "PrintV2", "StringFormat"}
LOOPS = {"While", "StatelessWhile", "For", "TensorListReserve", "TensorListFromTensor", "TensorListStack"}


def _nodes(graph_def):
    yield from graph_def.node
    for function in graph_def.library.function:
        yield from function.node_def


def _has_string(node) -> bool:
    for value in node.attr.values():
        if value.type == types_pb2.DT_STRING or types_pb2.DT_STRING in value.list.type:
            return True
    return False


def op_report(concrete_function) -> dict:
    """{"types": every op type, "host_only": the host-only ones, "strings": ops on strings, "loops": loop ops}."""
    nodes = list(_nodes(concrete_function.graph.as_graph_def()))
    types = sorted({node.op for node in nodes})
    return {"types": types, "host_only": sorted(set(types) & HOST_ONLY),
            "strings": sorted({node.op for node in nodes if _has_string(node)}),
            "loops": sorted(set(types) & LOOPS)}
