"""ONNX Runtime's int8 accuracy on the main job's checkpoint, the figure `incept quantize` sets its own
beside: the float32 googlenet-d2l of an incept checkpoint (PyTorch's definition in
../shared/reference/models.py, the checkpoint's state_dict), exported to ONNX and quantized by
`quantize_static` (QDQ, u8 activations, s8 weights per output channel, MinMax or Percentile calibration)
on the same calibration images `incept quantize` uses (the training images at i * 60000 / N, resized to
96x96 as torchvision's Resize + ToTensor do), then all 10,000 test images through PyTorch float32 and ORT
int8: test accuracy of each and their top-1 agreement.

    /tmp/peers-venv/bin/python benches/ort_int8_accuracy.py runs/checkpoint.safetensors [N] [minmax|percentile]
"""
import gzip
import os
import sys
import tempfile

import numpy as np
import onnxruntime as ort
import torch
import torchvision.transforms as T
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from PIL import Image
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "shared", "reference"))
import models  # noqa: E402

DATA = "/usr/share/datasets/fashion-mnist"


def idx(name):
    path = os.path.join(DATA, name)
    opener = gzip.open if os.path.exists(path + ".gz") else open
    with opener(path + ".gz" if os.path.exists(path + ".gz") else path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def prepared(images):
    resize = T.Compose([T.Resize(96), T.ToTensor()])
    return torch.stack([resize(Image.fromarray(im)) for im in images]).numpy()


def main():
    checkpoint = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 512
    method = sys.argv[3] if len(sys.argv) > 3 else "minmax"
    torch.set_num_threads(2)
    net = models.googlenet_d2l().eval()
    state = {k: v for k, v in load_file(checkpoint).items() if not k.startswith("optimizer.")}
    net.load_state_dict(state)
    train = idx("train-images-idx3-ubyte")
    calibration = prepared(train[[i * len(train) // count for i in range(count)]])
    test_images, labels = idx("t10k-images-idx3-ubyte"), idx("t10k-labels-idx1-ubyte").astype(np.int64)
    x = prepared(test_images)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": calibration[i:i + 64]} for i in range(0, count, 64)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        f32, i8 = os.path.join(tmp, "f32.onnx"), os.path.join(tmp, "i8.onnx")
        torch.onnx.export(net, torch.from_numpy(x[:1]), f32, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17, dynamo=False)
        calibrate = CalibrationMethod.Percentile if method == "percentile" else CalibrationMethod.MinMax
        quantize_static(f32, i8, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True, calibrate_method=calibrate)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(i8, options, providers=["CPUExecutionProvider"])
        int8 = np.concatenate([session.run(None, {"x": x[i:i + 500]})[0] for i in range(0, len(x), 500)])
    with torch.no_grad():
        f32_logits = torch.cat([net(torch.from_numpy(x[i:i + 500])) for i in range(0, len(x), 500)]).numpy()
    f32_top, int8_top = f32_logits.argmax(1), int8.argmax(1)
    print(f"PyTorch float32: test acc {(f32_top == labels).mean():.4f}")
    print(f"ORT int8 ({method}, {count} calibration images): test acc {(int8_top == labels).mean():.4f}, "
          f"top-1 agreement with float32 {100 * (f32_top == int8_top).mean():.2f}%")


if __name__ == "__main__":
    main()
