"""4-bit NormalFloat (NF4) block-wise quantisation with double quantisation, from QLoRA.

Dettmers, Pagnoni, Holtzman, Zettlemoyer 2023, "QLoRA: Efficient Finetuning of Quantized LLMs"
(arXiv:2305.14314), sections 3 and 4. Pretrained weights are roughly N(0, sigma^2), so a 4-bit code whose 16
levels are quantiles of N(0, 1) spends its levels where the weights are. In formulas:

    block b of 64 weights:   c_b = max_i |w_i|                      (absmax, one fp32 per block)
    code of w_i:             k_i = argmin_k |w_i / c_b - NF4[k]|     (the nearest of the 16 levels, 4 bits)
    dequantised:             w_i ~= NF4[k_i] * c_b

That costs 4 bits per weight plus 32 / 64 = 0.5 bit per weight for the constants. Double quantisation
quantises the constants themselves: subtract their mean m (they are all positive, the 8-bit code is
symmetric), cut them into blocks of 256 and store each as an 8-bit code with one fp32 scale s per block:

    c_b ~= DYN[q_b] * s_{b // 256} + m          8/64 + 32/(64*256) = 0.127 bit per weight instead of 0.5

Layout of an `NF4Tensor` (the same as bitsandbytes, so the numbers mean the same thing):
    - the weight is flattened in row-major order and padded with zeros to a multiple of `block`;
    - element 2j goes in the HIGH nibble of byte j and element 2j+1 in the LOW nibble:
      byte j = (k_{2j} << 4) | k_{2j+1};
    - block b covers elements [b * block, (b + 1) * block), so a row of a matrix may span blocks;
    - with double quantisation, absmax block b uses scale index b // dq_block.

The 8-bit code for the constants (`dynamic_map`): bitsandbytes' dynamic tree quantisation (Dettmers 2015,
"8-Bit Approximations for Parallelism in Deep Learning", arXiv:1511.04561), which is what
`bnb.functional.quantize_4bit(compress_statistics=True)` stores. The paper's text says "8-bit floats"; we
take the dynamic map instead because (1) it is what the reference implementation stores, so our quant state
means exactly what theirs does, and (2) it is more precise where the values are: after dividing by the block
absmax, the centred constants lie in [-1, 1] with most of them well above 0.1 in magnitude, where the dynamic
map has 64 linear steps per sign (relative step <= 1.4%) while an E4M3 float has 8 (relative step 12.5%).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# --- the two codebooks ------------------------------------------------------------------------------------

NF4_OFFSET = 0.9677083  # = (1 - 1/(2*15) + 1 - 1/(2*16)) / 2, rounded as bitsandbytes writes it


def nf4_codebook() -> torch.Tensor:
    """The 16 NF4 levels, sorted, in [-1, 1], with an exact 0 (QLoRA section 3, "4-bit NormalFloat").

    The paper estimates the levels of a k-bit quantile code of N(0, 1) as q_i = (Q(i / (2^k + 1)) +
    Q((i + 1) / (2^k + 1))) / 2 with Q = Phi^-1 the normal quantile function. A symmetric code of 2^k levels
    has no exact zero, and zero must be exact (padding, zero weights). NF4 is therefore asymmetric: 8 levels
    for the positive half, 7 for the negative half and an exact 0, each half from normal quantiles:

        positive: Phi^-1(p) for p = 9 evenly spaced points from delta down to 0.5, without 0.5   (8 levels)
        negative: -Phi^-1(p) for p = 8 evenly spaced points from delta down to 0.5, without 0.5  (7 levels)
        NF4 = sort(positive + negative + [0]) / Phi^-1(delta)

    Phi^-1(1) is infinite, so the outermost level uses delta = NF4_OFFSET, halfway between the tail
    probabilities 1 - 1/(2*15) and 1 - 1/(2*16) of a 15- and a 16-level code. This is bitsandbytes'
    `create_normal_map(offset=0.9677083, use_extra_value=True)`; following its arithmetic (probabilities in
    fp32, quantiles in fp64, normalisation in fp32) reproduces the published table bit for bit.
    """
    pos = torch.special.ndtri(torch.linspace(NF4_OFFSET, 0.5, 9)[:-1].double())
    neg = -torch.special.ndtri(torch.linspace(NF4_OFFSET, 0.5, 8)[:-1].double())
    levels = torch.cat([pos, neg, torch.zeros(1, dtype=torch.float64)]).float().sort().values
    return levels / levels.max()


def dynamic_map() -> torch.Tensor:
    """The 256 values of the signed 8-bit dynamic tree code, sorted, in [-1, 1] (arXiv:1511.04561).

    A byte reads: sign bit, then e zero bits (the exponent: magnitude 10^-e), then a 1 (the indicator),
    then the remaining 6 - e bits as a linear fraction in [0.1, 1]. So the decade [10^-e * 0.1, 10^-e] holds
    2^(6-e) levels (the midpoints of 2^(6-e) equal bins), e = 0..6: 64 + 32 + ... + 1 = 127 per sign. The two
    leftover patterns are 0 and +1 (which takes the place of -0). Built as bitsandbytes'
    `create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)` builds it.
    """
    values = [0.0, 1.0]
    for e in range(7):
        bins = torch.linspace(0.1, 1.0, 2 ** (6 - e) + 1)
        mids = (bins[:-1] + bins[1:]) / 2 * 10.0 ** -e
        values += mids.tolist() + (-mids).tolist()
    return torch.tensor(sorted(values))


NF4 = nf4_codebook()  # fp32 [16]
DYNAMIC = dynamic_map()  # fp32 [256]
# byte -> the two fp32 values it decodes to (high nibble first), each pair seen as one 8-byte int64 so that
# a single 1-D gather dequantises two weights (4x faster on CPU than indexing the [256, 2] table)
_NF4_PAIRS = torch.stack([NF4.repeat_interleave(16), NF4.repeat(16)], dim=1).view(torch.int64).view(-1)  # [256]


def nearest_code(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook entry for each value of x (codebook sorted ascending); a tie takes the
    lower entry. Binary search against the midpoints between neighbours, so no [numel, 16] distance matrix."""
    mids = (codebook[:-1] + codebook[1:]) / 2
    return torch.bucketize(x, mids.to(x.device))


