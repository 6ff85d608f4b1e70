"""Closed-form shape arithmetic for convolutions.

Pure integer arithmetic on already-normalised arguments (tuples, one entry per
spatial axis).  Nothing here imports JAX: layers read their ``out_size`` from
these functions at construction, the functional ops read the resolved pads,
and the summary tools read the receptive field.  Every formula in the package
lives here once.

Conventions, per spatial axis:

* ``n`` is an input length, ``k`` a kernel length, ``s`` a stride, ``d`` a
  kernel (rhs) dilation, ``ld`` an input (lhs) dilation.
* The *span* of a kernel is ``(k - 1) * d + 1``: the number of input positions
  one output position reads.
* Pads are ``(low, high)`` pairs counted in positions of the (lhs-dilated)
  input.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from math import gcd
from typing import List, Sequence, Tuple, Union

Pads = Tuple[Tuple[int, int], ...]
#: A normalised padding: one upper-case string for every axis, or one entry per axis, each an
#: upper-case string or a ``(low, high)`` pair (``('CAUSAL', 'SAME', (1, 0))``).
Padding = Union[str, Tuple[Union[str, Tuple[int, int]], ...]]

#: The padding strings understood everywhere (after upper-casing).
PADDING_STRINGS = ('SAME', 'SAME_LOWER', 'VALID', 'CAUSAL')
#: The padding modes understood everywhere (after upper-casing).
PADDING_MODES = ('ZEROS', 'REFLECT', 'REPLICATE', 'CIRCULAR')

__all__ = [
    'PADDING_STRINGS', 'PADDING_MODES', 'ConvGeometry',
    'kernel_span', 'dilated_length', 'per_axis', 'resolve_pads', 'conv_out_length',
    'transpose_out_length', 'transpose_lax_pads', 'lax_conv_transpose_pads', 'adjoint_output_padding',
    'conv_geometry', 'conv_transpose_geometry',
    'ReceptiveField', 'receptive_field_step', 'axis_connections', 'connections',
    'transpose_as_conv', 'adjoint_geometry', 'Phase', 'axis_phases', 'axis_window_counts',
]


def kernel_span(k: int, d: int = 1) -> int:
    """Input positions covered by a kernel of length ``k`` dilated by ``d``."""
    return (k - 1) * d + 1


def dilated_length(n: int, ld: int = 1) -> int:
    """Length of an input of length ``n`` after lhs dilation ``ld``."""
    return (n - 1) * ld + 1


def _string_pads(padding: str, n: int, k: int, s: int, d: int) -> Tuple[int, int]:
    """The ``(low, high)`` pads a padding string resolves to on one axis.

    ``n`` is the (dilated) input length.  SAME gives ``ceil(n / s)`` outputs,
    with the odd extra pad at the end (SAME_LOWER: at the start); CAUSAL puts
    all ``span - 1`` pads before the axis, whatever the stride.
    """
    span = kernel_span(k, d)
    if padding == 'VALID':
        return 0, 0
    if padding == 'CAUSAL':
        return span - 1, 0
    out = -(-n // s)
    total = max((out - 1) * s + span - n, 0)
    small, large = total // 2, total - total // 2
    if padding == 'SAME':
        return small, large
    if padding == 'SAME_LOWER':
        return large, small
    raise ValueError(f"padding must be one of {PADDING_STRINGS}, got {padding!r}")


def per_axis(padding: Padding, nd: int) -> Tuple[Union[str, Tuple[int, int]], ...]:
    """The padding entry of each of ``nd`` axes: a string, or a ``(low, high)`` pair."""
    return (padding,) * nd if isinstance(padding, str) else tuple(padding)


def resolve_pads(
    padding: Padding,
    in_spatial: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    rhs_dilation: Sequence[int],
    lhs_dilation: Sequence[int] | None = None,
) -> Pads:
    """Explicit ``(low, high)`` pads for every spatial axis.

    ``padding`` is an upper-case padding string (for every axis) or one entry
    per axis, each a string or a pair (pairs are returned unchanged).  With
    ``lhs_dilation`` a string is resolved against the dilated input length.
    """
    lhs_dilation = lhs_dilation or (1,) * len(in_spatial)
    return tuple(
        _string_pads(p, dilated_length(n, ld), k, s, d) if isinstance(p, str) else (int(p[0]), int(p[1]))
        for p, n, k, s, d, ld in zip(per_axis(padding, len(in_spatial)), in_spatial, kernel_size, stride,
                                     rhs_dilation, lhs_dilation)
    )


def conv_out_length(n: int, k: int, s: int, lo: int, hi: int, ld: int = 1, d: int = 1) -> int:
    """Output length of a convolution along one axis (may be < 1: not checked)."""
    return (dilated_length(n, ld) + lo + hi - kernel_span(k, d)) // s + 1


def axis_window_counts(n: int, k: int, s: int, lo: int, out: int) -> Tuple[int, ...]:
    """The real input positions in each of the ``out`` windows of one axis (a pooling's divisors).

    Window ``o`` covers positions ``o * s ... o * s + k - 1`` of the padded input, of which
    ``lo ... lo + n - 1`` hold the input (no dilation): ``k`` for a window clear of the pads.
    """
    return tuple(max(0, min(o * s + k, lo + n) - max(o * s, lo)) for o in range(out))


def transpose_out_length(
    m: int, k: int, s: int, d: int, padding: Union[str, Tuple[int, int]], output_padding: int | None
) -> int:
    """Output length of a transposed convolution along one axis.

    With an ``output_padding`` it is the smallest length the padding allows
    plus ``output_padding``: for explicit ``(lo, hi)`` pads (VALID is
    ``(0, 0)``) PyTorch's ``(m - 1) * s + span - lo - hi + output_padding``; for
    SAME, SAME_LOWER and CAUSAL ``(m - 1) * s + 1 + output_padding`` (the
    smallest length a stride-``s`` SAME/CAUSAL convolution maps to ``m``
    outputs; Keras's and PyTorch's lengths for odd kernels).  With None, the
    explicit-pad length with ``output_padding`` 0, and ``m * s`` for the strings
    (the largest length mapped to ``m``: ``jax.lax.conv_transpose``'s and
    brainstate's SAME).
    """
    if isinstance(padding, str) and padding != 'VALID':
        return m * s if output_padding is None else (m - 1) * s + 1 + output_padding
    lo, hi = (0, 0) if isinstance(padding, str) else padding
    return (m - 1) * s + kernel_span(k, d) - lo - hi + (output_padding or 0)


def lax_conv_transpose_pads(span: int, s: int, padding: str) -> Tuple[int, int]:
    """The pads of the stride-dilated input that ``jax.lax.conv_transpose`` (and
    brainstate's ConvTranspose) use for 'SAME' or 'VALID', on one axis with kernel span
    ``span`` and stride ``s`` (brainconv.summary reads brainstate's layers with it)."""
    if padding == 'SAME':
        total = span + s - 2
        low = span - 1 if s > span - 1 else -(-total // 2)
    elif padding == 'VALID':
        total = span + s - 2 + max(span - s, 0)
        low = span - 1
    else:
        raise ValueError(f"padding {padding!r}")
    return low, total - low


def transpose_lax_pads(m: int, n: int, k: int, s: int, d: int, lo: int, hi: int) -> Tuple[int, int]:
    """Pads of the lhs-dilated, flipped-kernel convolution that computes a transpose.

    The transposed convolution maps ``m`` inputs to ``n`` outputs as the
    adjoint of the forward convolution with pads ``(lo, hi)`` on an input of
    length ``n``.  The stride-``s`` lhs-dilated input has ``(m - 1) * s + 1``
    positions; these pads (possibly negative, which crops) make a stride-1
    convolution of span ``(k - 1) * d + 1`` return exactly ``n`` outputs.
    """
    low = kernel_span(k, d) - 1 - lo
    return low, n - (m - 1) * s - 1 + lo


@dataclass(frozen=True)
class ConvGeometry:
    """Every shape fact of one (transposed) convolution, resolved once.

    ``pads`` are always the pads of the *forward* convolution whose input has
    ``in_spatial`` positions (for a Conv) or ``out_spatial`` positions (for a
    ConvTranspose, which is that convolution's adjoint).  A ConvTranspose's
    ``output_padding`` is explicit: what ``out_spatial`` adds to the smallest
    length the padding allows (:func:`transpose_out_length`).
    """

    in_spatial: Tuple[int, ...]
    out_spatial: Tuple[int, ...]
    kernel_size: Tuple[int, ...]
    stride: Tuple[int, ...]
    pads: Pads
    lhs_dilation: Tuple[int, ...]
    rhs_dilation: Tuple[int, ...]
    transposed: bool = False
    output_padding: Tuple[int, ...] = ()

    @property
    def num_spatial_dims(self) -> int:
        return len(self.kernel_size)

    def lax_pads(self) -> Pads:
        """Pads to hand ``lax.conv_general_dilated`` for a zero-padded op."""
        if not self.transposed:
            return self.pads
        return tuple(
            transpose_lax_pads(m, n, k, s, d, lo, hi)
            for m, n, k, s, d, (lo, hi) in zip(
                self.in_spatial, self.out_spatial, self.kernel_size, self.stride,
                self.rhs_dilation, self.pads)
        )


def _check_positive_output(in_spatial, kernel_size, rhs_dilation, pads, lhs_dilation):
    for axis, (n, k, d, (lo, hi), ld) in enumerate(
            zip(in_spatial, kernel_size, rhs_dilation, pads, lhs_dilation)):
        span = kernel_span(k, d)
        padded = dilated_length(n, ld) + lo + hi
        if padded < span:
            raise ValueError(
                f"kernel {k} with rhs_dilation {d} spans {span} but the padded input "
                f"has {padded} on axis {axis} (input {n}, lhs_dilation {ld}, pads {(lo, hi)}): "
                f"the output would be empty")


def conv_geometry(
    in_spatial: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Padding,
    lhs_dilation: Sequence[int],
    rhs_dilation: Sequence[int],
) -> ConvGeometry:
    """Resolve a convolution's pads and output size; ValueError if it is empty."""
    pads = resolve_pads(padding, in_spatial, kernel_size, stride, rhs_dilation, lhs_dilation)
    _check_positive_output(in_spatial, kernel_size, rhs_dilation, pads, lhs_dilation)
    out = tuple(
        conv_out_length(n, k, s, lo, hi, ld, d)
        for n, k, s, (lo, hi), ld, d in zip(in_spatial, kernel_size, stride, pads, lhs_dilation, rhs_dilation)
    )
    return ConvGeometry(tuple(in_spatial), out, tuple(kernel_size), tuple(stride), pads,
                        tuple(lhs_dilation), tuple(rhs_dilation))


def conv_transpose_geometry(
    in_spatial: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Padding,
    rhs_dilation: Sequence[int],
    output_padding: Sequence[int] | None,
) -> ConvGeometry:
    """Resolve a transposed convolution's output size and its forward pads.

    ``output_padding`` None gives every axis :func:`transpose_out_length`'s
    default.  The geometry's ``output_padding`` is the explicit one that gives
    the same lengths (what the output adds to the smallest length the
    padding allows).  ValueError if an output length would be below 1.
    """
    nd = len(in_spatial)
    entries = per_axis(padding, nd)
    ops = (None,) * nd if output_padding is None else tuple(output_padding)
    out = tuple(
        transpose_out_length(m, k, s, d, p, op)
        for m, k, s, d, p, op in zip(in_spatial, kernel_size, stride, rhs_dilation, entries, ops)
    )
    for axis, (m, n) in enumerate(zip(in_spatial, out)):
        if n < 1:
            raise ValueError(
                f"the transposed convolution would have output length {n} on axis {axis} "
                f"(input {m}, kernel {kernel_size[axis]}, stride {stride[axis]}, "
                f"rhs_dilation {rhs_dilation[axis]}, padding {entries[axis]!r}, "
                f"output_padding {ops[axis]}); it must be at least 1")
    explicit = tuple(n - transpose_out_length(m, k, s, d, p, 0)
                     for n, m, k, s, d, p in zip(out, in_spatial, kernel_size, stride, rhs_dilation, entries))
    pads = resolve_pads(padding, out, kernel_size, stride, rhs_dilation)
    return ConvGeometry(tuple(in_spatial), out, tuple(kernel_size), tuple(stride), pads,
                        (1,) * nd, tuple(rhs_dilation), transposed=True, output_padding=explicit)


def adjoint_output_padding(geometry: ConvGeometry) -> Tuple[int, ...]:
    """The output_padding that makes a transposed convolution with this
    convolution's explicit pads return its input length: the remainder
    ``(n + lo + hi - span) mod s`` that the stride dropped."""
    return tuple(
        (dilated_length(n, ld) + lo + hi - kernel_span(k, d)) % s
        for n, k, s, d, ld, (lo, hi) in zip(geometry.in_spatial, geometry.kernel_size, geometry.stride,
                                           geometry.rhs_dilation, geometry.lhs_dilation, geometry.pads))


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of one output position with respect to the network input.

    ``size``: input positions an output position depends on; ``jump``: input
    distance between neighbouring output positions; ``start``: input
    coordinate of the centre of the first output position's field.  Fractions
    appear after lhs dilation or transposed convolution.
    """

    size: Tuple[Fraction, ...]
    jump: Tuple[Fraction, ...]
    start: Tuple[Fraction, ...]

    @classmethod
    def identity(cls, num_spatial_dims: int) -> ReceptiveField:
        one, zero = Fraction(1), Fraction(0)
        return cls((one,) * num_spatial_dims, (one,) * num_spatial_dims, (zero,) * num_spatial_dims)


def receptive_field_step(rf: ReceptiveField, geometry: ConvGeometry) -> ReceptiveField:
    """The standard recurrence ``r' = r + (span - 1) j``, ``j' = j s``,
    ``start' = start + ((span - 1) / 2 - low) j``, applied to one layer.

    A layer with lhs dilation ``ld`` first divides the jump by ``ld``; a
    transposed convolution is the stride-1 convolution over its stride-dilated
    input, with the pads :func:`transpose_lax_pads` gives.
    """
    if geometry.transposed:
        ld, strides, pads = geometry.stride, (1,) * geometry.num_spatial_dims, geometry.lax_pads()
    else:
        ld, strides, pads = geometry.lhs_dilation, geometry.stride, geometry.pads
    size, jump, start = [], [], []
    for r, j, st, k, d, l_dil, s, (lo, _) in zip(
            rf.size, rf.jump, rf.start, geometry.kernel_size, geometry.rhs_dilation, ld, strides, pads):
        j = j / l_dil
        span = kernel_span(k, d)
        size.append(r + (span - 1) * j)
        start.append(st + (Fraction(span - 1, 2) - lo) * j)
        jump.append(j * s)
    return ReceptiveField(tuple(size), tuple(jump), tuple(start))


def axis_connections(n: int, k: int, s: int, d: int, lo: int, out: int, ld: int = 1) -> int:
    """The ``(output, tap)`` pairs of one axis whose tap reads a real input position.

    Output ``o`` reads, with tap ``t``, position ``q = o * s + t * d - lo`` of the
    lhs-dilated input, which holds input ``q / ld`` when ``0 <= q <= (n - 1) * ld``
    and ``ld`` divides ``q`` (otherwise a pad or an inserted zero).  For each
    tap the outputs that qualify are the ``o`` in an interval that are
    congruent to one residue modulo ``ld / gcd(s, ld)`` (none when
    ``gcd(s, ld)`` does not divide ``lo - t * d``): counted in closed form,
    one term per tap.
    """
    last = (n - 1) * ld  # the last real position of the dilated input
    g = gcd(s, ld)
    period = ld // g
    inverse = pow(s // g, -1, period) if period > 1 else 0
    total = 0
    for t in range(k):
        c = lo - t * d  # o reads dilated position o * s - c
        if c % g:
            continue
        first, final = max(0, -(-c // s)), min(out - 1, (c + last) // s)
        if final < first:
            continue
        r = (c // g) * inverse % period  # o * s - c is a multiple of ld exactly when o = r (mod period)
        total += (final - r) // period - (first - 1 - r) // period
    return total


def connections(geometry: ConvGeometry, padded: bool = False) -> int:
    """Spatial synaptic connections of a (transposed) convolution: the
    ``(input position, kernel tap, output position)`` triples, over all axes, in
    which a real input position feeds an output.

    Taps that read a pad or an lhs dilation's inserted zero make none, so for a
    convolution this is at most ``prod(out_spatial) * prod(kernel_size)`` (what
    MACs count) and equals it for a 'VALID' one without lhs dilation.  A
    transposed convolution makes the same triples as the forward convolution it
    is the adjoint of (each of its inputs, each tap, the output it lands on;
    products that land in cropped pads make none).  With ``padded`` the pads
    hold copies of input positions (padding modes REFLECT, REPLICATE, CIRCULAR)
    and count as real.  Times ``in_channels * out_channels / groups``, this is
    the number of synapses the layer's inputs drive per example; the count
    factorises over the axes (:func:`axis_connections`).
    """
    g = geometry
    # The forward convolution: its input (real positions) and output lengths.
    ins, outs = (g.out_spatial, g.in_spatial) if g.transposed else (g.in_spatial, g.out_spatial)
    total = 1
    for n, m, k, s, d, ld, (lo, hi) in zip(ins, outs, g.kernel_size, g.stride, g.rhs_dilation,
                                          g.lhs_dilation, g.pads):
        if padded:
            if ld != 1:
                raise ValueError(f"padded connections need lhs_dilation 1 (pads are copies of input positions "
                                 f"only for padding modes that exclude it), got {g.lhs_dilation}")
            n, lo = n + lo + hi, 0
        total *= axis_connections(n, k, s, d, lo, m, ld)
    return total


def transpose_as_conv(geometry: ConvGeometry, wrap: bool = False) -> ConvGeometry:
    """The lhs-dilated, flipped-kernel convolution that computes a transposed one.

    Its input is the transposed convolution's input, its lhs dilation the
    stride, its window stride 1 and its pads :meth:`ConvGeometry.lax_pads`.
    With ``wrap`` (CIRCULAR mode) it maps onto the *padded* output length
    ``n + lo + hi`` instead, with the pads of an unpadded forward convolution;
    the caller folds the pads back.
    """
    g = geometry
    nd = g.num_spatial_dims
    if not wrap:
        out, pads = g.out_spatial, g.lax_pads()
    else:
        out = tuple(n + lo + hi for n, (lo, hi) in zip(g.out_spatial, g.pads))
        pads = tuple(transpose_lax_pads(m, n, k, s, d, 0, 0)
                     for m, n, k, s, d in zip(g.in_spatial, out, g.kernel_size, g.stride, g.rhs_dilation))
    return ConvGeometry(g.in_spatial, out, g.kernel_size, (1,) * nd, pads, g.stride, g.rhs_dilation)


def adjoint_geometry(geometry: ConvGeometry) -> ConvGeometry:
    """The convolution that computes the input gradient of ``geometry``.

    ``geometry`` must be a non-transposed convolution (an lhs-dilated one is
    fine).  Its adjoint reads the output gradient lhs-dilated by the stride,
    with the kernel flipped, window stride equal to the lhs dilation, low pad
    ``span - 1 - lo`` and the high pad that returns exactly ``in_spatial``
    positions; without lhs dilation these are :func:`transpose_lax_pads`.
    """
    g = geometry
    if g.transposed:
        raise ValueError(f"adjoint_geometry needs a non-transposed convolution, got {g}")
    pads = []
    for m, n, k, s, d, ld, (lo, _) in zip(g.out_spatial, g.in_spatial, g.kernel_size, g.stride, g.rhs_dilation,
                                         g.lhs_dilation, g.pads):
        low = kernel_span(k, d) - 1 - lo
        pads.append((low, (n - 1) * ld + kernel_span(k, d) - dilated_length(m, s) - low))
    return ConvGeometry(g.out_spatial, g.in_spatial, g.kernel_size, g.lhs_dilation, tuple(pads), g.stride,
                        g.rhs_dilation)


@dataclass(frozen=True)
class Phase:
    """The outputs ``o = q * period + residue`` of an lhs-dilated convolution, on one axis.

    They form a plain (undilated-input) convolution of the original input:
    ``count`` outputs, kernel taps ``first_tap, first_tap + tap_step, ...``
    (``num_taps`` of them; none when every tap of this phase reads an inserted
    zero), window stride ``stride``, rhs dilation ``rhs_dilation`` and pads
    ``pads`` (negative crops).
    """

    residue: int
    count: int
    first_tap: int
    num_taps: int
    tap_step: int
    stride: int
    rhs_dilation: int
    pads: Tuple[int, int]

    @property
    def empty(self) -> bool:
        return self.count == 0 or self.num_taps == 0


def axis_phases(n: int, k: int, s: int, d: int, ld: int, lo: int, out: int) -> Tuple[int, List[Phase]]:
    """Split one axis of an lhs-dilated convolution into its output phases.

    Output ``o`` reads the dilated, padded input at ``o * s + t * d``, which
    holds input ``(o * s + t * d - lo) / ld`` when that is an integer (and a
    zero otherwise).  That divisibility depends only on ``o`` modulo
    ``period = ld / gcd(s, ld)``, so each residue class of outputs is an
    ordinary convolution of the undilated input with every
    ``ld / gcd(d, ld)``-th tap: window stride ``s / gcd(s, ld)``, rhs dilation
    ``d / gcd(d, ld)``.  Returns ``(period, phases)``; with ``ld == 1`` there is
    one phase, the convolution itself.
    """
    period, sub_stride = ld // gcd(s, ld), s // gcd(s, ld)
    tap_step, sub_dilation = ld // gcd(d, ld), d // gcd(d, ld)
    phases = []
    for r in range(period):
        count = max(0, -(-(out - r) // period))
        first = next((t for t in range(min(k, tap_step)) if (r * s + t * d - lo) % ld == 0), None)
        if first is None or count == 0:
            phases.append(Phase(r, count, 0, 0, tap_step, sub_stride, sub_dilation, (0, 0)))
            continue
        num = len(range(first, k, tap_step))
        e0 = (r * s + first * d - lo) // ld
        hi = (count - 1) * sub_stride + (num - 1) * sub_dilation + e0 + 1 - n
        phases.append(Phase(r, count, first, num, tap_step, sub_stride, sub_dilation, (-e0, hi)))
    return period, phases
