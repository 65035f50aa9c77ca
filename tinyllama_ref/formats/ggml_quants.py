r"""ggml's block quantization, decoded with NumPy: how a GGUF file stores 4.5 bits per weight.

A quantized tensor is a run of **blocks**; each block holds a fixed number of weights (32 for the
"legacy" types, 256 for the k-quants) in a fixed number of bytes. Inside a block every weight keeps a
small integer $q$ and the block keeps one or two float16 numbers that turn the integers back into
floats:

* **scale only** (Q4_0, Q5_0, Q8_0): $w = d \cdot (q - \text{offset})$, symmetric around zero;
* **scale and minimum** (Q4_1, Q5_1): $w = d \cdot q + m$, for weights that are not centred.

The **k-quants** (Q2_K .. Q6_K) put 256 weights in a *super-block* made of 8 or 16 sub-blocks. Each
sub-block has its own small integer scale (and minimum), and the super-block has one float16 $d$
(and $d_\text{min}$) that scales those integers: $w = (d \cdot s_j) \, q - (d_\text{min} \cdot m_j)$.
So the per-sub-block scales cost 4 to 8 bits instead of 16.

Bits are packed tightly: two 4-bit values share a byte (low nibble first), a 5th or 6th bit lives in
a separate array of high bits. Each decoder below says its block layout in bytes, then unpacks it
for all blocks at once: `blocks` is a `[n_blocks, bytes_per_block]` uint8 array, the result
`[n_blocks, weights_per_block]` float32. The arithmetic is done in float32 in the order ggml's C
decoders (`dequantize_row_*` in ggml-quants.c) do it, so the results are bit-for-bit theirs
(checked against the `gguf` package in tests/test_ggml_quants.py).

    >>> block = np.array([0, 60, 0, 0] + [0x10] * 16, dtype=np.uint8)  # Q4_1: d=1.0, m=0.0, nibbles 0 and 1
    >>> dequantize(block, "Q4_1")[[0, 16]]                            # weight 0 is a low nibble, 16 a high one
    array([0., 1.], dtype=float32)
"""
from __future__ import annotations

import numpy as np

QK = 32    # weights per block, legacy types
QK_K = 256  # weights per super-block, k-quants


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """Bytes start..start+2 of each block as a float16 number, widened to float32: [n_blocks, 1]."""
    return blocks[:, start:start + 2].copy().view("<f2").astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[n, k] bytes -> [n, 2k] 4-bit values: all the low nibbles first, then all the high nibbles.

    That is ggml's order within 32 weights: byte i holds weight i (low) and weight i + 16 (high).
    >>> _nibbles(np.array([[0x21, 0x43]], dtype=np.uint8))
    array([[1, 3, 2, 4]], dtype=uint8)
    """
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _bits(packed: np.ndarray, n_bits: int) -> np.ndarray:
    """[n, k] bytes -> [n, 8/n_bits, k]: field i of every byte ((byte >> i*n_bits) & mask) in row i.

    >>> _bits(np.array([[0b11100100]], dtype=np.uint8), 2)[0, :, 0]   # four 2-bit fields, lowest first
    array([0, 1, 2, 3], dtype=uint8)
    """
    shifts = np.arange(0, 8, n_bits, dtype=np.uint8).reshape(1, -1, 1)
    return (packed[:, None, :] >> shifts) & np.uint8((1 << n_bits) - 1)


# -- legacy types: 32 weights per block --------------------------------------------------------------

def dequantize_q8_0(blocks: np.ndarray) -> np.ndarray:
    """Q8_0, 34 bytes: d (f16) | 32 x int8 q.   w = d * q"""
    d = _f16(blocks, 0)
    q = blocks[:, 2:34].view(np.int8).astype(np.float32)
    return q * d


def dequantize_q4_0(blocks: np.ndarray) -> np.ndarray:
    """Q4_0, 18 bytes: d (f16) | 16 bytes of nibbles.   w = d * (q - 8), q in 0..15"""
    d = _f16(blocks, 0)
    q = _nibbles(blocks[:, 2:18]).astype(np.int8) - np.int8(8)
    return d * q.astype(np.float32)


def dequantize_q4_1(blocks: np.ndarray) -> np.ndarray:
    """Q4_1, 20 bytes: d (f16) | m (f16) | 16 bytes of nibbles.   w = d * q + m, q in 0..15"""
    d, m = _f16(blocks, 0), _f16(blocks, 2)
    q = _nibbles(blocks[:, 4:20]).astype(np.float32)
    return d * q + m


def _fifth_bits(qh: np.ndarray) -> np.ndarray:
    """4 bytes of high bits -> [n, 32] bits: bit j of the little-endian uint32 is weight j's 5th bit."""
    return np.unpackbits(qh, axis=-1, bitorder="little")