# --- the quantised tensor ---------------------------------------------------------------------------------

@dataclass
class NF4Tensor:
    """A weight in NF4: the packed codes and the quant state needed to decode them.

    data: uint8 [padded / 2], two codes per byte, element 2j in the high nibble (module docstring).
    absmax: the per-block scales: fp32 [n_blocks], or uint8 [n_blocks] codes into DYNAMIC with double quant.
    absmax_scale, absmax_offset: double quant only: fp32 [ceil(n_blocks / dq_block)] and fp32 [] (the mean).
    """

    data: torch.Tensor
    absmax: torch.Tensor
    shape: torch.Size
    block: int = 64
    absmax_scale: torch.Tensor | None = None
    absmax_offset: torch.Tensor | None = None
    dq_block: int = 256

    @property
    def double_quant(self) -> bool:
        return self.absmax_scale is not None

    def numel(self) -> int:
        return self.shape.numel()

    def nbytes(self) -> int:
        """Bytes stored: packed codes + absmax (+ its scales and offset). The codebooks are shared constants."""
        tensors = [self.data, self.absmax, self.absmax_scale, self.absmax_offset]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def bytes_per_param(self) -> float:
        return self.nbytes() / self.numel()

    def block_absmax(self) -> torch.Tensor:
        """The fp32 absmax of every block (decoded from 8 bits with double quant): [n_blocks]."""
        if not self.double_quant:
            return self.absmax
        n = self.absmax.numel()
        scale = self.absmax_scale.repeat_interleave(self.dq_block)[:n]
        return DYNAMIC.to(scale.device)[self.absmax.long()] * scale + self.absmax_offset

    def codes(self) -> torch.Tensor:
        """The unpacked 4-bit codes, uint8 [padded] (padding included)."""
        return torch.stack([self.data >> 4, self.data & 0xF], dim=1).view(-1)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """w ~= NF4[k] * absmax[block] in the original shape: computed in fp32, rounded once to `dtype` (as
        bitsandbytes' dequantize_4bit does for bf16)."""
        pairs = _NF4_PAIRS.to(self.data.device).index_select(0, self.data.int())
        w = pairs.view(torch.float32).view(-1, self.block)
        if dtype == torch.float32:
            w *= self.block_absmax()[:, None]
        else:  # the product in fp32, written straight into the narrower tensor
            w = torch.mul(w, self.block_absmax()[:, None], out=torch.empty(w.shape, dtype=dtype, device=w.device))
        return w.view(-1)[: self.numel()].view(self.shape)


def _blockwise_absmax_codes(x: torch.Tensor, block: int, codebook: torch.Tensor):
    """Pad x (1-D) with zeros to whole blocks; per block, absmax and the nearest codes of x / absmax."""
    pad = (-x.numel()) % block
    blocks = torch.nn.functional.pad(x, (0, pad)).view(-1, block)
    absmax = blocks.abs().amax(dim=1)
    scaled = blocks / torch.where(absmax > 0, absmax, 1.0)[:, None]  # an all-zero block stays 0
    return absmax, nearest_code(scaled.view(-1), codebook).to(torch.uint8)


def quantize_nf4(w: torch.Tensor, block: int = 64, double_quant: bool = True, dq_block: int = 256) -> NF4Tensor:
    """Quantise a float tensor to NF4 in blocks of `block` elements (QLoRA: 64), with double quantisation
    of the block absmax in blocks of `dq_block` constants (QLoRA: 256). Sizes that are not a multiple of the
    block are padded with zeros (which NF4 stores exactly); the shape is remembered for `dequantize_nf4`."""
    if not w.is_floating_point():
        raise TypeError(f"quantize_nf4 needs a float tensor, got {w.dtype}")
    if block <= 0 or block % 2:
        raise ValueError(f"block must be a positive even number (two codes per byte), got {block}")
    if dq_block <= 0:
        raise ValueError(f"dq_block must be positive, got {dq_block}")
    flat = w.detach().float().reshape(-1)
    if flat.numel() == 0:
        raise ValueError("cannot quantise an empty tensor")
    if not bool(torch.isfinite(flat).all()):
        raise ValueError("cannot quantise a tensor with inf or nan")

    absmax, codes = _blockwise_absmax_codes(flat, block, NF4)
    data = (codes[0::2] << 4) | codes[1::2]  # element 2j -> high nibble, 2j + 1 -> low nibble
    if not double_quant:
        return NF4Tensor(data, absmax, w.shape, block)

    offset = absmax.mean()  # absmax > 0, so centre it before the symmetric 8-bit code
    scale, qabsmax = _blockwise_absmax_codes(absmax - offset, dq_block, DYNAMIC)
    return NF4Tensor(data, qabsmax[: absmax.numel()], w.shape, block, scale, offset, dq_block)


def dequantize_nf4(q: NF4Tensor) -> torch.Tensor:
    """The fp32 tensor an NF4Tensor stands for, in its original shape."""
    return q.dequantize()
