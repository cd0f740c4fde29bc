"""Decoding compressed frames (bslz4, lz4) in batches on the GPU, and the same algorithm in NumPy.

A batch of frames that travelled compressed (:class:`EncodedFrame`: the bytes, in a ring slot, and the framing
their FrameHeader names; layouts in :mod:`ringstream.images.frame_codecs`) is decoded on the device in three
kernels, all on the caller's stream, before the integration kernels read the frames:

1. ``scan_blocks`` (one thread per frame): checks the HDF5-filter header when there is one, then walks the frame's
   ``<uint32 BE length><LZ4 block>`` sequence and writes one row of the block table per block (where its bytes
   are, how long, where its decoded bytes go and how many there must be), plus one row for the bytes stored raw
   (bslz4's ``n % 8`` trailing pixels; an lz4 block stored uncompressed). Any length that runs past the frame's
   bytes, a block count or trailing size that disagrees with the frame's shape, sets the frame's error flag and
   leaves the rest of its rows empty (decoded by nobody).
2. ``lz4_blocks`` (one thread block of one warp per table row): decodes one LZ4 block. The 32 lanes parse the
   sequence headers together (each lane reads the same bytes) and copy literals and matches 32 bytes at a time;
   a match that overlaps its own output is copied as ``dst[op + i] = dst[op - off + i % off]``, which reads only
   bytes written before the match. Every read is checked against the block's compressed length and every write
   against its decoded length; a block that does not decode to exactly its length sets the frame's error flag.
3. ``bitunshuffle`` (one thread block per bslz4 block row): the bit transpose back, 8 pixels x 1 byte a thread.

NumPy of the whole (``decode_batch_reference``, what the unit tests compare with bitshuffle / lz4 here)::

    for each frame: table rows = scan(bytes)                 # the same checks, the same rows
    for each row:   tmp_or_out[dst:dst+rlen] = lz4_decode(bytes[src:src+clen])   (or a raw copy)
    for each bslz4 row: out[dst:dst+rlen] = unshuffle(tmp[dst:dst+rlen])  # bits[j*8+k, i] -> byte j bit k of i

The kernels never read or write outside the frame's bytes and its decoded frame, whatever the bytes hold; a frame
whose flag is set is rejected by the caller (the worker decodes it again on the CPU for the reason).

Importable without CuPy: :class:`GpuDecoder` takes the ``cupy`` module when it is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..images.frame_codecs import HDF5_HEADER_BYTES, CodecError, bslz4_block_elems, decode_frame

#: frame kinds of the frame table: bitshuffle-LZ4, framed LZ4 (filter 32004), one raw LZ4 block (NDPluginCodec)
KIND_BSLZ4, KIND_LZ4_FRAMED, KIND_LZ4_RAW = 0, 1, 2
#: row kinds of the block table: LZ4 -> the shuffled buffer (bslz4), LZ4 -> the frame, bytes copied to the frame
ROW_SHUFFLED, ROW_LZ4, ROW_RAW = 0, 1, 2
#: error flag bits of a frame: framing (lengths, header, sizes), an LZ4 block that does not decode to its size
ERR_FRAMING, ERR_LZ4 = 1, 2
#: where each frame's bytes start in the device buffer: a multiple of this
ALIGN = 16


@dataclass
class EncodedFrame:
    """A frame that travelled compressed, as a worker hands it to an engine that declares ``compressed_input``:
    ``payload`` uint8 ``[nbytes]`` (a view of its ring slot or inline buffer), ``codec`` / ``header`` / ``block``
    as its FrameHeader's ``codec`` / ``codec_header`` / ``codec_block``, ``shape`` and ``dtype`` of the decoded
    frame; ``where`` names the frame in messages."""

    payload: np.ndarray
    codec: str
    header: int
    block: int
    shape: tuple[int, int]
    dtype: np.dtype
    where: str = "frame"

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded frame."""
        return int(self.shape[0]) * int(self.shape[1]) * np.dtype(self.dtype).itemsize

    def decode(self) -> np.ndarray:
        """Decoded on the CPU with the codec libraries (:func:`~ringstream.images.frame_codecs.decode_frame`);
        CodecError naming the frame (``where``) for bad bytes."""
        out = np.empty(self.shape, self.dtype)
        try:
            decode_frame(self.codec, self.payload, out, self.header, self.block)
        except CodecError as exc:
            raise CodecError(f"{self.where}: {exc}") from None
        return out


