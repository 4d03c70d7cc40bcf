"""TIR kernels for ``GatedConv``: a convolution that only does the work of its active inputs.

``GatedConv(x, W, B; threshold, strides, pads, dilations, group)`` is exactly
``Conv(where(x > threshold, x, 0), W, B)`` (NCHW in, NCHW out, float32). FeatReg trains most channels
of each pixel to be gated off, so the kernel skips them instead of multiplying by zero:

1. **Compress = gate.** Each input pixel gets a bit mask of its active channels (``x > threshold``,
   64 channels a word), on a grid padded like the convolution so that padding is just "no active
   channel". Computing the masks reads ``x`` once and writes nothing but the masks (1 bit a value).
2. **Accumulate.** For a tile of ``ox_tile`` neighbouring output pixels of one row and ``oc_tile``
   output channels, walk the set bits of each input pixel in the tile's window (lowest first:
   ``c = ctz(bits); bits &= bits - 1``), load that one input value and add it times the packed weight
   row ``W[ky, kx, c, :]`` into every output pixel of the tile it reaches (one value serves up to
   ``kw`` taps). The work is proportional to the active (pixel, channel) pairs; gated-off channels
   and padding cost nothing but their bits.

The result equals the dense convolution of the gated input up to float32 summation order (only terms
that are exactly zero are left out), at any sparsity, including pixels with no or all channels active.
The threshold is rounded to float32, as ONNX compares in the input's type; NaN inputs are gated off
(``NaN > t`` is false) as in the reference.

CPU (``llvm``: x86 host, aarch64 ``arm_cpu``): one hand-scheduled PrimFunc, rows of output in
parallel, the tile accumulated in vector registers, the row staged channels-last and written to NCHW
once; a pixel shuffle (``DepthToSpace``) that alone reads the conv can be written in that same pass
instead (:class:`DepthToSpace`). GPU (``cuda``, ``mali``/OpenCL): the same masks and the same
accumulation (one output channel per thread instead of a vector lane), threads bound by hand.
Supported: ``group == 1`` (the sparse kernel above) and depthwise ``group == C == M`` (a gated dense
kernel: each active input feeds one output channel only, so skipping per pixel-channel buys nothing
over a vectorized dense loop). On CPU a conv with at most half a vector of outputs is a gated dense
kernel too, vectorized over output pixels (:func:`few_outputs`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.script import tirx as T
from tvm.target import Target
from tvm.target.codegen import target_has_features

# PrimFunc attribute holding a gated kernel's GatedConvShape (JSON): tuning finds its workloads by it.
SHAPE_ATTR = "edgesparse.gated_conv_shape"

_MASK_BITS = 64  # channels per mask word (int64)
_VECTOR = 16  # lanes of the CPU mask and transpose loops; LLVM splits them to the target's width


@dataclass(frozen=True)
class GatedConvShape:
    """One GatedConv's static shape, ONNX conventions (pads are top, left, bottom, right)."""

    batch: int
    in_channels: int
    out_channels: int
    height: int
    width: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    group: int = 1

    def __post_init__(self) -> None:
        for name in ("kernel", "stride", "pads", "dilation"):  # ONNX attributes arrive as lists
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        pairs = (self.kernel, self.stride, self.dilation)
        sizes = (self.batch, self.in_channels, self.out_channels, self.height, self.width, *sum(pairs, ()))
        if min(sizes) < 1 or min(self.pads) < 0 or any(len(pair) != 2 for pair in pairs) or len(self.pads) != 4:
            raise ValueError(f"invalid GatedConv shape {self}")
        if self.group != 1 and not self.is_depthwise:
            raise ValueError(f"GatedConv supports group 1 and depthwise (group == in == out channels), not {self}")
        if self.out_height < 1 or self.out_width < 1:
            raise ValueError(f"GatedConv {self} has an empty output")

    @property
    def is_depthwise(self) -> bool:
        return self.group == self.in_channels == self.out_channels and self.group > 1

    @property
    def out_height(self) -> int:
        return _out_size(self.height, self.pads[0] + self.pads[2], self.kernel[0], self.stride[0], self.dilation[0])

    @property
    def out_width(self) -> int:
        return _out_size(self.width, self.pads[1] + self.pads[3], self.kernel[1], self.stride[1], self.dilation[1])

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        """ONNX's [M, C / group, kh, kw]."""
        return (self.out_channels, self.in_channels // self.group, *self.kernel)

    @property
    def dense_macs(self) -> int:
        """Multiply-accumulates of the dense convolution, taps on the padding included."""
        return self.batch * self.out_channels * self.out_height * self.out_width * math.prod(self.weight_shape[1:])


def _out_size(size: int, pad: int, kernel: int, stride: int, dilation: int) -> int:
    return (size + pad - dilation * (kernel - 1) - 1) // stride + 1


@dataclass(frozen=True)
class GatedConvSchedule:
    """The kernel's knobs (an autotuner searches them; :func:`default_schedule` picks per target).

    - ``oc_tile``: output channels accumulated together; the packed weight's last axis. CPU: a
      multiple of the vector width, one register per vector (several per tile are unrolled, never
      one odd-sized vector: LLVM scalarizes those). GPU: threads along ``threadIdx.x``.
    - ``ox_tile``: neighbouring output pixels of a row accumulated together; each loaded input value
      is added into every one of them it reaches, so wider tiles load less per multiply-add.
    - ``cin_block`` (CPU): input channels per pass over an output row, a power of two up to 64; the
      weights one pass reads (one kernel row: ``kw * cin_block * M`` floats) should fit the L1 cache.
    - ``gpu_threads`` (GPU): threads per block, a multiple of ``oc_tile``; the rest of the block
      takes further pixel tiles.
    """

    oc_tile: int = 64
    ox_tile: int = 3
    cin_block: int = 32
    gpu_threads: int = 128

    def validate(self, target: Target) -> None:
        """Raises ValueError for knobs the kernel cannot build (not for slow ones)."""
        if min(self.oc_tile, self.ox_tile, self.cin_block, self.gpu_threads) < 1:
            raise ValueError(f"schedule knobs must be positive: {self}")
        if self.cin_block > _MASK_BITS or self.cin_block & (self.cin_block - 1):
            raise ValueError(f"cin_block must be a power of two up to {_MASK_BITS}: {self}")
        if _is_gpu(target):
            max_threads = int(target.attrs.get("max_num_threads", 1024))
            if self.gpu_threads % self.oc_tile or self.gpu_threads > max_threads:
                raise ValueError(f"gpu_threads must be a multiple of oc_tile and at most {max_threads}: {self}")
        elif self.oc_tile % _cpu_vector_lanes(target):
            raise ValueError(
                f"oc_tile must be a multiple of the target's {_cpu_vector_lanes(target)} vector lanes: {self}"
            )


def default_schedule(shape: GatedConvShape, target: Target) -> GatedConvSchedule:
    """Knobs that fit the target's registers and caches (chosen by x86 timings; elsewhere guesses)."""
    if _is_gpu(target):
        # Whole warps per tile: the threads of a tile walk the same masks, so a warp never diverges.
        oc_tile = min(64, _round_up(shape.out_channels, max(8, int(target.attrs.get("thread_warp_size", 1)))))
        tiles_per_block = max(1, 1 << (128 // oc_tile).bit_length() - 1)  # a power of two, ~128 threads
        return GatedConvSchedule(
            oc_tile=oc_tile, ox_tile=2, cin_block=_MASK_BITS, gpu_threads=oc_tile * tiles_per_block
        )
    lanes, registers = _cpu_vector_lanes(target), _cpu_vector_registers(target)
    oc_tile = min(64, _round_up(shape.out_channels, lanes))
    # Keep a few registers for the broadcast input and weights.
    tile_floats = (registers - 4) * lanes
    ox_tile = max(1, min(4, tile_floats // oc_tile))
    return GatedConvSchedule(oc_tile=oc_tile, ox_tile=ox_tile, cin_block=32)


def schedule_space(shape: GatedConvShape, target: Target) -> list[GatedConvSchedule]:
    """The valid schedules an autotuner should time for ``shape`` on ``target``: output-channel tiles
    up to 64 (whole vectors on CPU, whole warps on GPU), register tiles that fit the register file."""
    if _is_gpu(target):
        warp = max(8, int(target.attrs.get("thread_warp_size", 1)))
        max_threads = int(target.attrs.get("max_num_threads", 1024))
        oc_tiles = range(warp, min(64, _round_up(shape.out_channels, warp)) + 1, warp)
        return [
            GatedConvSchedule(oc_tile=oc, ox_tile=ox, cin_block=_MASK_BITS, gpu_threads=oc * tiles_per_block)
            for oc in oc_tiles
            for ox in (1, 2, 4)
            for tiles_per_block in (1, 2, 4, 8, 16, 32)
            if oc * tiles_per_block <= min(256, max_threads)
        ]
    lanes, registers = _cpu_vector_lanes(target), _cpu_vector_registers(target)
    oc_tiles = range(lanes, min(64, _round_up(shape.out_channels, lanes)) + 1, lanes)
    return [
        GatedConvSchedule(oc_tile=oc, ox_tile=ox, cin_block=block)
        for oc in oc_tiles
        for ox in range(1, 7)
        for block in (8, 16, 32, 64)
        if ox * oc <= (registers - 4) * lanes
    ]


def _is_gpu(target: Target) -> bool:
    return "gpu" in target.keys


def _cpu_vector_lanes(target: Target) -> int:
    if target_has_features("avx512f", target):
        return 16
    return 8 if target_has_features("avx2", target) else 4


def _cpu_vector_registers(target: Target) -> int:
    return 32 if target_has_features("avx512f", target) or target_has_features("neon", target) else 16


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def pack_weight(weight_oihw: np.ndarray, shape: GatedConvShape, schedule: GatedConvSchedule) -> np.ndarray:
    """ONNX weights [M, C/group, kh, kw] -> the kernel's layout.

    group 1: [ceil(M / oc_tile), kh, kw, C, oc_tile], zero-padded output channels, so that one input
    channel's weights for one tap and tile are a contiguous row. Depthwise: [kh, kw, C].
    """
    weight = np.asarray(weight_oihw, dtype=np.float32)
    if weight.shape != shape.weight_shape:
        raise ValueError(f"weight shape {weight.shape} does not match {shape.weight_shape}")
    if shape.is_depthwise:
        return np.ascontiguousarray(weight[:, 0].transpose(1, 2, 0))
    tiles = _Geometry(shape, schedule).oc_tiles
    padded = np.zeros((tiles * schedule.oc_tile, *weight.shape[1:]), np.float32)
    padded[: shape.out_channels] = weight
    kh, kw = shape.kernel
    return np.ascontiguousarray(
        padded.reshape(tiles, schedule.oc_tile, shape.in_channels, kh, kw).transpose(0, 3, 4, 2, 1)
    )


def packed_weight_shape(shape: GatedConvShape, schedule: GatedConvSchedule) -> tuple[int, ...]:
    if shape.is_depthwise:
        return (*shape.kernel, shape.in_channels)
    return (_Geometry(shape, schedule).oc_tiles, *shape.kernel, shape.in_channels, schedule.oc_tile)


def effective_macs(x: np.ndarray, shape: GatedConvShape, threshold: float) -> int:
    """Multiply-adds the kernel does on input ``x``: for each output pixel and each tap that lands
    inside the input, the active channels (``x > threshold``) there times the output channels.
    Depthwise kernels are dense (see the module docstring): their count is ``dense_macs``."""
    if shape.is_depthwise:
        return shape.dense_macs
    active = (np.asarray(x) > np.float32(threshold)).sum(axis=1)  # [N, H, W]
    top, left, bottom, right = shape.pads
    padded = np.pad(active, ((0, 0), (top, bottom), (left, right)))
    (sh, sw), (dh, dw) = shape.stride, shape.dilation
    rows, columns = (shape.out_height - 1) * sh + 1, (shape.out_width - 1) * sw + 1
    taps = sum(
        int(padded[:, ky * dh : ky * dh + rows : sh, kx * dw : kx * dw + columns : sw].sum())
        for ky in range(shape.kernel[0])
        for kx in range(shape.kernel[1])
    )
    return taps * shape.out_channels


def standalone_module(
    shape: GatedConvShape,
    threshold: float,
    weight_oihw: np.ndarray,
    bias: np.ndarray,
    schedule: GatedConvSchedule,
    target: Target,
    phases: str = "all",
) -> tvm.IRModule:
    """A Relax module whose ``main(x)`` is one GatedConv through ``call_tir`` (weights as constants),
    for tests and benchmarks of the kernel alone (``phases``: see :func:`gated_conv2d`)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((shape.batch, shape.in_channels, shape.height, shape.width), "float32"))
    with bb.function("main", [x]):
        kernel = bb.add_func(gated_conv2d(shape, threshold, schedule, target, phases), "gated_conv")
        weight = relax.const(pack_weight(weight_oihw, shape, schedule))
        with bb.dataflow():
            out_type = relax.TensorType((shape.batch, shape.out_channels, shape.out_height, shape.out_width), "float32")
            y = bb.emit_output(
                relax.call_tir(kernel, [x, weight, relax.const(np.asarray(bias, np.float32))], out_ty=out_type)
            )
        bb.emit_func_output(y)
    return bb.get()


@dataclass(frozen=True)
class _Geometry:
    """Loop extents and buffer shapes derived from shape and schedule, shared by every variant."""

    shape: GatedConvShape
    schedule: GatedConvSchedule

    @property
    def mask_height(self) -> int:
        return self.shape.height + self.shape.pads[0] + self.shape.pads[2]

    @property
    def tiles_x(self) -> int:
        return -(-self.shape.out_width // self.schedule.ox_tile)

    @property
    def mask_width(self) -> int:
        """Padded width, widened so the last tile's pixels past the output edge read zero masks."""
        last_window_start = (self.tiles_x - 1) * self.schedule.ox_tile * self.shape.stride[1]
        return max(self.shape.width + self.shape.pads[1] + self.shape.pads[3], last_window_start + self.window)

    @property
    def words(self) -> int:
        return -(-self.shape.in_channels // _MASK_BITS)

    @property
    def oc_tiles(self) -> int:
        return -(-self.shape.out_channels // self.schedule.oc_tile)

    @property
    def window(self) -> int:
        """Input columns one output tile reads per kernel row."""
        return (
            (self.schedule.ox_tile - 1) * self.shape.stride[1] + (self.shape.kernel[1] - 1) * self.shape.dilation[1] + 1
        )


def gated_conv2d(
    shape: GatedConvShape,
    threshold: float,
    schedule: GatedConvSchedule,
    target: Target,
    phases: str = "all",
    depth_to_space: DepthToSpace | None = None,
    residual: bool = False,
) -> tvm.tirx.PrimFunc:
    """The PrimFunc ``(x [N,C,H,W], weight packed by pack_weight, bias [M], y [N,M,Ho,Wo])``, all
    float32, ``y`` written by the kernel (destination-passing, as Relax ``call_tir`` calls it).
    ``phases`` (CPU group-1 kernel, for timing only): see :data:`PHASES`; anything but "all" leaves ``y``
    partly unwritten. Where the kernel has an output phase (:func:`has_output_phase`), one of:
    ``depth_to_space``: ``y`` is that op's output instead of the conv's; ``residual``: the PrimFunc is
    ``(x, weight, bias, r, y)`` and ``y = conv + r``, ONNX's Add of a skip connection ``r`` shaped like
    the output."""
    schedule.validate(target)
    if depth_to_space is not None and not fuses_depth_to_space(shape, target, depth_to_space):
        raise ValueError(f"{depth_to_space} cannot be fused into the kernel for {shape} on {target.kind.name}")
    if residual and (depth_to_space is not None or not has_output_phase(shape, target)):
        raise ValueError(f"a residual add cannot be fused into the kernel for {shape} on {target.kind.name}")
    threshold = float(np.float32(threshold))
    if _is_gpu(target):
        function = (_depthwise_gpu if shape.is_depthwise else _sparse_gpu)(shape, threshold, schedule)
    else:
        vector = _cpu_vector_lanes(target)
        if shape.is_depthwise:
            function = _depthwise_cpu(shape, threshold, schedule, vector)
        elif few_outputs(shape, target):
            function = _few_outputs_cpu(shape, threshold, schedule, vector)
        else:
            function = _sparse_cpu(shape, threshold, schedule, vector, phases, depth_to_space, residual)
    return function.with_attr(SHAPE_ATTR, json.dumps(dataclasses.asdict(shape)))


def shape_of(function: tvm.tirx.PrimFunc) -> GatedConvShape | None:
    """The shape of a kernel made by :func:`gated_conv2d`; None for any other PrimFunc."""
    text = function.attrs.get(SHAPE_ATTR) if function.attrs is not None else None
    return GatedConvShape(**json.loads(str(text))) if text is not None else None


def workload_key(shape: GatedConvShape, target: Target) -> str:
    """What a tuned schedule is filed under: the conv's shape on the target's kind and triple. Not
    its threshold, which only moves the sparsity the schedule was measured at."""
    where = {"target": target.kind.name, "mtriple": str(target.attrs.get("mtriple", ""))}
    return json.dumps({**where, **dataclasses.asdict(shape)}, sort_keys=True)


# ---------------------------------------------------------------------------------------------
# Pieces shared by the CPU and GPU kernels.


def _gate(value, threshold: float):
    """where(value > threshold, value, 0), the op's gate."""
    return T.Select(value > T.float32(threshold), value, T.float32(0))


def _gate_macros(
    shape: GatedConvShape, threshold: float, schedule: GatedConvSchedule, block_bits: int, lanes: int, vector: int
):
    """TIR macros for the mask (compress) and the tile accumulation, specialised to one conv.

    ``block_bits``: channels walked per accumulation (a power of two up to 64). ``lanes``: output
    channels one accumulator row holds, in vectors of ``vector`` (CPU: oc_tile and the SIMD width;
    GPU: one channel per thread)."""
    g = _Geometry(shape, schedule)
    (sh, sw), (dh, dw), (_, kw) = shape.stride, shape.dilation, shape.kernel
    pad_top, pad_left = shape.pads[0], shape.pads[1]
    channels, tile, window = shape.in_channels, schedule.ox_tile, g.window
    # A block's bits sit at bit (block * block_bits) % 64 of word (block * block_bits) // 64.
    block_mask = -1 if block_bits == _MASK_BITS else (1 << block_bits) - 1

    def feeds_tile(j):
        """Whether window column j reaches an output pixel of the tile (with stride > 1 some do not):
        a condition on the unrolled j, so it folds to a constant and skips those columns' bits."""
        return functools.reduce(tvm.tirx.Or, [j == r * sw + kx * dw for r in range(tile) for kx in range(kw)])

    @T.macro
    def or_gate_bits(word, x, n, iy, ix0, wd, pixels):
        """word[i] = bits of the active channels of word ``wd`` at input pixel (iy, ix0 + i)."""
        for i in T.vectorized(pixels):
            word[i] = T.int64(0)
        for cc in range(T.min(_MASK_BITS, channels - wd * _MASK_BITS)):
            for i in T.vectorized(pixels):
                word[i] = word[i] | T.Select(
                    x[n, wd * _MASK_BITS + cc, iy, ix0 + i] > T.float32(threshold),
                    T.shift_left(T.int64(1), T.Cast("int64", cc)),
                    T.int64(0),
                )

    @T.macro
    def accumulate(acc, bits, x, w, mask, n, oy, ox_tile_index, ky, block, mo, lane0):
        """acc[r, :lanes] += sum over active c in ``block`` of the window's pixels, x * w[.., lane0:].

        Window column j of kernel row ky feeds output pixel r of the tile through tap kx wherever
        r * sw + kx * dw == j (resolved when the unrolled loops are simplified)."""
        row: T.let = oy * sh + ky * dh
        word: T.let = block * block_bits // _MASK_BITS
        shift: T.let = T.Cast("int64", block * block_bits % _MASK_BITS)
        for j in T.unroll(window):
            if feeds_tile(j):
                column: T.let = ox_tile_index * tile * sw + j
                bits[0] = T.bitwise_and(T.shift_right(mask[n, row, column, word], shift), T.int64(block_mask))
                while bits[0] != T.int64(0):
                    c: T.let = block * block_bits + (_MASK_BITS - 1) - T.clz(bits[0] & (T.int64(0) - bits[0]))
                    bits[0] = bits[0] & (bits[0] - T.int64(1))
                    value: T.let = x[n, c, row - pad_top, column - pad_left]
                    for kx in T.unroll(kw):
                        for r in T.unroll(tile):
                            if r * sw + kx * dw == j:
                                for v in T.unroll(lanes // vector):
                                    for mi in T.vectorized(vector):
                                        m = T.meta_var(v * vector + mi)
                                        acc[r, m] = acc[r, m] + value * w[mo, ky, kx, c, lane0 + m]

    return or_gate_bits, accumulate


# ---------------------------------------------------------------------------------------------
# CPU


# Phases of the CPU sparse kernel, for timing them apart (tools/bench.py): "masks" stops after the masks,
# "accumulate" after the channels-last accumulation (no NCHW output written), "all" is the kernel.
PHASES = ("masks", "accumulate", "all")


def _sparse_cpu(
    shape: GatedConvShape,
    threshold: float,
    schedule: GatedConvSchedule,
    vector: int,
    phases: str = "all",
    depth_to_space: DepthToSpace | None = None,
    residual: bool = False,
) -> tvm.tirx.PrimFunc:
    if phases not in PHASES:
        raise ValueError(f"phases must be one of {PHASES}, not {phases!r}")
    do_accumulate, do_output = phases != "masks", phases == "all"
    g = _Geometry(shape, schedule)
    MT, R, MO = schedule.oc_tile, schedule.ox_tile, g.oc_tiles
    or_gate_bits, accumulate = _gate_macros(shape, threshold, schedule, schedule.cin_block, MT, vector)
    N, C, H, W, M = shape.batch, shape.in_channels, shape.height, shape.width, shape.out_channels
    Ho, kh = shape.out_height, shape.kernel[0]
    pad_top, pad_left = shape.pads[0], shape.pads[1]
    Hp, Wp, CW = g.mask_height, g.mask_width, g.words
    blocks = -(-C // schedule.cin_block)
    stage_width = g.tiles_x * R
    # The output: the conv's, or its pixel shuffle's (b x b output pixels per conv pixel).
    shuffle = depth_to_space or DepthToSpace(1)
    b_, out_shape = shuffle.blocksize, shuffle.output_shape(shape)
    Cs, Ws = out_shape[1], out_shape[3]
    W_main, Ws_main = W // _VECTOR * _VECTOR, Ws // _VECTOR * _VECTOR  # the rest: scalar tails

    @T.macro
    def output(y, r, stage, nr, c, i, X):
        """Output (c, row i of the shuffle block, column X) of row nr: conv pixel X // b, plus the
        residual's element where there is one (after the conv's sum, as ONNX's Add)."""
        row: T.let = nr % Ho * b_ + i
        if residual:
            y[nr // Ho, c, row, X] = stage[X // b_, shuffle.source_channel(Cs, c, i, X % b_)] + r[nr // Ho, c, row, X]
        else:
            y[nr // Ho, c, row, X] = stage[X // b_, shuffle.source_channel(Cs, c, i, X % b_)]

    @T.macro
    def kernel(x, w, b, r, y):
        """The kernel's body; ``r`` (with ``residual``) is added to the output."""
        with T.sblock("root"):
            mask = T.alloc_buffer((N, Hp, Wp, CW), "int64")
            # Zero the padding (and everything: the interior is overwritten next).
            for nr in T.parallel(N * Hp):
                for px, wd in T.grid(Wp, CW):
                    mask[nr // Hp, nr % Hp, px, wd] = T.int64(0)
            # Compress: channels outer, pixels inner (vectorized), the word accumulated in registers.
            for nr in T.parallel(N * H):
                word = T.decl_buffer((_VECTOR,), "int64", scope="global")
                for wd, ixo in T.grid(CW, W_main // _VECTOR):
                    or_gate_bits(word, x, nr // H, nr % H, ixo * _VECTOR, wd, _VECTOR)
                    for i in T.vectorized(_VECTOR):
                        mask[nr // H, nr % H + pad_top, ixo * _VECTOR + i + pad_left, wd] = word[i]
                for wd, ix in T.grid(CW, W - W_main):
                    or_gate_bits(word, x, nr // H, nr % H, W_main + ix, wd, 1)
                    mask[nr // H, nr % H + pad_top, W_main + ix + pad_left, wd] = word[0]
            if do_accumulate:
                # Accumulate one output row at a time, channels-last in `stage`; kernel rows and input
                # channel blocks outermost so that their weights stay in the L1 cache across the row.
                for nr in T.parallel(N * Ho):
                    stage = T.decl_buffer((stage_width, MO * MT), "float32", scope="global")
                    for p, mv in T.grid(stage_width, MO * MT // vector):
                        for mi in T.vectorized(vector):
                            stage[p, mv * vector + mi] = b[T.min(mv * vector + mi, M - 1)]
                    for ky, block, mo, tx in T.grid(kh, blocks, MO, g.tiles_x):
                        # Register tile. "local": TVM moves a "global" buffer of 1 KiB or more to the
                        # heap, out of LLVM's registers; a local one stays an alloca whatever its size.
                        acc = T.decl_buffer((R, MT), "float32", scope="local")
                        bits = T.decl_buffer((1,), "int64", scope="global")
                        for r, mv in T.grid(R, MT // vector):
                            for mi in T.vectorized(vector):
                                acc[r, mv * vector + mi] = stage[tx * R + r, mo * MT + mv * vector + mi]
                        accumulate(acc, bits, x, w, mask, nr // Ho, nr % Ho, tx, ky, block, mo, 0)
                        for r, mv in T.grid(R, MT // vector):
                            for mi in T.vectorized(vector):
                                stage[tx * R + r, mo * MT + mv * vector + mi] = acc[r, mv * vector + mi]
                    if not do_output:
                        y[nr // Ho, 0, nr % Ho, 0] = stage[0, 0]  # keeps the accumulation live
                    if do_output:
                        # Channels-last row -> NCHW (b output rows with a pixel shuffle) by 16-pixel column
                        # blocks, each block's channels in turn, so that the strided reads stay within a
                        # few KiB of the stage. Output column X comes from conv pixel X // b.
                        for oxo, c, i in T.grid(Ws_main // _VECTOR, Cs, b_):
                            for xi in T.vectorized(_VECTOR):
                                output(y, r, stage, nr, c, i, oxo * _VECTOR + xi)
                        for c, i, X in T.grid(Cs, b_, Ws - Ws_main):
                            output(y, r, stage, nr, c, i, Ws_main + X)

    if residual:

        @T.prim_func(s_tir=True)
        def gated_conv(
            x: T.Buffer((N, C, H, W), "float32"),
            w: T.Buffer(packed_weight_shape(shape, schedule), "float32"),
            b: T.Buffer((M,), "float32"),
            r: T.Buffer(out_shape, "float32"),
            y: T.Buffer(out_shape, "float32"),
        ):
            T.func_attr({"tirx.noalias": True})
            kernel(x, w, b, r, y)

    else:

        @T.prim_func(s_tir=True)
        def gated_conv(
            x: T.Buffer((N, C, H, W), "float32"),
            w: T.Buffer(packed_weight_shape(shape, schedule), "float32"),
            b: T.Buffer((M,), "float32"),
            y: T.Buffer(out_shape, "float32"),
        ):
            T.func_attr({"tirx.noalias": True})
            kernel(x, w, b, y, y)

    return gated_conv


@dataclass(frozen=True)
class DepthToSpace:
    """An ONNX DepthToSpace that alone reads a GatedConv's output, for the kernel to write instead.

    Output ``[N, M / b^2, Ho * b, Wo * b]``; channel ``c`` at sub-pixel ``(i, j)`` comes from conv
    channel ``(i * b + j) * M / b^2 + c`` ("DCR", ONNX's default) or ``(c * b + i) * b + j`` ("CRD")."""

    blocksize: int
    mode: str = "DCR"

    def output_shape(self, shape: GatedConvShape) -> tuple[int, int, int, int]:
        b = self.blocksize
        return (shape.batch, shape.out_channels // (b * b), shape.out_height * b, shape.out_width * b)

    def source_channel(self, channels: int, c, i, j):
        """The conv channel that output channel ``c`` of ``channels`` takes at sub-pixel (i, j)."""
        b = self.blocksize
        return (i * b + j) * channels + c if self.mode == "DCR" else (c * b + i) * b + j


def has_output_phase(shape: GatedConvShape, target: Target) -> bool:
    """Whether the kernel for ``shape`` writes its output in a pass of its own, from the channels-last
    row it staged: the CPU sparse kernel does. That pass can write the output shuffled
    (``depth_to_space``) or add a skip connection to it (``residual``), sparing the op after the conv a
    read and a write of the whole feature."""
    return not _is_gpu(target) and not shape.is_depthwise and not few_outputs(shape, target)


def fuses_depth_to_space(shape: GatedConvShape, target: Target, depth_to_space: DepthToSpace) -> bool:
    """Whether the kernel for ``shape`` can write ``depth_to_space``'s output instead of the conv's."""
    b = depth_to_space.blocksize
    return (
        has_output_phase(shape, target)
        and depth_to_space.mode in ("DCR", "CRD")
        and b >= 1
        and shape.out_channels % (b * b) == 0
    )


def few_outputs(shape: GatedConvShape, target: Target) -> bool:
    """Whether the CPU kernel for ``shape`` vectorizes over output pixels instead of skipping inputs.

    The sparse kernel spends a walked bit (find it, load the value, broadcast it) on one vector
    multiply-add per tap, of which only ``out_channels`` lanes count. With at most half a vector of
    output channels (a net's RGB output conv) the walk costs more than the dense multiply-adds of the
    gated input it saves: a 3x3 conv 32 -> 3 at 512x512 and 89% sparsity took 10 ms sparse on an
    AVX-512 host, where a dense pass over its gated input does 15 lanes of useful work in 16."""
    return not _is_gpu(target) and shape.group == 1 and 2 * shape.out_channels <= _cpu_vector_lanes(target)


def _few_outputs_cpu(
    shape: GatedConvShape, threshold: float, schedule: GatedConvSchedule, vector: int
) -> tvm.tirx.PrimFunc:
    """Gated dense conv for :func:`few_outputs`: per output row, the kernel rows it reads gated into a
    zero-padded band, then every (channel, tap) multiply-added into ``ox_tile`` vectors of output
    pixels for all output channels at once. Reads the sparse kernel's packed weights (one output tile,
    since ``oc_tile >= out_channels``)."""
    N, C, H, W, M = shape.batch, shape.in_channels, shape.height, shape.width, shape.out_channels
    Ho, Wo, (kh, kw), (sh, sw), (dh, dw) = shape.out_height, shape.out_width, shape.kernel, shape.stride, shape.dilation
    pad_top, pad_left = shape.pads[0], shape.pads[1]
    V = schedule.ox_tile  # vectors of output pixels per tile
    tile = V * vector
    row_width = _round_up(Wo, tile)
    # Wide enough that the last tile's reads stay inside the band.
    Wp = max(W + pad_left + shape.pads[3], (row_width - 1) * sw + (kw - 1) * dw + 1)
    W_main, Wo_main = W // vector * vector, Wo // vector * vector

    @T.prim_func(s_tir=True)
    def gated_conv(
        x: T.Buffer((N, C, H, W), "float32"),
        w: T.Buffer(packed_weight_shape(shape, schedule), "float32"),
        b: T.Buffer((M,), "float32"),
        y: T.Buffer((N, M, Ho, Wo), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        with T.sblock("root"):
            for nr in T.parallel(N * Ho):
                band = T.decl_buffer((C, kh, Wp), "float32", scope="global")
                row = T.decl_buffer((M, row_width), "float32", scope="global")
                for c, ky in T.grid(C, kh):
                    iy: T.let = nr % Ho * sh + ky * dh - pad_top
                    for px in T.vectorized(Wp):
                        band[c, ky, px] = T.float32(0)
                    if 0 <= iy and iy < H:
                        for ixo in range(W_main // vector):
                            for i in T.vectorized(vector):
                                ix = T.meta_var(ixo * vector + i)
                                band[c, ky, ix + pad_left] = _gate(x[nr // Ho, c, iy, ix], threshold)
                        for ix in range(W - W_main):
                            band[c, ky, W_main + ix + pad_left] = _gate(x[nr // Ho, c, iy, W_main + ix], threshold)
                for t in range(row_width // tile):
                    acc = T.decl_buffer((M, tile), "float32", scope="local")
                    for m, i in T.grid(M, tile):
                        acc[m, i] = b[m]
                    for c, ky, kx in T.grid(C, kh, kw):
                        for m, v in T.grid(M, V):
                            for i in T.vectorized(vector):
                                ox = T.meta_var(t * tile + v * vector + i)
                                acc[m, v * vector + i] = (
                                    acc[m, v * vector + i] + w[0, ky, kx, c, m] * band[c, ky, ox * sw + kx * dw]
                                )
                    for m, i in T.grid(M, tile):
                        row[m, t * tile + i] = acc[m, i]
                for m, oxo in T.grid(M, Wo_main // vector):
                    for i in T.vectorized(vector):
                        y[nr // Ho, m, nr % Ho, oxo * vector + i] = row[m, oxo * vector + i]
                for m, ox in T.grid(M, Wo - Wo_main):
                    y[nr // Ho, m, nr % Ho, Wo_main + ox] = row[m, Wo_main + ox]

    return gated_conv


def _depthwise_cpu(
    shape: GatedConvShape, threshold: float, schedule: GatedConvSchedule, vector: int
) -> tvm.tirx.PrimFunc:
    """Per channel plane: gate into a zero-padded copy, then every tap vectorized over output pixels."""
    N, C, H, W = shape.batch, shape.in_channels, shape.height, shape.width
    Ho, Wo, (kh, kw), (sh, sw), (dh, dw) = shape.out_height, shape.out_width, shape.kernel, shape.stride, shape.dilation
    pad_top, pad_left = shape.pads[0], shape.pads[1]
    row_width = _round_up(Wo, vector)
    # Wide enough that the last vector's reads stay inside the plane.
    Hp, Wp = (
        shape.height + pad_top + shape.pads[2],
        max(W + pad_left + shape.pads[3], (row_width - 1) * sw + (kw - 1) * dw + 1),
    )
    W_main = W // vector * vector

    @T.prim_func(s_tir=True)
    def gated_conv(
        x: T.Buffer((N, C, H, W), "float32"),
        w: T.Buffer((kh, kw, C), "float32"),
        b: T.Buffer((C,), "float32"),
        y: T.Buffer((N, C, Ho, Wo), "float32"),
    ):
        T.func_attr({"tirx.noalias": True})
        with T.sblock("root"):
            for nc in T.parallel(N * C):
                plane = T.decl_buffer((Hp, Wp), "float32", scope="global")
                row = T.decl_buffer((row_width,), "float32", scope="global")
                for py, px in T.grid(Hp, Wp):
                    plane[py, px] = T.float32(0)
                for iy, ixo in T.grid(H, W_main // vector):
                    for i in T.vectorized(vector):
                        ix = T.meta_var(ixo * vector + i)
                        plane[iy + pad_top, ix + pad_left] = _gate(x[nc // C, nc % C, iy, ix], threshold)
                for iy, ix in T.grid(H, W - W_main):
                    plane[iy + pad_top, W_main + ix + pad_left] = _gate(x[nc // C, nc % C, iy, W_main + ix], threshold)
                for oy in range(Ho):
                    for oxo in range(row_width // vector):
                        for i in T.vectorized(vector):
                            row[oxo * vector + i] = b[nc % C]
                        for ky, kx in T.grid(kh, kw):
                            for i in T.vectorized(vector):
                                ox = T.meta_var(oxo * vector + i)
                                row[ox] = row[ox] + w[ky, kx, nc % C] * plane[oy * sh + ky * dh, ox * sw + kx * dw]
                    for ox in range(Wo):
                        y[nc // C, nc % C, oy, ox] = row[ox]

    return gated_conv


# ---------------------------------------------------------------------------------------------
# GPU


def _sparse_gpu(shape: GatedConvShape, threshold: float, schedule: GatedConvSchedule) -> tvm.tirx.PrimFunc:
    g = _Geometry(shape, schedule)
    or_gate_bits, accumulate = _gate_macros(shape, threshold, schedule, _MASK_BITS, 1, 1)
    N, C, H, W, M = shape.batch, shape.in_channels, shape.height, shape.width, shape.out_channels
    Ho, Wo, kh = shape.out_height, shape.out_width, shape.kernel[0]
    pad_top, pad_left = shape.pads[0], shape.pads[1]
    MT, R, MO = schedule.oc_tile, schedule.ox_tile, g.oc_tiles
    Hp, Wp, CW = g.mask_height, g.mask_width, g.words
    threads = schedule.gpu_threads
    mask_words = N * Hp * Wp * CW
    tiles = N * Ho * g.tiles_x * MO
    tiles_per_block = threads // MT

    @T.prim_func(s_tir=True)
    def gated_conv(
        x: T.Buffer((N, C, H, W), "float32"),
        w: T.Buffer(packed_weight_shape(shape, schedule), "float32"),
        b: T.Buffer((M,), "float32"),
        y: T.Buffer((N, M, Ho, Wo), "float32"),
    ):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        with T.sblock("root"):
            mask = T.alloc_buffer((N, Hp, Wp, CW), "int64")
            # Kernel 1, compress: one thread per (padded pixel, mask word); padding gets no bits.
            for bx in T.thread_binding(-(-mask_words // threads), thread="blockIdx.x"):
                for tx in T.thread_binding(threads, thread="threadIdx.x"):
                    word = T.decl_buffer((1,), "int64", scope="local")
                    k: T.let = bx * threads + tx
                    n: T.let = k // (Hp * Wp * CW)
                    py: T.let = k // (Wp * CW) % Hp
                    px: T.let = k // CW % Wp
                    wd: T.let = k % CW
                    if k < mask_words:
                        word[0] = T.int64(0)
                        if pad_top <= py and py < pad_top + H and pad_left <= px and px < pad_left + W:
                            or_gate_bits(word, x, n, py - pad_top, px - pad_left, wd, 1)
                        mask[n, py, px, wd] = word[0]
            # Kernel 2, accumulate: a thread per output channel of a tile (threadIdx.x), tiles of
            # one block side by side (threadIdx.y); threads of a tile share masks and inputs.
            for bx in T.thread_binding(-(-tiles // tiles_per_block), thread="blockIdx.x"):
                for ty in T.thread_binding(tiles_per_block, thread="threadIdx.y"):
                    for lane in T.thread_binding(MT, thread="threadIdx.x"):
                        acc = T.decl_buffer((R, 1), "float32", scope="local")
                        bits = T.decl_buffer((1,), "int64", scope="local")
                        t: T.let = bx * tiles_per_block + ty
                        mo: T.let = t % MO
                        tile_x: T.let = t // MO % g.tiles_x
                        oy: T.let = t // (MO * g.tiles_x) % Ho
                        n: T.let = t // (MO * g.tiles_x * Ho)
                        m: T.let = mo * MT + lane
                        if t < tiles:
                            for r in T.unroll(R):
                                acc[r, 0] = b[T.min(m, M - 1)]
                            for ky, wd in T.grid(kh, CW):
                                accumulate(acc, bits, x, w, mask, n, oy, tile_x, ky, wd, mo, lane)
                            for r in T.unroll(R):
                                if m < M and tile_x * R + r < Wo:
                                    y[n, m, oy, tile_x * R + r] = acc[r, 0]

    return gated_conv


def _depthwise_gpu(shape: GatedConvShape, threshold: float, schedule: GatedConvSchedule) -> tvm.tirx.PrimFunc:
    """One thread per output element, taps outside the input skipped."""
    N, C, H, W = shape.batch, shape.in_channels, shape.height, shape.width
    Ho, Wo, (kh, kw), (sh, sw), (dh, dw) = shape.out_height, shape.out_width, shape.kernel, shape.stride, shape.dilation
    pad_top, pad_left = shape.pads[0], shape.pads[1]
    threads, outputs = schedule.gpu_threads, N * C * Ho * Wo

    @T.prim_func(s_tir=True)
    def gated_conv(
        x: T.Buffer((N, C, H, W), "float32"),
        w: T.Buffer((kh, kw, C), "float32"),
        b: T.Buffer((C,), "float32"),
        y: T.Buffer((N, C, Ho, Wo), "float32"),
    ):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        with T.sblock("root"):
            for bx in T.thread_binding(-(-outputs // threads), thread="blockIdx.x"):
                for tx in T.thread_binding(threads, thread="threadIdx.x"):
                    acc = T.decl_buffer((1,), "float32", scope="local")
                    k: T.let = bx * threads + tx
                    n: T.let = k // (C * Ho * Wo)
                    c: T.let = k // (Ho * Wo) % C
                    oy: T.let = k // Wo % Ho
                    ox: T.let = k % Wo
                    if k < outputs:
                        acc[0] = b[c]
                        for ky, kx in T.grid(kh, kw):
                            iy: T.let = oy * sh + ky * dh - pad_top
                            ix: T.let = ox * sw + kx * dw - pad_left
                            if 0 <= iy and iy < H and 0 <= ix and ix < W:
                                acc[0] = acc[0] + w[ky, kx, c] * _gate(x[n, c, iy, ix], threshold)
                        y[n, c, oy, ox] = acc[0]

    return gated_conv
