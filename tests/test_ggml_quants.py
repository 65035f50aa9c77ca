"""tinyllama_ref.formats.ggml_quants against ggml: bit-equal to the `gguf` package's dequantize (when it
is installed) and to scalar transcriptions of ggml's C decoders (always), on random blocks."""
from __future__ import annotations

import numpy as np
import pytest

from tinyllama_ref.formats.ggml_quants import DECODERS, dequantize

# byte offsets of each type's float16 scales: random bytes there could be inf/nan, so they get finite values
F16_OFFSETS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "IQ4_NL": [0],
               "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208], "IQ4_XS": [0]}


def random_blocks(kind: str, n_blocks: int, seed: int = 0) -> np.ndarray:
    """[n_blocks, bytes] random blocks of `kind` whose scales are finite."""
    rng = np.random.default_rng(seed)
    size = DECODERS[kind][1]
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for off in F16_OFFSETS.get(kind, []):
        raw[:, off:off + 2] = rng.uniform(-0.05, 0.05, (n_blocks, 1)).astype("<f2").view(np.uint8)
    if kind == "Q8_K":
        raw[:, 0:4] = rng.uniform(-0.05, 0.05, (n_blocks, 1)).astype("<f4").view(np.uint8)
    return raw


# -- scalar transcriptions of ggml-quants.c's dequantize_row_* (one block, Python ints and floats) --------

def _f16(two_bytes) -> np.float32:
    return np.frombuffer(bytes(two_bytes), dtype="<f2")[0].astype(np.float32)


def _i8(q):
    return q - 256 if q > 127 else q


def _scale_min_k4(j, q):  # get_scale_min_k4
    if j < 4:
        return q[j] & 63, q[j + 4] & 63
    return (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)


F = np.float32  # every product below is float32 times float32, as in C


def ref_q8_0(b):
    d = _f16(b[0:2])
    return [F(_i8(q)) * d for q in b[2:34]]


def ref_q4_0(b):
    d, qs = _f16(b[0:2]), b[2:18]
    return [F((q & 0xF) - 8) * d for q in qs] + [F((q >> 4) - 8) * d for q in qs]


def ref_q4_1(b):
    d, m, qs = _f16(b[0:2]), _f16(b[2:4]), b[4:20]
    return [F(q & 0xF) * d + m for q in qs] + [F(q >> 4) * d + m for q in qs]


def _q5(qh, qs, j):  # 5-bit values j and j + 16: the 5th bits live in the 32-bit word qh
    return (qs[j] & 0xF) | (((qh >> j) << 4) & 0x10), (qs[j] >> 4) | ((qh >> (j + 12)) & 0x10)


def ref_q5_0(b):
    d, qh, qs = _f16(b[0:2]), int.from_bytes(bytes(b[2:6]), "little"), b[6:22]
    pairs = [_q5(qh, qs, j) for j in range(16)]
    return [F(lo - 16) * d for lo, _ in pairs] + [F(hi - 16) * d for _, hi in pairs]


def ref_q5_1(b):
    d, m, qh, qs = _f16(b[0:2]), _f16(b[2:4]), int.from_bytes(bytes(b[4:8]), "little"), b[8:24]
    pairs = [_q5(qh, qs, j) for j in range(16)]
    return [F(lo) * d + m for lo, _ in pairs] + [F(hi) * d + m for _, hi in pairs]


KVALUES = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]


def ref_iq4_nl(b):
    d, qs = _f16(b[0:2]), b[2:18]
    return [d * F(KVALUES[q & 0xF]) for q in qs] + [d * F(KVALUES[q >> 4]) for q in qs]


def ref_q2_k(b):
    sc, q, d, dmin = b[0:16], b[16:80], _f16(b[80:82]), _f16(b[82:84])
    y, i = [], 0
    for n in range(2):
        for shift in (0, 2, 4, 6):
            for half in range(2):
                dl, ml = d * F(sc[i] & 0xF), dmin * F(sc[i] >> 4)
                i += 1
                y += [dl * F((q[32 * n + 16 * half + l] >> shift) & 3) - ml for l in range(16)]
    return y


def ref_q3_k(b):
    hm, q, raw, d = b[0:32], b[32:96], b[96:108], _f16(b[108:110])
    aux = [int.from_bytes(bytes(raw[4 * k:4 * k + 4]), "little") for k in range(3)]
    tmp = aux[2]
    kmask1, kmask2 = 0x03030303, 0x0f0f0f0f
    words = [(aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4), (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4),
             ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4), ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4)]
    scales = [_i8(byte) for w in words for byte in (w & 0xFFFFFFFF).to_bytes(4, "little")]
    y, i, m = [], 0, 1
    for n in range(2):
        for shift in (0, 2, 4, 6):
            for half in range(2):
                dl = d * F(scales[i] - 32)
                i += 1
                for l in range(16 * half, 16 * half + 16):
                    y.append(dl * F(((q[32 * n + l] >> shift) & 3) - (0 if hm[l] & m else 4)))
            m <<= 1
    return y


def ref_q4_k(b):
    d, dmin, scales, qs = _f16(b[0:2]), _f16(b[2:4]), b[4:16], b[16:144]
    y = []
    for j in range(4):
        (sc1, m1), (sc2, m2) = _scale_min_k4(2 * j, scales), _scale_min_k4(2 * j + 1, scales)
        d1, mm1, d2, mm2 = d * F(sc1), dmin * F(m1), d * F(sc2), dmin * F(m2)
        y += [d1 * F(q & 0xF) - mm1 for q in qs[32 * j: 32 * j + 32]]
        y += [d2 * F(q >> 4) - mm2 for q in qs[32 * j: 32 * j + 32]]
    return y


