"""Static int8 quantisation of ONNX models with ONNX Runtime's quantiser (``onnxruntime.quantization``).

``hardware.backend.precision=int8`` measures every op and calibration network of a LUT (and train.py's
``model_int8.onnx``) as ONNX Runtime runs a statically quantised model: the fp32 export is pre-processed
(``quant_pre_process``: shape inference and graph optimisation, e.g. Conv+ReLU fusion, as ONNX Runtime's docs
recommend before quantising) and quantised with ``quantize_static``, QDQ format (QuantizeLinear/DequantizeLinear pairs
around each quantised op; ONNX Runtime's CPU provider fuses them into integer kernels), per-channel int8 weights,
int8 activations, MinMax calibration. Only the calibration data reader is written here.

Signed activations (S8S8): ONNX Runtime's quantisation guide ("Quantize ONNX models", data type selection) names
S8S8 in QDQ format its default and first choice on CPUs, balancing speed and accuracy; U8S8 can saturate on x86-64
CPUs without VNNI (the AVX2/AVX512 kernels), and S8S8 is slow only in the other (QOperator) format, not used here.

Calibration inputs: an op measured on its own has no images, so ops and the LUT's calibration networks are
calibrated on a seeded synthetic set (standard normal inputs of the op's input shape); train.py's whole network is
calibrated on images of the data module. The scales only change the values the integer kernels compute, not which
kernels run, so the synthetic set is enough for latency; accuracy needs the images.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

#: synthetic calibration inputs per op / calibration network (seeded)
SYNTHETIC_CALIBRATION_INPUTS = 8
#: the quantisation recipe; part of an int8 backend's fingerprint, so a change of recipe re-profiles int8 LUTs
INT8_RECIPE: dict[str, Any] = {"tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                               "per_channel": True, "weights": "QInt8", "activations": "QInt8",
                               "calibration": "MinMax", "preprocess": True,
                               "synthetic_inputs": SYNTHETIC_CALIBRATION_INPUTS}


class ArrayCalibrationReader(CalibrationDataReader):
    """Feeds ``batches`` (float32 arrays of the model's input shape) to the calibrator, one per call."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]) -> None:
        self._feeds = iter([{input_name: np.ascontiguousarray(b, dtype=np.float32)} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def synthetic_batches(shape: Sequence[int], count: int = SYNTHETIC_CALIBRATION_INPUTS,
                      seed: int = 0) -> list[np.ndarray]:
    """``count`` seeded standard normal float32 arrays of ``shape``."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(tuple(shape)).astype(np.float32) for _ in range(count)]


def quantize_synthetic(model: bytes, shape: Sequence[int]) -> bytes:
    """The int8 model of the fp32 ONNX ``model`` of an op or calibration network, calibrated on the seeded
    synthetic set of its input ``shape`` (:func:`synthetic_batches`): what ``hardware.backend.precision=int8``
    measures, and what ``export-ops`` ships to the device at int8."""
    return quantize_int8(model, synthetic_batches(shape))


def quantize_int8(model: bytes, batches: Iterable[np.ndarray], input_name: str = "input") -> bytes:
    """The int8 (QDQ, per-channel, S8S8, MinMax) model of the fp32 ONNX ``model``, calibrated on ``batches``.

    Runs in a temporary folder (the quantiser works on files) that is removed afterwards.
    """
    quiet = logging.root.manager.disable  # the quantiser logs every bias it copies at INFO on the root logger
    logging.disable(logging.INFO)
    try:
        return _quantize(model, batches, input_name)
    finally:
        logging.disable(quiet)


def _quantize(model: bytes, batches: Iterable[np.ndarray], input_name: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="spnas-int8-") as folder:
        source, prepared, target = (os.path.join(folder, name) for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        with open(source, "wb") as handle:
            handle.write(model)
        # the exports have static shapes: ONNX's shape inference is enough, the symbolic one is not needed
        quant_pre_process(source, prepared, skip_symbolic_shape=True)
        quantize_static(prepared, target, ArrayCalibrationReader(input_name, batches),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        with open(target, "rb") as handle:
            return handle.read()
