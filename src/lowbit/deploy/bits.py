"""Bits in int64 words, in plain PyTorch: packing, unpacking, popcount.

Convention (shared with the C++ kernels, ``csrc/xnor.cpp``): a vector of n signs
in {-1, +1} is stored in ceil(n / 64) words; bit b of word w holds entry 64 w + b,
1 for +1 and 0 for -1; the unused high bits of the last word are 0. Words are
``torch.int64`` (torch has no bitwise kernels for uint64); only their bit
patterns matter.

A dot product of two such vectors is n - 2 popcount(a XOR b), the identity
behind XNOR-Net's binary convolutions (Rastegari et al., ECCV 2016).
"""

from __future__ import annotations

import torch

WORD_BITS = 64

_BIT_VALUES = None  # (64,) int64: 1 << b, built on first use


def words_for(n: int) -> int:
    """Words needed for ``n`` bits."""
    return (n + WORD_BITS - 1) // WORD_BITS


def _bit_values(device: torch.device) -> torch.Tensor:
    global _BIT_VALUES
    if _BIT_VALUES is None or _BIT_VALUES.device != device:
        _BIT_VALUES = torch.ones(WORD_BITS, dtype=torch.int64, device=device) << torch.arange(
            WORD_BITS, dtype=torch.int64, device=device
        )
    return _BIT_VALUES


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """(..., n) bool -> (..., ceil(n / 64)) int64: bit b of word w = bits[..., 64 w + b].

    The sum of distinct powers of two is their bitwise OR (and 1 << 63 is the
    one negative term, so nothing overflows).
    """
    n = bits.shape[-1]
    padded = torch.nn.functional.pad(bits.to(torch.int64), (0, words_for(n) * WORD_BITS - n))
    grouped = padded.reshape(*bits.shape[:-1], -1, WORD_BITS)  # (..., words, 64)
    return (grouped * _bit_values(bits.device)).sum(dim=-1)


def unpack_bits(words: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: (..., words) int64 -> (..., n) bool."""
    bits = (words.unsqueeze(-1) & _bit_values(words.device)) != 0  # (..., words, 64)
    return bits.reshape(*words.shape[:-1], -1)[..., :n]


def signs_to_bits(x: torch.Tensor) -> torch.Tensor:
    """x >= 0 elementwise: +1 (and 0, -0) -> True; negative and NaN -> False, as ``hard_sign``."""
    return x >= 0


def popcount(words: torch.Tensor) -> torch.Tensor:
    """Set bits per int64 word (SWAR: Hacker's Delight 5-1), same shape, int64.

    Arithmetic right shifts sign-extend, but every mask below clears the
    extended bits; the final multiply wraps modulo 2^64 and its top byte is the count.
    """
    x = words - ((words >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    return (x * 0x0101010101010101) >> 56


__all__ = ["WORD_BITS", "pack_bits", "popcount", "signs_to_bits", "unpack_bits", "words_for"]
