"""Rebuild the bundled sample models and their data files, deterministically.

Trains two digit classifiers in plain numpy on scikit-learn's bundled 8x8 digits (no download)
and writes them as ONNX next to this script, with held-out and calibration data:

    python sample_models/build.py

Fixed seeds, single-threaded BLAS and fixed zip timestamps make two runs byte-identical.
scikit-learn (data), threadpoolctl (BLAS threads) and onnxruntime (accuracy check) are
dev-only tools used here; the mcompress package never imports them.
"""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from threadpoolctl import threadpool_limits

OUT = Path(__file__).resolve().parent
SEED = 20240613
N_VAL = 360
N_CALIB = 64
OPSET = 13
IR_VERSION = 8
PRODUCER = "mcompress-sample-models"
BN_EPS = 1e-5
BN_MOMENTUM = 0.9
MIN_ACCURACY = {"digits_mlp": 0.95, "digits_cnn": 0.93}

Params = dict[str, np.ndarray]
Grads = dict[str, np.ndarray]


def split_digits(rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Digits scaled to [0, 1] as float32 [N, 64], shuffled into train and held-out parts."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = rng.permutation(len(y))
    val, train = order[:N_VAL], order[N_VAL:]
    return x[train], y[train], x[val], y[val]


class Adam:
    """Adam optimiser over a dict of float32 parameters, updated in place."""

    def __init__(self, params: Params, lr: float, weight_decay: float = 0.0) -> None:
        self.params, self.lr, self.wd = params, lr, weight_decay
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, grads: Grads) -> None:
        """Apply one update; weight decay (decoupled) touches only weight matrices/kernels."""
        self.t += 1
        b1, b2 = 0.9, 0.999
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for k, g in grads.items():
            self.m[k] = b1 * self.m[k] + (1 - b1) * g
            self.v[k] = b2 * self.v[k] + (1 - b2) * g * g
            update = self.lr * (self.m[k] / c1) / (np.sqrt(self.v[k] / c2) + 1e-8)
            if self.params[k].ndim > 1:
                update += self.lr * self.wd * self.params[k]
            self.params[k] -= update.astype(np.float32)


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def xent_grad(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(logits) against labels y, and its gradient wrt logits."""
    p = softmax(logits)
    n = len(y)
    loss = float(-np.log(p[np.arange(n), y] + 1e-12).mean())
    p[np.arange(n), y] -= 1.0
    return loss, (p / n).astype(np.float32)


def he(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """He-normal initialisation for a ReLU layer."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def train(
    params: Params,
    step: Callable[[np.ndarray, np.ndarray], tuple[float, Grads]],
    x: np.ndarray,
    y: np.ndarray,
    rng: np.random.Generator,
    *,
    epochs: int,
    batch: int,
    lr: float,
    weight_decay: float,
) -> float:
    """Minibatch Adam with a cosine learning-rate decay; returns the last epoch's mean loss."""
    opt = Adam(params, lr, weight_decay)
    loss = 0.0
    for epoch in range(epochs):
        opt.lr = lr * 0.5 * (1 + np.cos(np.pi * epoch / epochs))
        order = rng.permutation(len(y))
        losses = []
        for i in range(0, len(y), batch):
            idx = order[i : i + batch]
            batch_loss, grads = step(x[idx], y[idx])
            opt.step(grads)
            losses.append(batch_loss)
        loss = float(np.mean(losses))
    return loss


# --- MLP 64 -> 128 -> 64 -> 10 ---------------------------------------------------------------


def mlp_init(rng: np.random.Generator) -> Params:
    """Weights [in, out] (MatMul layout) and zero biases."""
    dims = [64, 128, 64, 10]
    params: Params = {}
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True), start=1):
        params[f"W{i}"] = he(rng, (a, b), a)
        params[f"b{i}"] = np.zeros(b, np.float32)
    return params


