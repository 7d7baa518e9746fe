"""Quantisation: NF4 with double quantisation (QLoRA's 4-bit base), LLM.int8(), round-to-nearest, GPTQ and AWQ
post-training quantisation, their checkpoints in the Hugging Face convention, and the GGUF writer."""

from alignlab.quant.checkpoint import is_quantized, load_quantized, save_quantized
from alignlab.quant.int8 import Int8Linear
from alignlab.quant.intq import QuantLinear
from alignlab.quant.linear4bit import Linear4bit, quant_stats, quantize_model
from alignlab.quant.nf4 import DYNAMIC, NF4, NF4Tensor, dequantize_nf4, dynamic_map, nf4_codebook, quantize_nf4
from alignlab.quant.post_training import METHODS, QuantConfig, quantize_post_training

__all__ = ["DYNAMIC", "METHODS", "NF4", "Int8Linear", "Linear4bit", "NF4Tensor", "QuantConfig", "QuantLinear",
           "dequantize_nf4", "dynamic_map", "is_quantized", "load_quantized", "nf4_codebook", "quant_stats",
           "quantize_model", "quantize_nf4", "quantize_post_training", "save_quantized"]