def ref_q5_k(b):
    d, dmin, scales, qh, qs = _f16(b[0:2]), _f16(b[2:4]), b[4:16], b[16:48], b[48:176]
    y = []
    for j in range(4):
        (sc1, m1), (sc2, m2) = _scale_min_k4(2 * j, scales), _scale_min_k4(2 * j + 1, scales)
        d1, mm1, d2, mm2 = d * F(sc1), dmin * F(m1), d * F(sc2), dmin * F(m2)
        u1, u2 = 1 << (2 * j), 2 << (2 * j)
        y += [d1 * F((qs[32 * j + l] & 0xF) + (16 if qh[l] & u1 else 0)) - mm1 for l in range(32)]
        y += [d2 * F((qs[32 * j + l] >> 4) + (16 if qh[l] & u2 else 0)) - mm2 for l in range(32)]
    return y


def ref_q6_k(b):
    ql, qh, d = b[0:128], b[128:192], _f16(b[208:210])
    sc = [_i8(s) for s in b[192:208]]
    y = [F(0)] * 256
    for n in range(2):
        L, H, S, Y = 64 * n, 32 * n, 8 * n, 128 * n
        for l in range(32):
            s = S + l // 16
            q1 = ((ql[L + l] & 0xF) | (((qh[H + l] >> 0) & 3) << 4)) - 32
            q2 = ((ql[L + l + 32] & 0xF) | (((qh[H + l] >> 2) & 3) << 4)) - 32
            q3 = ((ql[L + l] >> 4) | (((qh[H + l] >> 4) & 3) << 4)) - 32
            q4 = ((ql[L + l + 32] >> 4) | (((qh[H + l] >> 6) & 3) << 4)) - 32
            y[Y + l], y[Y + l + 32] = d * F(sc[s]) * F(q1), d * F(sc[s + 2]) * F(q2)
            y[Y + l + 64], y[Y + l + 96] = d * F(sc[s + 4]) * F(q3), d * F(sc[s + 6]) * F(q4)
    return y


def ref_q8_k(b):
    d = np.frombuffer(bytes(b[0:4]), dtype="<f4")[0]
    return [d * F(_i8(q)) for q in b[4:260]]


def ref_iq4_xs(b):
    d, scales_h, scales_l, qs = _f16(b[0:2]), int.from_bytes(bytes(b[2:4]), "little"), b[4:8], b[8:136]
    y = []
    for ib in range(8):
        ls = ((scales_l[ib // 2] >> (4 * (ib % 2))) & 0xF) | (((scales_h >> (2 * ib)) & 3) << 4)
        dl = d * F(ls - 32)
        chunk = qs[16 * ib:16 * ib + 16]
        y += [dl * F(KVALUES[q & 0xF]) for q in chunk] + [dl * F(KVALUES[q >> 4]) for q in chunk]
    return y


REFERENCES = {"Q8_0": ref_q8_0, "Q4_0": ref_q4_0, "Q4_1": ref_q4_1, "Q5_0": ref_q5_0, "Q5_1": ref_q5_1,
              "IQ4_NL": ref_iq4_nl, "Q2_K": ref_q2_k, "Q3_K": ref_q3_k, "Q4_K": ref_q4_k, "Q5_K": ref_q5_k,
              "Q6_K": ref_q6_k, "Q8_K": ref_q8_k, "IQ4_XS": ref_iq4_xs}


def test_every_decoder_has_a_reference():
    assert set(REFERENCES) == set(DECODERS)


@pytest.mark.parametrize("kind", sorted(DECODERS))
def test_decoder_equals_ggml_c_transcription(kind):
    blocks = random_blocks(kind, 6, seed=len(kind))
    expected = np.array([v for b in blocks for v in REFERENCES[kind]([int(x) for x in b])], dtype=np.float32)
    got = dequantize(blocks, kind)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))  # bit-equal


@pytest.mark.parametrize("kind", sorted(DECODERS))
def test_decoder_is_bit_equal_to_the_gguf_package(kind):
    gguf = pytest.importorskip("gguf", reason="the gguf package (a test-only comparison) is not installed")
    qtype = gguf.GGMLQuantizationType[kind]
    if qtype not in gguf.quants._type_traits:
        pytest.skip(f"the gguf package has no NumPy decoder for {kind}")
    blocks = random_blocks(kind, 3000, seed=7)
    theirs = np.asarray(gguf.quants.dequantize(blocks, qtype), dtype=np.float32).reshape(-1)
    ours = dequantize(blocks, kind)
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))


def test_chunks_give_the_same_result_as_one_pass(monkeypatch):
    import tinyllama_ref.formats.ggml_quants as gq

    blocks = random_blocks("Q4_K", 50, seed=3)
    whole = dequantize(blocks, "Q4_K")
    monkeypatch.setattr(gq, "_CHUNK_BLOCKS", 7)
    np.testing.assert_array_equal(dequantize(blocks, "Q4_K"), whole)


def test_a_partial_block_is_an_error():
    with pytest.raises(ValueError, match="whole number of Q4_1 blocks"):
        dequantize(np.zeros(21, np.uint8), "Q4_1")
