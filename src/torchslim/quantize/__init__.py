"""Quantization: numeric formats, the tensor math behind them, calibration observers, and the
model transforms (``quantize_``, BatchNorm folding, equalization, bias correction, AdaRound, QAT,
sensitivity and mixed precision)."""

from torchslim.quantize.adaround import AdaRoundConfig, adaround_
from torchslim.quantize.apply import LayerDecision, QuantizeResult, quantize_
from torchslim.quantize.awq import AWQConfig, awq_
from torchslim.quantize.bias_correction import (
    correct_bias_,
    correct_bias_guarded_,
    correct_bias_one_pass_,
    depthwise_layers,
)
from torchslim.quantize.config import QuantConfig
from torchslim.quantize.equalize import equalize_
from torchslim.quantize.fold import fold_batchnorm_
from torchslim.quantize.formats import QuantFormat
from torchslim.quantize.gptq import GPTQConfig, gptq_
from torchslim.quantize.mixed_precision import (
    MixedPrecisionPlan,
    greedy_path,
    pareto_front,
    plan_for_budget,
    save_pareto,
)
from torchslim.quantize.modules import (
    ActivationQuantizer,
    QuantConv2d,
    QuantLinear,
    WeightQuantizer,
    quant_modules,
    quantization_disabled,
    to_float,
)
from torchslim.quantize.nonuniform import (
    binary_dequantize,
    binary_quantize,
    kmeans_dequantize,
    kmeans_quantize,
    pow2_dequantize,
    pow2_quantize,
    ternary_dequantize,
    ternary_quantize,
)
from torchslim.quantize.observers import (
    OBSERVERS,
    CalibrationError,
    KLObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    Observer,
    PercentileObserver,
    choose_observer_by_sqnr,
    make_observer,
    observer_sqnr_db,
)
from torchslim.quantize.packing import (
    pack_bits,
    pack_int4,
    packed_size,
    unpack_bits,
    unpack_int4,
)
from torchslim.quantize.primitives import (
    cast_round_trip,
    compute_qparams,
    compute_scale_zero_point,
    dequantize,
    fake_quantize,
    float8_dequantize,
    float8_quantize,
    from_groups,
    quantize,
    reduce_min_max,
    round_trip,
    sqnr_db,
    to_groups,
)
from torchslim.quantize.qat import enable_lsq_, prepare_qat_, train_qat
from torchslim.quantize.sensitivity import LayerSensitivity, SensitivityReport, analyze_sensitivity
from torchslim.quantize.simulate import quantize_dequantize
from torchslim.quantize.smoothquant import SmoothQuantConfig, SmoothQuantResult, smooth_quant_
from torchslim.quantize.storage import load_quantized, quantized_state_dict, save_quantized

__all__ = [
    "OBSERVERS",
    "AWQConfig",
    "ActivationQuantizer",
    "AdaRoundConfig",
    "CalibrationError",
    "GPTQConfig",
    "KLObserver",
    "LayerDecision",
    "LayerSensitivity",
    "MSEObserver",
    "MinMaxObserver",
    "MixedPrecisionPlan",
    "MovingAverageMinMaxObserver",
    "Observer",
    "PercentileObserver",
    "QuantConfig",
    "QuantConv2d",
    "QuantFormat",
    "QuantLinear",
    "QuantizeResult",
    "SensitivityReport",
    "SmoothQuantConfig",
    "SmoothQuantResult",
    "WeightQuantizer",
    "adaround_",
    "analyze_sensitivity",
    "awq_",
    "binary_dequantize",
    "binary_quantize",
    "cast_round_trip",
    "choose_observer_by_sqnr",
    "compute_qparams",
    "compute_scale_zero_point",
    "correct_bias_",
    "correct_bias_guarded_",
    "correct_bias_one_pass_",
    "depthwise_layers",
    "dequantize",
    "enable_lsq_",
    "equalize_",
    "fake_quantize",
    "float8_dequantize",
    "float8_quantize",
    "fold_batchnorm_",
    "from_groups",
    "gptq_",
    "greedy_path",
    "kmeans_dequantize",
    "kmeans_quantize",
    "load_quantized",
    "make_observer",
    "observer_sqnr_db",
    "pack_bits",
    "pack_int4",
    "packed_size",
    "pareto_front",
    "plan_for_budget",
    "pow2_dequantize",
    "pow2_quantize",
    "prepare_qat_",
    "quant_modules",
    "quantization_disabled",
    "quantize",
    "quantize_",
    "quantize_dequantize",
    "quantized_state_dict",
    "reduce_min_max",
    "round_trip",
    "save_pareto",
    "save_quantized",
    "smooth_quant_",
    "sqnr_db",
    "ternary_dequantize",
    "ternary_quantize",
    "to_float",
    "to_groups",
    "train_qat",
    "unpack_bits",
    "unpack_int4",
]
