"""Quantisation: NF4 with double quantisation (QLoRA) and the 4-bit Linear that QLoRA trains LoRA on."""

from alignlab.quant.linear4bit import Linear4bit, quant_stats, quantize_model
from alignlab.quant.nf4 import DYNAMIC, NF4, NF4Tensor, dequantize_nf4, dynamic_map, nf4_codebook, quantize_nf4

__all__ = ["DYNAMIC", "NF4", "Linear4bit", "NF4Tensor", "dequantize_nf4", "dynamic_map", "nf4_codebook",
           "quant_stats", "quantize_model", "quantize_nf4"]