@dataclass
class BatchPlan:
    """The host's part of a batch (no byte of any frame read): per frame where its bytes go in the device buffer
    and its framing; the block table's size. Arrays are int64 ``[n_frames]``."""

    comp_off: np.ndarray
    comp_len: np.ndarray
    kind: np.ndarray
    header: np.ndarray
    block: np.ndarray  # decoded bytes per LZ4 block
    n_blocks: np.ndarray  # LZ4 blocks (a table row more for the raw bytes)
    row_base: np.ndarray  # the frame's first table row
    raw_bytes: int
    itemsize: int
    comp_total: int
    n_rows: int

    @property
    def n_frames(self) -> int:
        return int(self.kind.size)

    def table(self) -> np.ndarray:
        """The frame table as the scan kernel reads it: int64 ``[7, n_frames]``."""
        return np.stack([self.comp_off, self.comp_len, self.kind, self.header, self.block, self.n_blocks,
                         self.row_base]).astype(np.int64)


def plan_batch(frames: list[EncodedFrame]) -> BatchPlan:
    """The :class:`BatchPlan` of ``frames`` (one shape and dtype). ValueError for a mixed batch or a codec other
    than bslz4 / lz4 (the FrameHeader's checks make the rest impossible)."""
    if not frames:
        raise ValueError("plan_batch: no frames")
    shape, dtype = tuple(frames[0].shape), np.dtype(frames[0].dtype)
    raw = frames[0].nbytes
    itemsize = dtype.itemsize
    n = len(frames)
    comp_off = np.zeros(n, np.int64)
    comp_len = np.zeros(n, np.int64)
    kind = np.zeros(n, np.int64)
    header = np.zeros(n, np.int64)
    block = np.zeros(n, np.int64)
    n_blocks = np.zeros(n, np.int64)
    pos = 0
    tail = (raw // itemsize) % 8 * itemsize  # bslz4's trailing pixels, stored raw
    for f, fr in enumerate(frames):
        if tuple(fr.shape) != shape or np.dtype(fr.dtype) != dtype:
            raise ValueError(f"plan_batch: {fr.where} is {fr.shape} {fr.dtype}, the batch {shape} {dtype}")
        comp_off[f], comp_len[f] = pos, fr.payload.size
        pos += -(-int(fr.payload.size) // ALIGN) * ALIGN
        header[f] = int(fr.header)
        if fr.codec == "bslz4":
            kind[f] = KIND_BSLZ4
            block[f] = int(fr.block) or bslz4_block_elems(itemsize) * itemsize
            part = raw - tail
        elif fr.codec == "lz4":
            kind[f] = KIND_LZ4_FRAMED if fr.header else KIND_LZ4_RAW
            block[f] = int(fr.block) if fr.header else max(raw, 1)
            part = raw
        else:
            raise ValueError(f"plan_batch: {fr.where}: codec {fr.codec!r} is not decoded on the device")
        n_blocks[f] = -(-part // int(block[f]))
    rows = n_blocks + 1
    row_base = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64)
    return BatchPlan(comp_off, comp_len, kind, header, block, n_blocks, row_base, raw, itemsize, pos,
                     int(rows.sum()))


# ---------------------------------------------------------------------------------------------------------------
# The algorithm in NumPy: one function per kernel, the same rows, the same checks (slow; for the tests)


def _be(buf: np.ndarray, pos: int, n: int) -> int:
    return int.from_bytes(buf[pos:pos + n].tobytes(), "big")


def scan_reference(comp: np.ndarray, plan: BatchPlan, f: int, rows: np.ndarray, err: np.ndarray) -> None:
    """``scan_blocks`` for frame ``f``: fill its rows of ``rows`` (int64 ``[n_rows, 6]``: src, clen, dst, rlen,
    row kind, frame) from the bytes in ``comp``; set ``err[f]`` on any framing problem."""
    off, length = int(plan.comp_off[f]), int(plan.comp_len[f])
    kind, head, blk = int(plan.kind[f]), int(plan.header[f]), int(plan.block[f])
    nb, base, raw = int(plan.n_blocks[f]), int(plan.row_base[f]), plan.raw_bytes
    rows[base:base + nb + 1] = 0
    rows[base:base + nb + 1, 5] = f
    p = comp[off:off + length]
    if head:
        if length < HDF5_HEADER_BYTES or _be(p, 0, 8) != raw or _be(p, 8, 4) != blk:
            err[f] |= ERR_FRAMING
            return
    part = raw - (raw // plan.itemsize) % 8 * plan.itemsize if kind == KIND_BSLZ4 else raw
    if kind == KIND_LZ4_RAW:
        rows[base] = (off + head, length - head, 0, raw, ROW_LZ4, f)
        return
    pos = head
    for b in range(nb):
        rlen = min(blk, part - b * blk)
        if pos + 4 > length:
            err[f] |= ERR_FRAMING
            rows[base:base + nb + 1, :5] = 0
            return
        clen = _be(p, pos, 4)
        pos += 4
        if clen > length - pos:
            err[f] |= ERR_FRAMING
            rows[base:base + nb + 1, :5] = 0
            return
        row = ROW_SHUFFLED if kind == KIND_BSLZ4 else (ROW_RAW if clen == rlen else ROW_LZ4)
        rows[base + b] = (off + pos, clen, b * blk, rlen, row, f)
        pos += clen
    tail = raw - part
    if length - pos != tail:
        err[f] |= ERR_FRAMING
        rows[base:base + nb + 1, :5] = 0
        return
    rows[base + nb] = (off + pos, tail, part, tail, ROW_RAW, f)


def _length(src: np.ndarray, ip: int, clen: int, n: int) -> tuple[int, int]:
    """An LZ4 length whose 4-bit part is ``n``: 15 goes on in the bytes at ``ip`` (each added, until one is not
    255). (length, the position after it), or (-1, ip) when the bytes end first."""
    if n != 15:
        return n, ip
    while True:
        if ip >= clen:
            return -1, ip
        b = int(src[ip])
        ip += 1
        n += b
        if b != 255:
            return n, ip


def lz4_row_reference(comp: np.ndarray, row: np.ndarray, dst: np.ndarray) -> bool:
    """``lz4_blocks`` for one table row: decode (or copy) into ``dst`` (the frame's or the shuffled buffer's
    bytes, uint8); False when the block does not decode to exactly its length (nothing outside is touched)."""
    src0, clen, d0, rlen, kind = (int(x) for x in row[:5])
    if clen == 0 and rlen == 0:
        return True
    src = comp[src0:src0 + clen]
    out = dst[d0:d0 + rlen]
    if kind == ROW_RAW:
        if clen != rlen:
            return False
        out[:] = src
        return True
    ip = op = 0
    while True:
        if ip >= clen:
            return False
        token = int(src[ip])
        ip += 1
        lit, ip = _length(src, ip, clen, token >> 4)
        if lit < 0 or ip + lit > clen or op + lit > rlen:
            return False
        out[op:op + lit] = src[ip:ip + lit]
        ip += lit
        op += lit
        if ip == clen:
            break
        if ip + 2 > clen:
            return False
        off = int(src[ip]) | int(src[ip + 1]) << 8
        ip += 2
        ml, ip = _length(src, ip, clen, token & 15)
        if ml < 0:
            return False
        ml += 4
        if off == 0 or off > op or op + ml > rlen:
            return False
        i = np.arange(ml)
        out[op:op + ml] = out[op - off + i % off]  # reads only bytes written before the match, as the kernel
        op += ml
    return op == rlen


def unshuffle_reference(shuffled: np.ndarray, itemsize: int) -> np.ndarray:
    """``bitunshuffle`` of one bslz4 block (uint8, a multiple of 8 pixels): row ``j*8+k`` of the shuffled block
    holds bit ``k`` of byte ``j`` of every pixel ``i`` (bit ``i % 8`` of its byte ``i // 8``)."""
    n = shuffled.size // itemsize
    bits = np.unpackbits(shuffled.reshape(itemsize * 8, n // 8), axis=1, bitorder="little")
    return np.packbits(bits.reshape(itemsize, 8, n).transpose(2, 0, 1), axis=2, bitorder="little").reshape(-1)


def decode_batch_reference(frames: list[EncodedFrame]) -> tuple[np.ndarray, np.ndarray]:
    """The three kernels in NumPy: (decoded bytes uint8 ``[n, raw_bytes]``, error flags int32 ``[n]``); a frame
    with a flag set holds bytes that mean nothing."""
    plan = plan_batch(frames)
    comp = np.zeros(plan.comp_total, np.uint8)
    for f, fr in enumerate(frames):
        comp[plan.comp_off[f]:plan.comp_off[f] + plan.comp_len[f]] = fr.payload.reshape(-1).view(np.uint8)
    rows = np.zeros((plan.n_rows, 6), np.int64)
    err = np.zeros(plan.n_frames, np.int32)
    for f in range(plan.n_frames):
        scan_reference(comp, plan, f, rows, err)
    out = np.zeros((plan.n_frames, plan.raw_bytes), np.uint8)
    tmp = np.zeros_like(out)
    for row in rows:
        f = int(row[5])
        if not lz4_row_reference(comp, row, tmp[f] if row[4] == ROW_SHUFFLED else out[f]):
            err[f] |= ERR_LZ4
    for row in rows:
        f, d0, rlen = int(row[5]), int(row[2]), int(row[3])
        if row[4] == ROW_SHUFFLED and rlen and not err[f]:
            out[f, d0:d0 + rlen] = unshuffle_reference(tmp[f, d0:d0 + rlen], plan.itemsize)
    return out, err


# ---------------------------------------------------------------------------------------------------------------
# The kernels

_SOURCE = r"""
typedef long long i64;
typedef unsigned char u8;

__device__ __forceinline__ i64 be_read(const u8* p, int n) {
    i64 v = 0;
    for (int i = 0; i < n; ++i) v = (v << 8) | p[i];
    return v;
}

// one thread per frame; table: int64 [7, n_frames] (comp_off, comp_len, kind, header, block, n_blocks, row_base);
// rows: int64 [n_rows, 6] (src, clen, dst, rlen, row kind, frame)
extern "C" __global__ void scan_blocks(const u8* comp, const i64* table, int n_frames, i64 raw, int itemsize,
                                       i64* rows, int* err) {
    int f = blockIdx.x * blockDim.x + threadIdx.x;
    if (f >= n_frames) return;
    i64 off = table[f], len = table[n_frames + f];
    int kind = (int)table[2 * n_frames + f];
    i64 head = table[3 * n_frames + f], blk = table[4 * n_frames + f], nb = table[5 * n_frames + f];
    i64 base = table[6 * n_frames + f];
    for (i64 r = base; r <= base + nb; ++r) {
        i64* row = rows + r * 6;
        row[0] = 0; row[1] = 0; row[2] = 0; row[3] = 0; row[4] = 0; row[5] = f;
    }
    const u8* p = comp + off;
    if (head) {
        if (len < 12 || be_read(p, 8) != raw || be_read(p + 8, 4) != blk) { err[f] |= 1; return; }
    }
    i64 part = kind == 0 ? raw - ((raw / itemsize) % 8) * itemsize : raw;
    if (kind == 2) {
        i64* row = rows + base * 6;
        row[0] = off + head; row[1] = len - head; row[2] = 0; row[3] = raw; row[4] = 1;
        return;
    }
    i64 pos = head;
    for (i64 b = 0; b < nb; ++b) {
        i64 rlen = part - b * blk < blk ? part - b * blk : blk;
        if (pos + 4 > len) { err[f] |= 1; break; }
        i64 clen = be_read(p + pos, 4);
        pos += 4;
        if (clen > len - pos) { err[f] |= 1; break; }
        i64* row = rows + (base + b) * 6;
        row[0] = off + pos; row[1] = clen; row[2] = b * blk; row[3] = rlen;
        row[4] = kind == 0 ? 0 : (clen == rlen ? 2 : 1);
        pos += clen;
    }
    if (!(err[f] & 1) && len - pos != raw - part) err[f] |= 1;
    if (err[f] & 1) {  // nothing of this frame is decoded
        for (i64 r = base; r <= base + nb; ++r) {
            i64* row = rows + r * 6;
            row[1] = 0; row[3] = 0;
        }
        return;
    }
    i64* row = rows + (base + nb) * 6;
    row[0] = off + pos; row[1] = raw - part; row[2] = part; row[3] = raw - part; row[4] = 2;
}

// an LZ4 length whose 4-bit part is n: 15 goes on in the bytes at *ip (each added, until one is not 255);
// -1 when the block's bytes end first
__device__ __forceinline__ i64 lz4_length(const u8* src, i64* ip, i64 clen, i64 n) {
    if (n != 15) return n;
    int b;
    do {
        if (*ip >= clen) return -1;
        b = src[(*ip)++];
        n += b;
    } while (b == 255);
    return n;
}

// one warp per table row (launched with 32 threads: __syncwarp orders them): decode one LZ4 block (or copy raw bytes) into tmp (bslz4) or out, frame f at f * raw
extern "C" __global__ void lz4_blocks(const u8* comp, u8* tmp, u8* out, const i64* rows, i64 n_rows, i64 raw,
                                      int* err) {
    i64 r = blockIdx.x;
    if (r >= n_rows) return;
    const i64* row = rows + r * 6;
    i64 clen = row[1], rlen = row[3];
    int kind = (int)row[4], f = (int)row[5];
    if (clen == 0 && rlen == 0) return;
    int lane = threadIdx.x;
    const u8* src = comp + row[0];
    u8* dst = (kind == 0 ? tmp : out) + (i64)f * raw + row[2];
    if (kind == 2) {
        if (clen != rlen) { if (lane == 0) atomicOr(err + f, 2); return; }
        for (i64 i = lane; i < rlen; i += blockDim.x) dst[i] = src[i];
        return;
    }
    i64 ip = 0, op = 0;
    int bad = 0;
    while (true) {
        if (ip >= clen) { bad = 1; break; }
        int token = src[ip++];
        i64 lit = lz4_length(src, &ip, clen, token >> 4);
        if (lit < 0 || ip + lit > clen || op + lit > rlen) { bad = 1; break; }
        for (i64 i = lane; i < lit; i += blockDim.x) dst[op + i] = src[ip + i];
        ip += lit;
        op += lit;
        if (ip == clen) break;  // the last sequence: literals only
        if (ip + 2 > clen) { bad = 1; break; }
        i64 off = (i64)src[ip] | ((i64)src[ip + 1] << 8);
        ip += 2;
        i64 ml = lz4_length(src, &ip, clen, token & 15);
        if (ml < 0) { bad = 1; break; }
        ml += 4;
        if (off == 0 || off > op || op + ml > rlen) { bad = 1; break; }
        __syncwarp();  // the bytes the match reads were written by other lanes
        for (i64 i = lane; i < ml; i += blockDim.x) dst[op + i] = dst[op - off + i % off];
        __syncwarp();
        op += ml;
    }
    if (op != rlen) bad = 1;
    if (bad && lane == 0) atomicOr(err + f, 2);
}

// one thread block per bslz4 row: out bytes of 8 pixels x byte j from the 8 bit-rows j*8+k of the shuffled block
extern "C" __global__ void bitunshuffle(const u8* tmp, u8* out, const i64* rows, i64 n_rows, i64 raw, int esz,
                                        const int* err) {
    i64 r = blockIdx.x;
    if (r >= n_rows) return;
    const i64* row = rows + r * 6;
    int f = (int)row[5];
    if (row[4] != 0 || row[3] == 0 || err[f]) return;
    i64 nb8 = row[3] / esz / 8;  // bytes of one bit-row
    const u8* in = tmp + (i64)f * raw + row[2];
    u8* o = out + (i64)f * raw + row[2];
    for (i64 t = threadIdx.x; t < esz * nb8; t += blockDim.x) {
        i64 j = t / nb8, g = t % nb8;
        unsigned long long x = 0;
        for (int k = 0; k < 8; ++k) x |= (unsigned long long)in[(j * 8 + k) * nb8 + g] << (8 * k);
        for (int m = 0; m < 8; ++m) {
            unsigned int b = 0;
            for (int k = 0; k < 8; ++k) b |= (unsigned int)((x >> (8 * k + m)) & 1ull) << k;
            o[(g * 8 + m) * esz + j] = (u8)b;
        }
    }
}
"""

#: compiled kernels per device ordinal (compiled on first use, as :mod:`.cupy_kernels` does)
_KERNEL_CACHE: dict = {}


def _kernels(cp, device_id: int):
    """(``scan_blocks``, ``lz4_blocks``, ``bitunshuffle``) on the current CUDA device, compiled on first use."""
    if device_id not in _KERNEL_CACHE:
        mod = cp.RawModule(code=_SOURCE, options=("-std=c++17",))
        _KERNEL_CACHE[device_id] = (mod.get_function("scan_blocks"), mod.get_function("lz4_blocks"),
                                    mod.get_function("bitunshuffle"))
    return _KERNEL_CACHE[device_id]


class GpuDecoder:
    """The device buffers and kernels of one CUDA stream's decoding (the engine keeps one per stream, so a
    stream's buffers are reused only once its previous batch was collected). Buffers grow with the largest batch
    seen and are never freed or allocated per frame.

    ``decode(frames, d_out, stream)`` enqueues on ``stream``: the frames' bytes host -> device (straight from
    page-locked memory such as a registered ring, else through the driver), the frame table, the three kernels
    into ``d_out`` (a device uint8 array of at least ``n * raw_bytes`` bytes: frame f at ``f * raw_bytes``), and
    the error flags back into a pinned array it returns (read it once the stream is done).
    """

    def __init__(self, cp: Any, device_id: int = 0) -> None:
        self.cp = cp
        self.device_id = int(device_id)
        self._dev: dict[str, Any] = {}
        self._pinned: dict[str, np.ndarray] = {}

    def _device(self, name: str, nbytes: int):
        """Device buffer ``name`` as a uint8 array of at least ``nbytes`` bytes (grown, never shrunk)."""
        buf = self._dev.get(name)
        if buf is None or buf.size < nbytes:
            buf = self.cp.ndarray((max(int(nbytes), 1),), np.uint8, memptr=self.cp.cuda.alloc(max(int(nbytes), 1)))
            self._dev[name] = buf
        return buf

    def _host(self, name: str, n: int, dtype) -> np.ndarray:
        """Pinned host array ``name`` of at least ``n`` items (grown, never shrunk), its first ``n``."""
        buf = self._pinned.get(name)
        dtype = np.dtype(dtype)
        if buf is None or buf.size < n:
            mem = self.cp.cuda.alloc_pinned_memory(max(n, 1) * dtype.itemsize)
            buf = np.frombuffer(mem, dtype, max(n, 1))
            self._pinned[name] = buf
        return buf[:n]

    def decode(self, frames: list[EncodedFrame], d_out, stream) -> np.ndarray:
        """See the class docstring; returns the pinned int32 ``[n]`` error flags (valid after the stream)."""
        rt = self.cp.cuda.runtime
        plan = plan_batch(frames)
        n = plan.n_frames
        table = plan.table()
        if d_out.nbytes < n * plan.raw_bytes:
            raise ValueError(f"GpuDecoder: d_out holds {d_out.nbytes} bytes, {n} frames need {n * plan.raw_bytes}")
        comp = self._device("comp", plan.comp_total)
        tmp = self._device("tmp", n * plan.raw_bytes)
        rows = self._device("rows", plan.n_rows * 6 * 8)
        d_table = self._device("table", table.nbytes)
        d_err = self._device("err", n * 4)
        h_table = self._host("table", table.size, np.int64)
        h_table[:] = table.reshape(-1)
        h2d = rt.memcpyHostToDevice
        for f, fr in enumerate(frames):
            payload = np.ascontiguousarray(fr.payload).reshape(-1)
            rt.memcpyAsync(comp.data.ptr + int(plan.comp_off[f]), int(payload.ctypes.data), int(payload.size),
                           h2d, stream.ptr)
        rt.memcpyAsync(d_table.data.ptr, int(h_table.ctypes.data), table.nbytes, h2d, stream.ptr)
        rt.memsetAsync(d_err.data.ptr, 0, n * 4, stream.ptr)
        scan, lz4, unshuffle = _kernels(self.cp, self.device_id)
        raw, n_rows = np.int64(plan.raw_bytes), np.int64(plan.n_rows)
        with stream:
            scan(((n + 63) // 64,), (64,), (comp, d_table, np.int32(n), raw, np.int32(plan.itemsize), rows, d_err))
            lz4((plan.n_rows,), (32,), (comp, tmp, d_out, rows, n_rows, raw, d_err))
            unshuffle((plan.n_rows,), (256,), (tmp, d_out, rows, n_rows, raw, np.int32(plan.itemsize), d_err))
        err = self._host("err", n, np.int32)
        rt.memcpyAsync(int(err.ctypes.data), d_err.data.ptr, n * 4, rt.memcpyDeviceToHost, stream.ptr)
        return err
