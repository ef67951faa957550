"""ONNX Runtime on torchvision's inception_v3 (eval, no auxiliary head's output), 2 threads: median
seconds per batch of 32 (and of 1) 299x299 images, the figure `benches/compare_peers.sh` sets beside
`incept bench --model inception-v3 --batch 32`. ../shared/peers/bench_torch.py times PyTorch on the same
model but has no ONNX Runtime section for it. With INT8=1, the same model quantized as
../shared/peers/lowprec_peers.py quantizes googlenet-d2l (static QDQ, u8 activations, s8 weights, MinMax
calibration on 8 random images), beside `incept bench --model inception-v3 --batch 32 --precision int8`.

    /tmp/peers-venv/bin/python benches/ort_inception_v3.py
    INT8=1 /tmp/peers-venv/bin/python benches/ort_inception_v3.py
"""
import os
import statistics
import tempfile
import time

import numpy as np
import onnxruntime as ort
import torch
import torchvision

torch.manual_seed(0)
m = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False).eval()
path = os.path.join(tempfile.mkdtemp(), "inception_v3.onnx")
torch.onnx.export(m, torch.rand(1, 3, 299, 299), path, input_names=["x"], output_names=["y"],
                  dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
int8 = os.environ.get("INT8") == "1"
if int8:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": np.random.rand(4, 3, 299, 299).astype(np.float32)} for _ in range(2)])

        def get_next(self):
            return next(self.it, None)

    quantized = path.replace(".onnx", "_int8.onnx")
    quantize_static(path, quantized, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    path = quantized
options = ort.SessionOptions()
options.intra_op_num_threads = int(os.environ.get("THREADS", "2"))
options.inter_op_num_threads = 1
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
for batch in (1, 32):
    x = np.random.rand(batch, 3, 299, 299).astype(np.float32)
    for _ in range(2):
        session.run(None, {"x": x})
    times = []
    for _ in range(5 if batch > 1 else 20):
        t = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - t)
    kind = "int8_" if int8 else ""
    print(f"ort_inception_v3_{kind}infer_b{batch}_s_per_batch: {statistics.median(times):.4f}")
