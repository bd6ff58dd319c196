"""The risk model as an ONNX graph: per-feature surprise tables and the band map, written with the `onnx` package.

    features [N, F] --(per feature: piecewise-linear table x -> -log10 P_benign(X >= x), capped)--> surprise [N, F]
    surprise --(max over features)--> [N] --(piecewise-linear: 0 -> 0, alarm -> allow_below, deny -> max risk,
                                            deny + 3 decades -> 1)--> score [N]

A piecewise-linear function is written as a sum of clamped hinges, sum_k slope_k * min(max(x - x_k, 0), width_k),
which is a handful of element-wise operators: the whole graph runs in a few microseconds a row in onnxruntime.
Serving (authz_server/risk/model.py) only reads what is written here.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from authz_server.risk.model import INPUT, OUTPUT_SCORE, OUTPUT_SURPRISE

OPSET = 17
_ORDER_SPAN = 0.009
"""A capped feature rises by up to this much past its cap, in order of how far its raw surprise went over it: caps
sit 0.01 under the deny edge (training.py), so it stays under the deny edge while two capped features at once (an
off-hours call from a new subnet) are named in order of how far each moved, not by schema order."""
_ORDER_DECADES = 10.0
"""Raw surprise past the cap that the order still tells apart (decades)."""
_OPEN_WIDTH = 1e9
"""Width of the last segment of a table: it continues at its slope past anything a float32 feature holds."""


class OnnxMissing(RuntimeError):
    """The `onnx` package (the `train` extra) is not installed."""


_ONNX_MISSING = "writing a model needs the onnx package: pip install 'authz-server[train]' (or pip install onnx)"


def require_onnx() -> None:
    """Raise OnnxMissing now, before a training run that would only find out when it writes the model: reading
    and replaying two days of a site's decision log takes minutes."""
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise OnnxMissing(_ONNX_MISSING) from exc


@dataclass(frozen=True)
class SurpriseTables:
    """Per feature, the hinges of its table: knots [F, K], widths [F, K], slopes [F, K]; caps [F]."""

    knots: np.ndarray
    widths: np.ndarray
    slopes: np.ndarray
    caps: np.ndarray

    def surprise(self, rows: np.ndarray) -> np.ndarray:
        """What the graph computes, in numpy (training calibrates with it before the graph exists)."""
        x = np.asarray(rows, dtype=np.float32)[:, :, None]
        hinges = np.minimum(np.maximum(x - self.knots[None], 0.0), self.widths[None]) * self.slopes[None]
        raw = hinges.sum(axis=2, dtype=np.float32)
        caps = self.caps[None]
        over = np.minimum(np.maximum(raw - caps, np.float32(0.0)), np.float32(_ORDER_DECADES))
        capped: np.ndarray = (np.minimum(raw, caps) + over * np.float32(_ORDER_SPAN / _ORDER_DECADES)).astype(
            np.float32
        )
        return capped


def hinges(points: list[tuple[float, float]], tail_slope: float) -> tuple[list[float], list[float], list[float]]:
    """Knots, widths and slopes of the piecewise-linear function through `points` (x strictly increasing, y of the
    first point 0), continuing at `tail_slope` after the last point."""
    knots, widths, slopes = [], [], []
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        knots.append(x0)
        widths.append(x1 - x0)
        slopes.append((y1 - y0) / (x1 - x0))
    knots.append(points[-1][0])
    widths.append(_OPEN_WIDTH)
    slopes.append(tail_slope)
    return knots, widths, slopes


def pack(tables: list[tuple[list[float], list[float], list[float]]], caps: list[float]) -> SurpriseTables:
    """Per-feature hinges padded to one width (a padding hinge has width 0: it adds nothing)."""
    k = max(len(t[0]) for t in tables)
    shape = (len(tables), k)
    knots, widths, slopes = np.zeros(shape, np.float32), np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    for i, (x, w, s) in enumerate(tables):
        knots[i, : len(x)], widths[i, : len(w)], slopes[i, : len(s)] = x, w, s
    return SurpriseTables(knots, widths, slopes, np.asarray(caps, dtype=np.float32))


