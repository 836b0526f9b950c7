"""Per-class NMS of decoded detections, in NumPy and inside an exported ONNX graph (TAO's BatchedNMS outputs).

:func:`nms` is what evaluation and inference run on decoded outputs (boxes ``[B, N, 4]`` x1 y1 x2 y2
in input pixels, class scores ``[B, N, C]``): candidates are the (box, class) pairs scoring above
``confidence_threshold`` (among the :data:`MAX_NMS_CANDIDATES` best of an image, ties kept), greedy NMS within
each class at ``iou_threshold``, the ``top_k`` best survivors of all classes kept.

:class:`BatchedNMS` is the same NMS as the tail of an exported detector (``ExportAdapter.tail``):
appended to the ONNX graph after its decoding, it writes TAO's BatchedNMS outputs, which DeepStream's
``NvDsInferParseCustomBatchedNMSTLT`` parser reads in this order:

* ``num_detections`` int32 ``[B, 1]``: kept detections of each image;
* ``nmsed_boxes`` float32 ``[B, top_k, 4]``: x1 y1 x2 y2 normalised by the input width and height;
* ``nmsed_scores`` float32 ``[B, top_k]``, best first;
* ``nmsed_classes`` float32 ``[B, top_k]``: class indices as floats (TAO's plugin writes them so);

rows past ``num_detections`` are zero. In the ONNX graph the NMS is ONNX's standard
``NonMaxSuppression`` (onnxruntime runs it, TensorRT 8.5+ parses it) followed by TopK/Gather
nodes that order, truncate and pad; :meth:`BatchedNMS.tensorrt` swaps that tail for TensorRT's
``EfficientNMS_TRT`` plugin where an engine is built. :meth:`BatchedNMS.reference` is the NumPy
side of the same outputs (what a model file gives through PyTorch), so a model file and its ONNX
are evaluated through the same outputs and the same :meth:`BatchedNMS.detections`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence

import numpy as np

from taoctl.engine.metrics.detection import ImageDetections
from taoctl.errors import TaoctlError

# At most this many highest-scoring (box, class) candidates of an image enter NMS (a low
# confidence_threshold such as TAO's 0.001 would otherwise hand it every anchor of every class).
MAX_NMS_CANDIDATES = 4000
OUTPUT_NAMES = ("num_detections", "nmsed_boxes", "nmsed_scores", "nmsed_classes")
# Node, initializer and intermediate tensor names of the appended tail start with this.
PREFIX = "BatchedNMS/"
METADATA_KEY = "taoctl.graph_tail"


def nms(boxes: np.ndarray, scores: np.ndarray, confidence_threshold: float, iou_threshold: float,
        top_k: int, max_candidates: int = MAX_NMS_CANDIDATES) -> list[ImageDetections]:
    """Decoded outputs (boxes [B, N, 4], scores [B, N, C]) -> per image its kept detections, best first."""
    out = []
    for image_boxes, image_scores in zip(np.asarray(boxes, np.float32), np.asarray(scores, np.float32)):
        above = image_scores > confidence_threshold
        if image_scores.size > max_candidates:
            # The graph's cut: every (box, class) score below the max_candidates-th best drops out (ties kept).
            above &= image_scores >= np.partition(image_scores.reshape(-1), -max_candidates)[-max_candidates]
        anchor, cls = np.nonzero(above)
        candidate_scores = image_scores[anchor, cls]
        keep = greedy_nms(image_boxes[anchor], candidate_scores, cls, iou_threshold, top_k)
        out.append(ImageDetections(image_boxes[anchor[keep]].astype(np.float64).reshape(-1, 4),
                                   cls[keep].astype(np.int64), candidate_scores[keep].astype(np.float64)))
    return out


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float,
               top_k: int) -> np.ndarray:
    """Per-class greedy NMS (a box is dropped when its IoU with a better kept box of its class is above
    ``iou_threshold``), stopping once ``top_k`` boxes are kept: indices by decreasing score.

    Equal scores (common in an INT8 model's) are taken lower class first, then in the order given (box
    index): the order of the exported graph's NonMaxSuppression (per class, lower box index first on a
    tie) and TopK (lower row first), so the same boxes survive and are cut at ``top_k``.
    torchvision's batched_nms gives the same boxes but cannot stop early, and an untrained head's
    thousands of scattered candidates each cost it a pass.
    """
    order = np.lexsort((classes, -scores))
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while len(order) and len(keep) < top_k:
        i, rest = order[0], order[1:]
        keep.append(i)
        same = classes[rest] == classes[i]
        w = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        h = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = w * h
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[~(same & (iou > iou_threshold))]
    return np.array(keep, dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class BatchedNMS:
    """TAO's BatchedNMS as an export tail (module docstring): consumes the graph outputs ``boxes`` and
    ``scores`` (decoded, input pixels) and outputs :data:`OUTPUT_NAMES`.

    ``image_size``: (width, height) of the network input, by which boxes are normalised.
    """

    boxes: str
    scores: str
    image_size: tuple[int, int]
    confidence_threshold: float
    iou_threshold: float
    top_k: int
    max_candidates: int = MAX_NMS_CANDIDATES

    output_names = OUTPUT_NAMES
    min_opset = 11  # NonMaxSuppression 10, Range and GatherND 11

    def __post_init__(self):
        if self.top_k < 1:
            raise TaoctlError(f"nms_config.top_k must be >= 1, got {self.top_k}")

    @property
    def input_names(self) -> tuple[str, str]:
        return self.boxes, self.scores

    def _scale(self) -> np.ndarray:
        width, height = self.image_size
        return np.array([width, height, width, height], np.float32)

    # ------------------------------------------------------------------ NumPy side
    def reference(self, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The BatchedNMS outputs of decoded ``{boxes, scores}`` in NumPy (what the ONNX tail computes)."""
        found = nms(outputs[self.boxes], outputs[self.scores], self.confidence_threshold, self.iou_threshold,
                    self.top_k, self.max_candidates)
        return self.pack(found)

    def pack(self, found: Sequence[ImageDetections]) -> dict[str, np.ndarray]:
        """Per-image detections (input pixels) -> the four fixed-size outputs, zero-padded."""
        batch, k = len(found), self.top_k
        count = np.zeros((batch, 1), np.int32)
        boxes = np.zeros((batch, k, 4), np.float32)
        scores = np.zeros((batch, k), np.float32)
        classes = np.zeros((batch, k), np.float32)
        for i, image in enumerate(found):
            n = min(len(image.scores), k)
            count[i, 0] = n
            boxes[i, :n] = np.asarray(image.boxes[:n], np.float32) / self._scale()
            scores[i, :n] = image.scores[:n]
            classes[i, :n] = image.classes[:n]
        return dict(zip(OUTPUT_NAMES, (count, boxes, scores, classes)))

    def detections(self, outputs: Sequence[np.ndarray] | Mapping[str, np.ndarray]) -> list[ImageDetections]:
        """BatchedNMS outputs (in :data:`OUTPUT_NAMES` order, or by name) -> per image its detections in
        input pixels, best first: what evaluation and inference read from a model file, an ONNX or an engine."""
        if isinstance(outputs, Mapping):
            outputs = [outputs[name] for name in OUTPUT_NAMES]
        if len(outputs) != len(OUTPUT_NAMES):
            raise TaoctlError(f"the model gives {len(outputs)} outputs; TAO's BatchedNMS set is 4 "
                              f"({', '.join(OUTPUT_NAMES)}): export it again with this taoctl")
        count, boxes, scores, classes = (np.asarray(o) for o in outputs)
        scale = self._scale().astype(np.float64)
        out = []
        for i in range(len(count)):
            n = int(np.asarray(count[i]).reshape(-1)[0])
            out.append(ImageDetections(boxes[i, :n].astype(np.float64).reshape(-1, 4) * scale,
                                       np.rint(classes[i, :n]).astype(np.int64), scores[i, :n].astype(np.float64)))
        return out

    def check(self, got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray],
              tolerance: float = 1e-5) -> list[tuple[str, str, str | None]]:
        """(output, what was measured, why it fails or None) for BatchedNMS outputs ``got`` against ``want``:
        the same count, classes and padding per image, boxes and scores within ``tolerance``."""
        checks = []
        got_count, want_count = (np.asarray(o[OUTPUT_NAMES[0]]).reshape(-1) for o in (got, want))
        if got_count.shape != want_count.shape or (got_count != want_count).any():
            why = f"counts {got_count.tolist()[:8]}, expected {want_count.tolist()[:8]}"
            checks.append((OUTPUT_NAMES[0], why, why))
            return checks
        checks.append((OUTPUT_NAMES[0], f"{int(want_count.sum())} detections", None))
        for name in OUTPUT_NAMES[1:]:
            a, b = np.asarray(got[name], np.float64), np.asarray(want[name], np.float64)
            if a.shape != b.shape:
                why = f"shape {a.shape}, expected {b.shape}"
                checks.append((name, why, why))
                continue
            diff = float(np.abs(a - b).max()) if a.size else 0.0
            limit = 0.0 if name == "nmsed_classes" else tolerance
            found = f"max abs diff {diff:.3g}"
            checks.append((name, found, None if diff <= limit else f"{found} (over {limit:g})"))
        return checks

    # ------------------------------------------------------------------ ONNX side
    def metadata(self) -> str:
        return json.dumps({"kind": "batched_nms", **dataclasses.asdict(self)})

    @classmethod
    def from_metadata(cls, text: str) -> "BatchedNMS":
        fields = json.loads(text)
        fields.pop("kind", None)
        fields["image_size"] = tuple(fields["image_size"])
        return cls(**fields)

    def append(self, model, keep_inputs: bool = False):
        """``model`` (an onnx ModelProto whose outputs include ``boxes`` and ``scores``) with the BatchedNMS
        tail appended; its outputs become :data:`OUTPUT_NAMES` (after the consumed ones with
        ``keep_inputs``). The tail's parameters are recorded in the model's metadata (:meth:`tensorrt`)."""
        import onnx
        from onnx import TensorProto, helper

        opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)
        if opset < self.min_opset:
            raise TaoctlError(f"the BatchedNMS outputs need ONNX opset {self.min_opset} or newer "
                              f"(NonMaxSuppression, GatherND), got {opset}")
        model = onnx.ModelProto.FromString(model.SerializeToString())
        graph = model.graph
        declared = {output.name: output for output in graph.output}
        missing = [name for name in self.input_names if name not in declared]
        if missing:
            raise ValueError(f"the graph has no output {missing[0]} (outputs: {list(declared)})")
        score_dims = declared[self.scores].type.tensor_type.shape.dim
        if len(score_dims) != 3 or not all(d.HasField("dim_value") for d in score_dims[1:]):
            raise ValueError(f"output {self.scores} must be [batch, boxes, classes] with fixed boxes and classes")
        candidates = score_dims[1].dim_value * score_dims[2].dim_value
        batch_dim = declared[self.boxes].type.tensor_type.shape.dim[0]
        weights = {tensor.name for tensor in graph.initializer}
        first_input = next((i for i in graph.input if i.name not in weights), None)
        if first_input is not None and first_input.type.tensor_type.shape.dim:
            input_batch = first_input.type.tensor_type.shape.dim[0]
            if input_batch.HasField("dim_param"):  # name the outputs' batch axis as the input's
                batch_dim = input_batch

        nodes, initializers = [], []
        k = int(self.top_k)

        def const(name: str, value) -> str:
            initializers.append(onnx.numpy_helper.from_array(np.asarray(value), PREFIX + name))
            return PREFIX + name

        def node(op: str, inputs: list[str], outputs: int | list[str] = 1, **attributes):
            name = f"{PREFIX}{op}_{len(nodes)}"
            names = outputs if isinstance(outputs, list) else [f"{name}_out{i}" for i in range(outputs)]
            nodes.append(helper.make_node(op, inputs, names, name=name, **attributes))
            return names[0] if len(names) == 1 else names

        scores = self.scores
        if candidates > self.max_candidates:
            # Only an image's max_candidates best (box, class) scores stay (and any tied with the last):
            # the others drop to 0, under any threshold (NumPy's nms keeps the same ones).
            flat = node("Reshape", [scores, const("flat_shape", np.array([0, -1], np.int64))])
            best, _ = node("TopK", [flat, const("candidates", np.array([self.max_candidates], np.int64))], 2,
                           axis=1)
            last = node("Slice", [best, const("last_start", np.array([-1], np.int64)),
                                  const("last_end", np.array([self.max_candidates], np.int64)),
                                  const("last_axis", np.array([1], np.int64))])
            kth = node("Reshape", [last, const("kth_shape", np.array([0, 1, 1], np.int64))])
            scores = node("Where", [node("Less", [scores, kth]), const("zero", np.array(0.0, np.float32)), scores])
        per_class = node("Transpose", [scores], perm=[0, 2, 1])  # [B, C, N]
        selected = node("NonMaxSuppression", [self.boxes, per_class, const("max_per_class", np.array([k], np.int64)),
                                              const("iou", np.array([self.iou_threshold], np.float32)),
                                              const("score", np.array([self.confidence_threshold], np.float32))],
                        center_point_box=0)  # [M, 3]: image, class, box
        image = node("Gather", [selected, const("col0", np.array(0, np.int64))], axis=1)
        cls = node("Gather", [selected, const("col1", np.array(1, np.int64))], axis=1)
        image_box = node("Gather", [selected, const("cols02", np.array([0, 2], np.int64))], axis=1)
        kept_scores = node("GatherND", [per_class, selected])  # [M]
        kept_boxes = node("GatherND", [self.boxes, image_box])  # [M, 4]
        # k padding rows that belong to no image, so every image has at least k rows to pick from.
        rows_image = node("Concat", [image, const("pad_image", np.full(k, -1, np.int64))], axis=0)
        rows_score = node("Concat", [kept_scores, const("pad_score", np.zeros(k, np.float32))], axis=0)
        rows_class = node("Concat", [node("Cast", [cls], to=TensorProto.FLOAT),
                                     const("pad_class", np.zeros(k, np.float32))], axis=0)
        rows_box = node("Concat", [kept_boxes, const("pad_box", np.zeros((k, 4), np.float32))], axis=0)
        # [B, rows]: each image's own rows' scores, -1 elsewhere; its k best rows are its detections.
        batch = node("Gather", [node("Shape", [self.boxes]), const("dim0", np.array(0, np.int64))], axis=0)
        images = node("Reshape", [node("Range", [const("zero_i", np.array(0, np.int64)), batch,
                                                 const("one_i", np.array(1, np.int64))]),
                                  const("column", np.array([-1, 1], np.int64))])
        matrix = node("Where", [node("Equal", [images, rows_image]), rows_score,
                                const("minus_one", np.array(-1.0, np.float32))])
        best, order = node("TopK", [matrix, const("top_k", np.array([k], np.int64))], 2, axis=1)  # [B, k]
        valid = node("Greater", [best, const("minus_half", np.array(-0.5, np.float32))])
        zero = const("zero_f", np.array(0.0, np.float32))
        node("Where", [valid, node("Gather", [rows_score, order], axis=0), zero], [OUTPUT_NAMES[2]])
        node("Where", [valid, node("Gather", [rows_class, order], axis=0), zero], [OUTPUT_NAMES[3]])
        boxes = node("Div", [node("Gather", [rows_box, order], axis=0), const("scale", self._scale())])
        valid3 = node("Reshape", [valid, const("valid_shape", np.array([0, -1, 1], np.int64))])
        node("Where", [valid3, boxes, zero], [OUTPUT_NAMES[1]])
        ones = const("ones", np.ones((k, 1), np.float32))
        count = node("MatMul", [node("Cast", [valid], to=TensorProto.FLOAT), ones])  # [B, 1]
        node("Cast", [count], [OUTPUT_NAMES[0]], to=TensorProto.INT32)

        graph.node.extend(nodes)
        graph.initializer.extend(initializers)
        # The consumed outputs stay described as intermediate values (strip() restores them).
        graph.value_info.extend(declared[name] for name in self.input_names
                                if name not in {info.name for info in graph.value_info})
        kept = [output for output in graph.output if keep_inputs or output.name not in self.input_names]
        del graph.output[:]
        graph.output.extend(kept)
        graph.output.extend(self._output_infos(batch_dim))
        entries = [entry for entry in model.metadata_props if entry.key != METADATA_KEY]
        del model.metadata_props[:]
        model.metadata_props.extend(entries)
        model.metadata_props.add(key=METADATA_KEY, value=self.metadata())
        return model

    def _output_infos(self, batch_dim) -> list:
        from onnx import TensorProto, helper

        batch = batch_dim.dim_param if batch_dim.HasField("dim_param") else (batch_dim.dim_value or None)
        k = int(self.top_k)
        shapes = ([batch, 1], [batch, k, 4], [batch, k], [batch, k])
        types = (TensorProto.INT32, TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT)
        return [helper.make_tensor_value_info(name, dtype, shape) for name, dtype, shape in zip(OUTPUT_NAMES, types,
                                                                                                 shapes)]

    def strip(self, model):
        """``model`` without the appended tail: the decoded ``boxes`` and ``scores`` as its outputs again
        (e.g. to quantise the network alone, then :meth:`append` again)."""
        import onnx

        model = onnx.ModelProto.FromString(model.SerializeToString())
        graph = model.graph
        nodes = [n for n in graph.node if not n.name.startswith(PREFIX)]
        initializers = [t for t in graph.initializer if not t.name.startswith(PREFIX)]
        infos = {info.name: info for info in graph.value_info}
        missing = [name for name in self.input_names if name not in infos]
        if missing:
            raise TaoctlError(f"the graph does not describe {missing[0]}: it was not written by taoctl's BatchedNMS")
        outputs = [o for o in graph.output if o.name not in OUTPUT_NAMES] + [infos[n] for n in self.input_names]
        for field, values in ((graph.node, nodes), (graph.initializer, initializers), (graph.output, outputs)):
            del field[:]
            field.extend(values)
        entries = [entry for entry in model.metadata_props if entry.key != METADATA_KEY]
        del model.metadata_props[:]
        model.metadata_props.extend(entries)
        return model

    def tensorrt(self, model):
        """``model`` with its NonMaxSuppression tail replaced by TensorRT's ``EfficientNMS_TRT`` plugin
        (same outputs: boxes normalised before the plugin, its int32 classes cast to float). TensorRT's
        parser needs the plugin library initialised (``trt.init_libnvinfer_plugins``)."""
        import onnx
        from onnx import TensorProto, helper

        model = onnx.ModelProto.FromString(model.SerializeToString())
        graph = model.graph
        nodes = [n for n in graph.node if not n.name.startswith(PREFIX)]
        initializers = [t for t in graph.initializer if not t.name.startswith(PREFIX)]
        del graph.node[:]
        del graph.initializer[:]
        graph.node.extend(nodes)
        graph.initializer.extend(initializers)
        scale = onnx.numpy_helper.from_array(self._scale(), PREFIX + "scale")
        graph.initializer.append(scale)
        normalised = PREFIX + "normalised_boxes"
        classes = PREFIX + "classes_int32"
        graph.node.extend([
            helper.make_node("Div", [self.boxes, scale.name], [normalised], name=PREFIX + "normalise"),
            helper.make_node("EfficientNMS_TRT", [normalised, self.scores],
                             [OUTPUT_NAMES[0], OUTPUT_NAMES[1], OUTPUT_NAMES[2], classes], name=PREFIX + "EfficientNMS",
                             plugin_version="1", background_class=-1, max_output_boxes=int(self.top_k),
                             score_threshold=float(self.confidence_threshold),
                             iou_threshold=float(self.iou_threshold), score_activation=0, class_agnostic=0,
                             box_coding=0),
            helper.make_node("Cast", [classes], [OUTPUT_NAMES[3]], name=PREFIX + "classes_float",
                             to=TensorProto.FLOAT),
        ])
        return model


def graph_tail(model):
    """The :class:`BatchedNMS` an exported ONNX ``model`` records in its metadata, or None."""
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY and json.loads(entry.value).get("kind") == "batched_nms":
            return BatchedNMS.from_metadata(entry.value)
    return None