def mlp_step(params: Params, x: np.ndarray, y: np.ndarray) -> tuple[float, Grads]:
    """Forward and backward pass of the MLP on one batch."""
    h1 = np.maximum(x @ params["W1"] + params["b1"], 0)
    h2 = np.maximum(h1 @ params["W2"] + params["b2"], 0)
    loss, d3 = xent_grad(h2 @ params["W3"] + params["b3"], y)
    d2 = (d3 @ params["W3"].T) * (h2 > 0)
    d1 = (d2 @ params["W2"].T) * (h1 > 0)
    grads = {
        "W3": h2.T @ d3,
        "b3": d3.sum(0),
        "W2": h1.T @ d2,
        "b2": d2.sum(0),
        "W1": x.T @ d1,
        "b1": d1.sum(0),
    }
    return loss, grads


def mlp_graph(params: Params) -> onnx.GraphProto:
    """MatMul/Add/Relu layers and a final Softmax."""
    nodes = []
    h = "x"
    for i in (1, 2, 3):
        nodes.append(helper.make_node("MatMul", [h, f"W{i}"], [f"mm{i}"], name=f"fc{i}/MatMul"))
        out = "logits" if i == 3 else f"fc{i}"
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [out], name=f"fc{i}/Add"))
        if i < 3:
            nodes.append(helper.make_node("Relu", [out], [f"relu{i}"], name=f"relu{i}"))
            h = f"relu{i}"
    nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1))
    inits = [numpy_helper.from_array(v, k) for k, v in params.items()]
    return helper.make_graph(nodes, "digits_mlp", [_io("x", 64)], [_io("probs", 10)], inits)


# --- CNN: Conv+BN+Relu, Conv(stride 2)+BN+Relu, Conv+Relu, GAP, Gemm --------------------------

CONVS = [("conv1", 1, 16, 1, True), ("conv2", 16, 32, 2, True), ("conv3", 32, 32, 1, False)]


def cnn_init(rng: np.random.Generator) -> tuple[Params, Params]:
    """Trainable parameters and BatchNormalization running statistics."""
    params: Params = {}
    stats: Params = {}
    for name, cin, cout, _, bn in CONVS:
        params[f"{name}.W"] = he(rng, (cout, cin, 3, 3), cin * 9)
        if bn:
            params[f"{name}.gamma"] = np.ones(cout, np.float32)
            params[f"{name}.beta"] = np.zeros(cout, np.float32)
            stats[f"{name}.mean"] = np.zeros(cout, np.float32)
            stats[f"{name}.var"] = np.ones(cout, np.float32)
        else:
            params[f"{name}.b"] = np.zeros(cout, np.float32)
    params["fc.W"] = he(rng, (10, 32), 32)
    params["fc.b"] = np.zeros(10, np.float32)
    return params, stats