def band_map(alarm: float, deny: float, allow_below: float, max_risk: float) -> tuple[np.ndarray, ...]:
    """Hinges of the score map: 0 -> 0, alarm -> allow_below, deny -> max_risk, deny + 3 -> 1, flat after."""
    x, w, s = hinges([(0.0, 0.0), (alarm, allow_below), (deny, max_risk), (deny + 3.0, 1.0)], 0.0)
    return np.asarray(x, np.float32), np.asarray(w, np.float32), np.asarray(s, np.float32)


def score(surprise: np.ndarray, bands: tuple[np.ndarray, ...]) -> np.ndarray:
    knots, widths, slopes = bands
    top = surprise.max(axis=1)[:, None]
    mapped = (np.minimum(np.maximum(top - knots[None], 0.0), widths[None]) * slopes[None]).sum(axis=1)
    scores: np.ndarray = np.minimum(mapped, 1.0).astype(np.float32)
    return scores


def to_onnx(tables: SurpriseTables, bands: tuple[np.ndarray, ...], metadata: dict[str, str]) -> bytes:
    """The serialised model. Deterministic: the same tables and metadata give the same bytes."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as exc:
        raise OnnxMissing(_ONNX_MISSING) from exc

    n_features = tables.knots.shape[0]

    def const(name: str, value: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(np.ascontiguousarray(value, dtype=value.dtype), name)

    band_knots, band_widths, band_slopes = bands
    initializers = [
        const("knots", tables.knots),
        const("widths", tables.widths),
        const("slopes", tables.slopes),
        const("caps", tables.caps),
        const("zero", np.zeros((), np.float32)),
        const("order_decades", np.asarray(_ORDER_DECADES, np.float32)),
        const("order_slope", np.asarray(_ORDER_SPAN / _ORDER_DECADES, np.float32)),
        const("one", np.ones((), np.float32)),
        const("axis_last", np.asarray([2], np.int64)),
        const("axis_one", np.asarray([1], np.int64)),
        const("band_knots", band_knots),
        const("band_widths", band_widths),
        const("band_slopes", band_slopes),
    ]
    nodes = [
        helper.make_node("Unsqueeze", [INPUT, "axis_last"], ["x3"]),
        helper.make_node("Sub", ["x3", "knots"], ["past"]),
        helper.make_node("Max", ["past", "zero"], ["above"]),
        helper.make_node("Min", ["above", "widths"], ["within"]),
        helper.make_node("Mul", ["within", "slopes"], ["rise"]),
        helper.make_node("ReduceSum", ["rise", "axis_last"], ["raw_surprise"], keepdims=0),
        helper.make_node("Min", ["raw_surprise", "caps"], ["held"]),
        helper.make_node("Sub", ["raw_surprise", "caps"], ["over_cap"]),
        helper.make_node("Max", ["over_cap", "zero"], ["over_pos"]),
        helper.make_node("Min", ["over_pos", "order_decades"], ["over_kept"]),
        helper.make_node("Mul", ["over_kept", "order_slope"], ["order"]),
        helper.make_node("Add", ["held", "order"], [OUTPUT_SURPRISE]),
        helper.make_node("ReduceMax", [OUTPUT_SURPRISE], ["top"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["top", "band_knots"], ["band_past"]),
        helper.make_node("Max", ["band_past", "zero"], ["band_above"]),
        helper.make_node("Min", ["band_above", "band_widths"], ["band_within"]),
        helper.make_node("Mul", ["band_within", "band_slopes"], ["band_rise"]),
        helper.make_node("ReduceSum", ["band_rise", "axis_one"], ["mapped"], keepdims=0),
        helper.make_node("Min", ["mapped", "one"], [OUTPUT_SCORE]),
    ]
    graph = helper.make_graph(
        nodes,
        "authz_risk_surprise",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", n_features])],
        [
            helper.make_tensor_value_info(OUTPUT_SCORE, TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info(OUTPUT_SURPRISE, TensorProto.FLOAT, ["N", n_features]),
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="authz-server")
    model.ir_version = 8
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())