def dequantize_q5_0(blocks: np.ndarray) -> np.ndarray:
    """Q5_0, 22 bytes: d (f16) | qh (32 fifth bits) | 16 bytes of nibbles.   w = d * (q - 16), q in 0..31"""
    d = _f16(blocks, 0)
    q = _nibbles(blocks[:, 6:22]) | (_fifth_bits(blocks[:, 2:6]) << 4)
    return d * (q.astype(np.int8) - np.int8(16)).astype(np.float32)


def dequantize_q5_1(blocks: np.ndarray) -> np.ndarray:
    """Q5_1, 24 bytes: d (f16) | m (f16) | qh (32 fifth bits) | 16 bytes of nibbles.   w = d * q + m"""
    d, m = _f16(blocks, 0), _f16(blocks, 2)
    q = _nibbles(blocks[:, 8:24]) | (_fifth_bits(blocks[:, 4:8]) << 4)
    return d * q.astype(np.float32) + m


# llama.cpp's non-linear 4-bit grid: IQ4 types store an index into it instead of q itself.
IQ4_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)


def dequantize_iq4_nl(blocks: np.ndarray) -> np.ndarray:
    """IQ4_NL, 18 bytes: d (f16) | 16 bytes of nibbles, each an index into IQ4_VALUES.   w = d * IQ4_VALUES[q]"""
    d = _f16(blocks, 0)
    return d * IQ4_VALUES[_nibbles(blocks[:, 2:18])].astype(np.float32)


# -- k-quants: 256 weights per super-block -------------------------------------------------------------