def conv_forward(x: np.ndarray, w: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """3x3 convolution, pad 1, on NHWC input via im2col; returns output and the columns."""
    b = x.shape[0]
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    win = sliding_window_view(xp, (3, 3), axis=(1, 2))[:, ::stride, ::stride]
    ho, wo = win.shape[1:3]
    cols = win.reshape(b * ho * wo, -1)  # (C, kh, kw) order, matching ONNX W[F, C, kh, kw]
    out = cols @ w.reshape(w.shape[0], -1).T
    return out.reshape(b, ho, wo, -1), cols


def conv_backward(
    dout: np.ndarray, cols: np.ndarray, w: np.ndarray, in_shape: tuple[int, ...], stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of conv_forward wrt the kernel and the input (col2im by 9 strided adds)."""
    b, ho, wo, f = dout.shape
    d2 = dout.reshape(-1, f)
    dw = (d2.T @ cols).reshape(w.shape)
    dcols = (d2 @ w.reshape(f, -1)).reshape(b, ho, wo, w.shape[1], 3, 3)
    _, h, wd, c = in_shape
    dxp = np.zeros((b, h + 2, wd + 2, c), np.float32)
    for i in range(3):
        for j in range(3):
            dxp[:, i : i + stride * ho : stride, j : j + stride * wo : stride] += dcols[..., i, j]
    return dw, dxp[:, 1:-1, 1:-1]


def cnn_forward(
    params: Params, stats: Params, x: np.ndarray, training: bool
) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
    """Logits for x [N, 64]; in training mode BN uses batch statistics and updates `stats`."""
    h = x.reshape(-1, 8, 8, 1)
    caches = []
    for name, _, _, stride, bn in CONVS:
        cache = {"in_shape": np.array(h.shape)}
        z, cache["cols"] = conv_forward(h, params[f"{name}.W"], stride)
        if bn:
            if training:
                mean, var = z.mean((0, 1, 2)), z.var((0, 1, 2))
                m = BN_MOMENTUM
                stats[f"{name}.mean"] = m * stats[f"{name}.mean"] + (1 - m) * mean
                stats[f"{name}.var"] = m * stats[f"{name}.var"] + (1 - m) * var
            else:
                mean, var = stats[f"{name}.mean"], stats[f"{name}.var"]
            cache["inv_std"] = 1.0 / np.sqrt(var + BN_EPS)
            cache["xhat"] = (z - mean) * cache["inv_std"]
            z = params[f"{name}.gamma"] * cache["xhat"] + params[f"{name}.beta"]
        else:
            z = z + params[f"{name}.b"]
        h = np.maximum(z, 0).astype(np.float32)
        cache["out"] = h
        caches.append(cache)
    pooled = h.mean((1, 2))
    caches.append({"pooled": pooled})
    return pooled @ params["fc.W"].T + params["fc.b"], caches


def cnn_step(params: Params, stats: Params, x: np.ndarray, y: np.ndarray) -> tuple[float, Grads]:
    """Forward (batch-mode BN) and backward pass of the CNN on one batch."""
    logits, caches = cnn_forward(params, stats, x, training=True)
    loss, dlogits = xent_grad(logits, y)
    pooled = caches[-1]["pooled"]
    grads = {"fc.W": dlogits.T @ pooled, "fc.b": dlogits.sum(0)}
    last = caches[-2]["out"]
    dh = np.broadcast_to(
        (dlogits @ params["fc.W"])[:, None, None, :] / (last.shape[1] * last.shape[2]), last.shape
    )
    for (name, _, _, stride, bn), cache in zip(reversed(CONVS), reversed(caches[:-1]), strict=True):
        dz = dh * (cache["out"] > 0)
        if bn:
            xhat, axes = cache["xhat"], (0, 1, 2)
            grads[f"{name}.gamma"] = (dz * xhat).sum(axes)
            grads[f"{name}.beta"] = dz.sum(axes)
            dxhat = dz * params[f"{name}.gamma"]
            n = dz.shape[0] * dz.shape[1] * dz.shape[2]
            dz = (cache["inv_std"] / n) * (
                n * dxhat - dxhat.sum(axes) - xhat * (dxhat * xhat).sum(axes)
            )
        else:
            grads[f"{name}.b"] = dz.sum((0, 1, 2))
        in_shape = tuple(int(s) for s in cache["in_shape"])
        grads[f"{name}.W"], dh = conv_backward(
            dz.astype(np.float32), cache["cols"], params[f"{name}.W"], in_shape, stride
        )
    return loss, {k: v.astype(np.float32) for k, v in grads.items()}


def cnn_graph(params: Params, stats: Params) -> onnx.GraphProto:
    """Reshape, three Conv layers (two followed by BatchNormalization), GAP, Flatten, Gemm."""
    nodes = [helper.make_node("Reshape", ["x", "image_shape"], ["image"], name="reshape")]
    inits = [numpy_helper.from_array(np.array([-1, 1, 8, 8], np.int64), "image_shape")]
    h = "image"
    for name, _, _, stride, bn in CONVS:
        conv_inputs = [h, f"{name}.W"] if bn else [h, f"{name}.W", f"{name}.b"]
        nodes.append(
            helper.make_node(
                "Conv",
                conv_inputs,
                [f"{name}.conv"],
                name,
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                strides=[stride, stride],
            )
        )
        z = f"{name}.conv"
        if bn:
            bn_inputs = [z] + [f"{name}.{p}" for p in ("gamma", "beta", "mean", "var")]
            nodes.append(
                helper.make_node(
                    "BatchNormalization",
                    bn_inputs,
                    [f"{name}.bn"],
                    f"{name}/bn",
                    epsilon=BN_EPS,
                    momentum=BN_MOMENTUM,
                )
            )
            z = f"{name}.bn"
        nodes.append(helper.make_node("Relu", [z], [f"{name}.relu"], f"{name}/relu"))
        h = f"{name}.relu"
    nodes += [
        helper.make_node("GlobalAveragePool", [h], ["pooled"], "gap"),
        helper.make_node("Flatten", ["pooled"], ["features"], "flatten", axis=1),
        helper.make_node("Gemm", ["features", "fc.W", "fc.b"], ["logits"], "fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], "softmax", axis=1),
    ]
    inits += [numpy_helper.from_array(v, k) for k, v in {**params, **stats}.items()]
    return helper.make_graph(nodes, "digits_cnn", [_io("x", 64)], [_io("probs", 10)], inits)


# --- export and data files ----------------------------------------------------------------------


def _io(name: str, width: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", width])


def make_model(graph: onnx.GraphProto, doc: str) -> onnx.ModelProto:
    """Wrap a graph as an IR 8 / opset 13 model that stock onnxruntime loads."""
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name=PRODUCER,
        producer_version="1",
        doc_string=doc,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def ort_accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of the exported model in onnxruntime (the number users will see)."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    probs = sess.run(["probs"], {"x": x})[0]
    return float((probs.argmax(1) == y).mean())


def finish(model: onnx.ModelProto, name: str, x_val: np.ndarray, y_val: np.ndarray) -> float:
    """Measure held-out accuracy, enforce the threshold, record it as metadata and save."""
    acc = ort_accuracy(model, x_val, y_val)
    if acc < MIN_ACCURACY[name]:
        raise SystemExit(f"{name}: held-out accuracy {acc:.4f} < {MIN_ACCURACY[name]}")
    helper.set_model_props(
        model,
        {
            "test_accuracy": f"{acc:.4f}",
            "test_set": f"sklearn load_digits, {len(y_val)} held-out samples (digits_val.npz)",
            "input_scaling": "pixel / 16, float32 in [0, 1]",
        },
    )
    (OUT / f"{name}.onnx").write_bytes(model.SerializeToString())
    return acc


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed equivalent with fixed zip timestamps, so rebuilds are byte-identical."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


def build() -> None:
    """Train both models, export them and write the data files, printing accuracies."""
    rng = np.random.default_rng(SEED)
    x_tr, y_tr, x_val, y_val = split_digits(rng)
    save_npz(OUT / "digits_val.npz", {"x": x_val, "labels": y_val})
    calib = rng.choice(len(y_tr), N_CALIB, replace=False)
    save_npz(OUT / "digits_calib.npz", {"x": x_tr[np.sort(calib)]})

    start = time.perf_counter()
    mlp = mlp_init(rng)
    loss = train(
        mlp,
        lambda xb, yb: mlp_step(mlp, xb, yb),
        x_tr,
        y_tr,
        rng,
        epochs=200,
        batch=64,
        lr=2e-3,
        weight_decay=1e-4,
    )
    doc = "Digits MLP 64-128-64-10, trained in numpy on sklearn's 8x8 digits by build.py."
    acc = finish(make_model(mlp_graph(mlp), doc), "digits_mlp", x_val, y_val)
    print(
        f"digits_mlp: loss {loss:.4f}, held-out acc {acc:.4f}, {time.perf_counter() - start:.1f}s"
    )

    start = time.perf_counter()
    cnn, bn_stats = cnn_init(rng)
    loss = train(
        cnn,
        lambda xb, yb: cnn_step(cnn, bn_stats, xb, yb),
        x_tr,
        y_tr,
        rng,
        epochs=40,
        batch=32,
        lr=3e-3,
        weight_decay=1e-4,
    )
    doc = "Digits CNN (Conv+BN stack), trained in numpy on sklearn's 8x8 digits by build.py."
    acc = finish(make_model(cnn_graph(cnn, bn_stats), doc), "digits_cnn", x_val, y_val)
    print(
        f"digits_cnn: loss {loss:.4f}, held-out acc {acc:.4f}, {time.perf_counter() - start:.1f}s"
    )


if __name__ == "__main__":
    with threadpool_limits(limits=1):
        build()
