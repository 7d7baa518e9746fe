"""LoRA and DoRA around one linear layer.

LoRA (Hu et al. 2021, arXiv:2106.09685) freezes the weight W [out, in] and learns a low-rank update:

    y = W x + b + s · B A dropout(x),        A: [r, in],  B: [out, r],  s = α / r

so a layer trains r (in + out) numbers instead of in · out. rsLoRA (Kalajdzievski 2023, arXiv:2312.03732)
uses s = α / √r, which keeps the update's size stable as r grows.

DoRA (Liu et al. 2024, arXiv:2402.09353) splits the weight into a magnitude m [out] and a direction, and
adapts the direction with LoRA:

    W' = m ⊙ (W + s B A) / ‖W + s B A‖          (one norm per output row, taken over the input dimension)
    y  = b + (m / ‖W + s B A‖) ⊙ (W x + s B A x)

m starts at ‖W + s B A‖, so W' = W at init. The norm is detached from the graph (paper §4.3), as PEFT does.

The initialisations follow PEFT: A kaiming-uniform (a = √5) and B = 0, so the adapter starts as a no-op;
"gaussian" draws A ~ N(0, 1/r²) (std 1/r); "pissa" (Meng et al. 2024, arXiv:2404.02948) starts from the
principal part of W. With W = U S Vᵀ and S_r its top r singular values divided by s:

    A = √S_r V_rᵀ,   B = U_r √S_r,   W ← W - s B A      (the base keeps the residual; W x is unchanged)
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

INITS = (True, False, "gaussian", "pissa")


class LoraLinear(nn.Module):
    """A linear layer plus a trainable low-rank update (LoRA, or DoRA with use_dora).

    base_layer: any module with `in_features`, `out_features` and a forward; usually nn.Linear. merge,
        unmerge and PiSSA need `base_layer.weight` as a float nn.Parameter; a quantized base works for the
        forward (DoRA takes its weight from `base_layer.dequantize()`).
    Parameter names match PEFT's (lora_A.weight, lora_B.weight, lora_magnitude_vector), without its
    adapter-name level, so that saved keys are PEFT's keys.
    """

    def __init__(self, base_layer: nn.Module, r: int = 8, lora_alpha: float = 8, lora_dropout: float = 0.0,
                 use_rslora: bool = False, use_dora: bool = False, init_lora_weights: bool | str = True):
        super().__init__()
        if not isinstance(r, int) or r <= 0:
            raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}")
        if init_lora_weights not in INITS:
            raise ValueError(f"init_lora_weights must be one of {INITS}, got {init_lora_weights!r}")
        self.base_layer = base_layer
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.r, self.lora_alpha, self.use_dora = r, lora_alpha, use_dora
        self.scaling = lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r
        self.lora_dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()

        w = self.float_weight()
        ref = w if w is not None else next(base_layer.parameters(), next(base_layer.buffers(), torch.empty(0)))
        dtype = w.dtype if w is not None else torch.float32
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=ref.device, dtype=dtype)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=ref.device, dtype=dtype)
        self.reset_lora_parameters(init_lora_weights)
        self.lora_magnitude_vector = None
        if use_dora:  # m = ‖W + s B A‖ row by row, so that W' = W at init
            self.lora_magnitude_vector = nn.Parameter(self.weight_norm(self.dense_weight()))
        self.merged = False  # the update is folded into base_layer.weight
        self.disabled = False  # forward is the base alone (see inject.disable_lora)

    # --- weights -----------------------------------------------------------------------------------

    def float_weight(self) -> nn.Parameter | None:
        """The base's weight if it is a float nn.Parameter (what merging needs), else None."""
        w = getattr(self.base_layer, "weight", None)
        return w if isinstance(w, nn.Parameter) and w.is_floating_point() else None

    def dense_weight(self) -> torch.Tensor:
        """The base's weight as a dense [out, in] tensor: the parameter, or dequantize() of a quantized base."""
        w = self.float_weight()
        if w is not None:
            return w
        if hasattr(self.base_layer, "dequantize"):
            return self.base_layer.dequantize()
        raise ValueError(f"{type(self.base_layer).__name__} has neither a float weight nor dequantize(); "
                         "DoRA needs the base weight")

    def delta_weight(self) -> torch.Tensor:
        """s B A, the update as an [out, in] matrix."""
        return self.scaling * (self.lora_B.weight @ self.lora_A.weight)

    @torch.no_grad()
    def weight_norm(self, weight: torch.Tensor) -> torch.Tensor:
        """‖W + s B A‖ per output row (norm over the input dimension), detached: DoRA §4.3."""
        return torch.linalg.vector_norm(weight.to(self.lora_A.weight.dtype) + self.delta_weight(), dim=1)

    @torch.no_grad()
    def reset_lora_parameters(self, init: bool | str):
        if init is False:  # keep nn.Linear's random init for both (an adapter that is not a no-op; tests)
            return
        if init == "pissa":
            return self.pissa_init()
        if init is True:
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        else:  # "gaussian"
            nn.init.normal_(self.lora_A.weight, std=1 / self.r)
        nn.init.zeros_(self.lora_B.weight)

    @torch.no_grad()
    def pissa_init(self):
        """A, B from the top-r SVD of W; the base keeps the residual W - s B A (PiSSA, arXiv:2404.02948)."""
        w = self.float_weight()
        if w is None:
            raise ValueError(f"PiSSA init needs a float base weight; {type(self.base_layer).__name__} has none "
                             "(initialise PiSSA before quantizing, then quantize the residual)")
        U, S, Vh = torch.linalg.svd(w.float(), full_matrices=False)
        sqrt_s = (S[: self.r] / self.scaling).sqrt()
        A = sqrt_s[:, None] * Vh[: self.r]  # √S_r V_rᵀ   [r, in]
        B = U[:, : self.r] * sqrt_s[None, :]  # U_r √S_r    [out, r]
        self.lora_A.weight.copy_(A)
        self.lora_B.weight.copy_(B)
        w.copy_((w.float() - self.scaling * B @ A).to(w.dtype))

    # --- forward -----------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base_layer(x)
        if self.merged or self.disabled:
            return result
        dtype = self.lora_A.weight.dtype
        dx = self.lora_dropout(x)
        if not torch.is_autocast_enabled(x.device.type):  # under autocast the adapter's matmuls take bf16 x as is
            dx = dx.to(dtype)
        lora = self.lora_B(self.lora_A(dx)) * self.scaling  # s B A dropout(x)
        if not self.use_dora:
            return result + lora.to(result.dtype)
        # DoRA: y = b + (m / ‖W + s B A‖) (W x + s B A x), written as a correction to base(x) = W x + b
        w = self.dense_weight().to(dtype)
        g = (self.lora_magnitude_vector / self.weight_norm(w)).view(1, -1)
        if isinstance(self.lora_dropout, nn.Identity) or not self.training:
            bias = getattr(self.base_layer, "bias", None)
            wx = result.to(dtype) if bias is None else result.to(dtype) - bias.to(dtype)
        else:  # PEFT: with active dropout the directional part sees the dropped-out x too
            wx = F.linear(dx, w)
        return result + ((g - 1) * wx + g * lora).to(result.dtype)

    # --- merge -------------------------------------------------------------------------------------

    def _merge_weight(self) -> nn.Parameter:
        w = self.float_weight()
        if w is None:
            raise ValueError(f"cannot merge LoRA into a {type(self.base_layer).__name__}: it has no float weight "
                             "parameter (e.g. a quantized layer); dequantize the base model first")
        return w

    @torch.no_grad()
    def merge(self):
        """W ← W + s B A (LoRA) or W ← m ⊙ (W + s B A) / ‖W + s B A‖ (DoRA). Forward then runs the base alone."""
        if self.merged:
            return
        w = self._merge_weight()
        delta = self.delta_weight()
        if self.use_dora:
            self._dora_norm = self.weight_norm(w)  # kept: the merged weight no longer tells us ‖W + s B A‖
            g = (self.lora_magnitude_vector / self._dora_norm).view(-1, 1)
            w.copy_((g * (w.to(delta.dtype) + delta)).to(w.dtype))
        else:
            w.add_(delta.to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self):
        """Undo merge: W ← W - s B A, or for DoRA W ← W' ‖W + s B A‖ / m - s B A."""
        if not self.merged:
            return
        w = self._merge_weight()
        delta = self.delta_weight()
        if self.use_dora:
            g = (self.lora_magnitude_vector / self._dora_norm).view(-1, 1)
            w.copy_((w.to(delta.dtype) / g - delta).to(w.dtype))
            del self._dora_norm
        else:
            w.sub_(delta.to(w.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, lora_alpha={self.lora_alpha}, scaling={self.scaling:.4g}, dora={self.use_dora}"