def _scale_min_k4(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 12 bytes -> 8 six-bit scales and 8 six-bit mins, [n, 8] each (ggml's get_scale_min_k4).

    Bytes 0-3 hold scales 0-3 (low 6 bits), bytes 4-7 mins 0-3; scales/mins 4-7 take their low 4 bits
    from the nibbles of bytes 8-11 and their top 2 bits from the spare top bits of bytes 0-3 / 4-7:
        byte 0..3   ssssss = scale j      (top 2 bits: scale j+4's high bits)
        byte 4..7   mmmmmm = min j        (top 2 bits: min j+4's high bits)
        byte 8..11  MMMMSSSS = min j+4, scale j+4 (low 4 bits each)
    """
    s, m, lo = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = np.concatenate([s & 0x3F, (lo & 0x0F) | ((s >> 6) << 4)], axis=-1)
    mn = np.concatenate([m & 0x3F, (lo >> 4) | ((m >> 6) << 4)], axis=-1)
    return sc, mn


def dequantize_q2_k(blocks: np.ndarray) -> np.ndarray:
    """Q2_K, 84 bytes: 16 scale bytes (4-bit scale | 4-bit min << 4) | qs (64 bytes, 2 bits each) | d | dmin.

    Sixteen sub-blocks of 16 weights. The 2-bit values run in two halves of 128 weights: half h
    reads bytes qs[32h:32h+32], shift 0 giving weights 0..31, shift 2 weights 32..63, and so on.
        w = (d * scale_j) * q - (dmin * min_j)
    """
    n = len(blocks)
    sc, qs, d, dmin = blocks[:, 0:16], blocks[:, 16:80], _f16(blocks, 80), _f16(blocks, 82)
    dl = (d * (sc & 0x0F).astype(np.float32))[:, :, None]   # [n, 16, 1]
    ml = (dmin * (sc >> 4).astype(np.float32))[:, :, None]
    q = _bits(qs.reshape(n * 2, 32), 2)                       # [2n halves, 4 shifts, 32]
    q = q.reshape(n, 16, 16).astype(np.float32)               # sub-block j = 16 consecutive weights
    return (dl * q - ml).reshape(n, QK_K)


def dequantize_q3_k(blocks: np.ndarray) -> np.ndarray:
    """Q3_K, 110 bytes: hmask (32 bytes, the 3rd bits) | qs (64 bytes, 2 bits each) | 12 scale bytes | d.

    Sixteen sub-blocks of 16 weights, signed 6-bit scales (stored + 32). The low 2 bits run as in
    Q2_K; weight i's 3rd bit is bit i // 32 of hmask[i % 32]; when it is *clear*, 4 is subtracted:
        w = (d * (scale_j - 32)) * (q_low - (0 if high bit else 4))
    The scales: low 4 bits are the nibbles of bytes 0-7 (scales 0-7 low nibbles, 8-15 high
    nibbles), high 2 bits the 2-bit fields of bytes 8-11 (scale j: field j // 4 of byte 8 + j % 4).
    """
    n = len(blocks)
    hmask, qs, scales, d = blocks[:, 0:32], blocks[:, 32:96], blocks[:, 96:108], _f16(blocks, 108)
    low = _nibbles(scales[:, 0:8])                            # [n, 16]
    high = _bits(scales[:, 8:12], 2).reshape(n, 16)           # field k of byte i -> scale 4k + i
    sc = (low | (high << 4)).astype(np.int8) - np.int8(32)
    dl = (d * sc.astype(np.float32))[:, :, None]              # [n, 16, 1]
    q_low = _bits(qs.reshape(n * 2, 32), 2).reshape(n, 16, 16)
    q_high = _bits(hmask, 1).reshape(n, 16, 16)               # bit b of hmask[l] -> weight 32b + l
    q = q_low.astype(np.int8) - ((q_high ^ 1) << 2).astype(np.int8)
    return (dl * q.astype(np.float32)).reshape(n, QK_K)


def dequantize_q4_k(blocks: np.ndarray) -> np.ndarray:
    """Q4_K, 144 bytes: d | dmin | 12 bytes of 6-bit scales and mins | qs (128 bytes of nibbles).

    Eight sub-blocks of 32 weights. qs comes in 4 chunks of 32 bytes: chunk c's low nibbles are
    sub-block 2c, its high nibbles sub-block 2c + 1.
        w = (d * scale_j) * q - (dmin * min_j)
    """
    n = len(blocks)
    d, dmin = _f16(blocks, 0), _f16(blocks, 2)
    sc, mn = _scale_min_k4(blocks[:, 4:16])
    dl = (d * sc.astype(np.float32))[:, :, None]              # [n, 8, 1]
    ml = (dmin * mn.astype(np.float32))[:, :, None]
    q = _nibbles(blocks[:, 16:144].reshape(n * 4, 32)).reshape(n, 8, 32).astype(np.float32)
    return (dl * q - ml).reshape(n, QK_K)


def dequantize_q5_k(blocks: np.ndarray) -> np.ndarray:
    """Q5_K, 176 bytes: d | dmin | 12 scale bytes | qh (32 bytes, 5th bits) | qs (128 bytes of nibbles).

    As Q4_K, plus a 5th bit: sub-block j's weight l has it in bit j of qh[l].
        w = (d * scale_j) * q - (dmin * min_j), q in 0..31
    """
    n = len(blocks)
    d, dmin = _f16(blocks, 0), _f16(blocks, 2)
    sc, mn = _scale_min_k4(blocks[:, 4:16])
    dl = (d * sc.astype(np.float32))[:, :, None]
    ml = (dmin * mn.astype(np.float32))[:, :, None]
    low = _nibbles(blocks[:, 48:176].reshape(n * 4, 32)).reshape(n, 8, 32)
    high = _bits(blocks[:, 16:48], 1)                         # [n, 8, 32]: bit j of qh[l]
    q = (low | (high << 4)).astype(np.float32)
    return (dl * q - ml).reshape(n, QK_K)


def dequantize_q6_k(blocks: np.ndarray) -> np.ndarray:
    """Q6_K, 210 bytes: ql (128 bytes, low 4 bits) | qh (64 bytes, high 2 bits) | 16 int8 scales | d.

    Sixteen sub-blocks of 16 weights, signed 6-bit values (stored + 32). Two halves of 128 weights;
    in half h, weight 32k + l takes its low 4 bits from ql[64h + l] (k = 0, 2: low nibble) or
    ql[64h + 32 + l] (k = 1, 3), high nibble for k >= 2, and its high 2 bits from field k of qh[32h + l].
        w = (d * scale_j) * (q - 32)
    """
    n = len(blocks)
    ql, qh = blocks[:, 0:128].reshape(n * 2, 64), blocks[:, 128:192].reshape(n * 2, 32)
    sc, d = blocks[:, 192:208].view(np.int8).astype(np.float32), _f16(blocks, 208)
    dl = (d * sc)[:, :, None]                                 # [n, 16, 1]
    low = _nibbles(ql).reshape(n * 2, 4, 32)                  # ql[0:32]&F, ql[32:64]&F, ql[0:32]>>4, ql[32:64]>>4
    high = _bits(qh, 2)                                       # [2n, 4, 32]
    q = (low | (high << 4)).astype(np.int8) - np.int8(32)
    return (dl * q.reshape(n, 16, 16).astype(np.float32)).reshape(n, QK_K)


def dequantize_q8_k(blocks: np.ndarray) -> np.ndarray:
    """Q8_K, 292 bytes: d (float32) | 256 x int8 q | 16 int16 sums (for dot products).   w = d * q"""
    d = blocks[:, 0:4].copy().view("<f4")
    return d * blocks[:, 4:260].view(np.int8).astype(np.float32)


def dequantize_iq4_xs(blocks: np.ndarray) -> np.ndarray:
    """IQ4_XS, 136 bytes: d | scales_h (uint16: 2 high bits per sub-block) | scales_l (4 bytes of nibbles) | qs.

    Eight sub-blocks of 32 weights, each a Q4-style block of IQ4_VALUES indices; the 6-bit scale of
    sub-block j (stored + 32) is nibble j of scales_l and bits 2j, 2j+1 of scales_h.
        w = (d * (scale_j - 32)) * IQ4_VALUES[q]
    """
    n = len(blocks)
    d = _f16(blocks, 0)
    high = _bits(blocks[:, 2:4], 2).transpose(0, 2, 1).reshape(n, 8)  # field k of byte b -> sub-block 4b + k
    low = _nibbles(blocks[:, 4:8]).reshape(n, 2, 4).transpose(0, 2, 1).reshape(n, 8)  # byte b: j = 2b, 2b+1
    sc = (low | (high << 4)).astype(np.int8) - np.int8(32)
    dl = (d * sc.astype(np.float32))[:, :, None]
    q = IQ4_VALUES[_nibbles(blocks[:, 8:136].reshape(n * 8, 16))].astype(np.float32).reshape(n, 8, 32)
    return (dl * q).reshape(n, QK_K)


# type name -> (weights per block, bytes per block, decoder)
DECODERS = {
    "Q4_0": (QK, 18, dequantize_q4_0),
    "Q4_1": (QK, 20, dequantize_q4_1),
    "Q5_0": (QK, 22, dequantize_q5_0),
    "Q5_1": (QK, 24, dequantize_q5_1),
    "Q8_0": (QK, 34, dequantize_q8_0),
    "IQ4_NL": (QK, 18, dequantize_iq4_nl),
    "Q2_K": (QK_K, 84, dequantize_q2_k),
    "Q3_K": (QK_K, 110, dequantize_q3_k),
    "Q4_K": (QK_K, 144, dequantize_q4_k),
    "Q5_K": (QK_K, 176, dequantize_q5_k),
    "Q6_K": (QK_K, 210, dequantize_q6_k),
    "Q8_K": (QK_K, 292, dequantize_q8_k),
    "IQ4_XS": (QK_K, 136, dequantize_iq4_xs),
}

# decode this many blocks at a time, so the temporaries stay small (tens of MB) for any tensor size
_CHUNK_BLOCKS = 1 << 16


def dequantize(raw: np.ndarray, type_name: str) -> np.ndarray:
    """The bytes of a quantized tensor -> its weights as a flat float32 array.

    raw: the tensor's bytes (uint8, any shape); type_name: a key of DECODERS ("Q4_1").
    Raises KeyError for a type without a decoder here, ValueError for a byte count that is not
    a whole number of blocks.
    """
    weights, size, decode = DECODERS[type_name]
    raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
    if raw.size % size:
        raise ValueError(f"{raw.size} bytes are not a whole number of {type_name} blocks of {size} bytes")
    blocks = raw.reshape(-1, size)
    out = np.empty((len(blocks), weights), dtype=np.float32)
    for start in range(0, len(blocks), _CHUNK_BLOCKS):
        out[start:start + _CHUNK_BLOCKS] = decode(blocks[start:start + _CHUNK_BLOCKS])
    return out.reshape(-1)
