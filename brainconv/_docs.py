"""The docstrings of the convolution layers, one per concept, rendered for each rank: the
fragments every layer shares and the Conv / ConvTranspose / ScaledWSConv texts."""

from __future__ import annotations

_SHARED_ARGS = """\
    in_size : sequence of int
        Input shape without batch axes: ``(*spatial, C)``, or ``(C, *spatial)`` with
        ``channel_first=True``; {nd} spatial sizes.
    out_channels : int
        Output channels.
    kernel_size : int or sequence of {nd} ints
    stride : int or sequence of {nd} ints, default 1
    padding : str, int, pairs, or one entry per axis, default 'SAME'
        'SAME' (``ceil(n / stride)`` outputs, odd extra pad at the end), 'SAME_LOWER' (odd
        extra pad at the start), 'VALID', 'CAUSAL' (all ``(k - 1) * rhs_dilation`` pads before
        each axis), any case; an int; one int per axis; one ``(low, high)`` pair per axis;
        one pair for every axis; or one entry per axis mixing these, e.g. ``('CAUSAL',
        'SAME', 'SAME')`` (causal on the first axis, centred on the others).  See
        :mod:`brainconv.shapes` and the docs page "Padding semantics" for the exact formulas.
"""

_SHARED_TAIL = """\
    w_init : initializer or array, default ``braintools.init.XavierNormal()``
        Called with the kernel shape; may give brainunit Quantities.
    b_init : initializer or array, optional
        Bias, shaped to broadcast over the output's channel axis; no bias when None.
    w_mask : initializer or array, optional
        Broadcastable to the kernel shape and multiplied into the kernel at every call;
        masked-out entries get zero gradient.
    channel_first : bool, default False
        Channels-first layout ``(*batch, C, *spatial)``.
    name : str, optional
    param_type : type, default ``brainstate.ParamState``
        State class holding ``{{'weight': ..., 'bias': ...}}``.
    padding_mode : str, default 'ZEROS'
        {modes}
    precision : optional
        Passed to ``jax.lax.conv_general_dilated``.
"""

_LOWERING_ARG = """\
    lowering : str, optional
        The exact formulation the convolution runs as: 'lax', 'lax_vjp', 'im2col', 'taps',
        'fold', 'fft' or 'auto' (see :mod:`brainconv.lowering`); None follows
        :func:`brainconv.set_lowering` (initially 'auto': measured per backend).  The
        ``lowering`` property reports the resolved choice.
"""

_DTYPE_ARGS = """\
    dtype : dtype, optional
        Compute dtype (a floating dtype): the input, kernel and bias are cast to it and the
        output is in it; 16-bit dtypes (bfloat16, float16) accumulate in float32 (the
        operands are rounded to ``dtype``, the convolution runs in float32, the result is
        cast back).  None: as without it, the result dtype of the input and the weights.
    param_dtype : dtype, optional
        Dtype the weights are created in (a floating dtype); None: as the initializer gives
        them (``brainstate.environ.dftype()`` for braintools initializers).
"""

_CALL = """
    Calling the layer on ``x`` of shape ``(*batch, *in_size)`` (no batch axis, one, or
    several) returns ``(*batch, *out_size)``.  ``out_size`` is known at construction.
    A Quantity input (or Quantity weights) gives an output in unit(x) * unit(w).
"""

_CONV_DOC = """{title}

    A cross-correlation over {dims} via ``jax.lax.conv_general_dilated``, grouped
    (``groups``) and depthwise (``groups = in_channels``; ``out_channels = m * in_channels``
    is a depth multiplier), with input (lhs) and kernel (rhs) dilation.  The kernel has
    shape ``(*kernel_size, in_channels // groups, out_channels)``.
{call}
    Parameters
    ----------
{num}{shared}    lhs_dilation : int or sequence of {nd} ints, default 1
        Input dilation (zeros inserted between input positions).
    rhs_dilation : int or sequence of {nd} ints, default 1
        Kernel dilation.
    groups : int, default 1
        Divides in_channels and out_channels.
{extra}{tail}{lowering}
    Examples
    --------
    >>> import brainconv, jax.numpy as jnp
    >>> layer = brainconv.{example}
    >>> layer.out_size
    {example_out}
"""

_TRANSPOSE_DOC = """{title}

    The linear adjoint of the convolution with the same kernel_size, stride, padding,
    rhs_dilation and groups (channel counts swapped): it maps that convolution's output
    shape back to its input shape with the same connectivity.  The kernel has shape
    ``(*kernel_size, out_channels, in_channels // groups)`` and is not flipped by the user:
    for ``groups=1``, ``Conv.transpose()`` uses the convolution's kernel array as it is.

    Output length per axis, ``m`` the input length, ``span = (k - 1) * rhs_dilation + 1``:
    for VALID or explicit pads ``(m - 1) * stride + span - low - high + output_padding``
    (PyTorch's); for SAME, SAME_LOWER and CAUSAL ``m * stride`` without ``output_padding``
    (``jax.lax.conv_transpose``'s and brainstate's) and ``(m - 1) * stride + 1 +
    output_padding`` with one (Keras's and PyTorch's for odd spans; see the docs page
    "Padding semantics" for a table of the conventions).
{call}
    Parameters
    ----------
{num}{shared}    rhs_dilation : int or sequence of {nd} ints, default 1
    groups : int, default 1
{tail}    output_padding : int or sequence of {nd} ints, optional
        Added to the smallest output length the padding allows, as in Keras and PyTorch:
        it picks among the output shapes a stride > 1 maps to one input shape.  Smaller
        than the stride on SAME, SAME_LOWER and CAUSAL axes, than max(stride,
        rhs_dilation) on the others.  None: as 0 for VALID and explicit pads, the
        largest length (``m * stride``) for the strings.  The ``output_padding``
        attribute holds the explicit value that gives the layer's lengths.
{lowering}
    Examples
    --------
    >>> import brainconv
    >>> layer = brainconv.{example}
    >>> layer.out_size
    {example_out}
"""

_WS_EXTRA = """    ws_gain : bool, default True
        Learn a per-output-channel gain ``'gain'`` multiplied into the standardised kernel.
    eps : float, default 1e-4
        Lower bound on ``fan_in * var(w)`` in the standardisation.
"""

_MODES = ("'ZEROS', 'REFLECT', 'REPLICATE' or 'CIRCULAR' (torch's spellings too): a non-zero\n"
          "        mode pads the input that way, then runs a VALID convolution.")
_TRANSPOSE_MODES = "'ZEROS' or 'CIRCULAR' (the adjoint of a circular-padded convolution)."

_EXAMPLES = {
    # (class stem, nd): (constructor text, out_size)
    ('Conv', 1): ("Conv1d((100, 3), 8, kernel_size=5, stride=2)", "(50, 8)"),
    ('Conv', 2): ("Conv2d((28, 28, 1), 16, kernel_size=3, padding='VALID')", "(26, 26, 16)"),
    ('Conv', 3): ("Conv3d((8, 8, 8, 2), 4, kernel_size=3, stride=2)", "(4, 4, 4, 4)"),
    ('Conv', None): ("Conv(2, (32, 32, 3), 8, kernel_size=3, padding='CAUSAL')", "(32, 32, 8)"),
    ('ConvTranspose', 1): ("ConvTranspose1d((50, 8), 3, kernel_size=4, stride=2)", "(100, 3)"),
    ('ConvTranspose', 2): ("ConvTranspose2d((14, 14, 16), 1, kernel_size=3, stride=2, padding=1, output_padding=1)",
                           "(28, 28, 1)"),
    ('ConvTranspose', 3): ("ConvTranspose3d((4, 4, 4, 4), 2, kernel_size=3, stride=2)", "(8, 8, 8, 2)"),
    ('ConvTranspose', None): ("ConvTranspose(2, (16, 16, 8), 3, kernel_size=3, stride=2, padding='VALID')",
                              "(33, 33, 3)"),
    ('ScaledWSConv', 1): ("ScaledWSConv1d((100, 3), 8, kernel_size=5)", "(100, 8)"),
    ('ScaledWSConv', 2): ("ScaledWSConv2d((28, 28, 1), 16, kernel_size=3, stride=2)", "(14, 14, 16)"),
    ('ScaledWSConv', 3): ("ScaledWSConv3d((8, 8, 8, 2), 4, kernel_size=3)", "(8, 8, 8, 4)"),
    ('ScaledWSConv', None): ("ScaledWSConv(1, (64, 2), 4, kernel_size=3, rhs_dilation=2)", "(64, 4)"),
}

_TITLES = {
    'Conv': "{rank} convolution layer with weights in a brainstate ``ParamState``.",
    'ConvTranspose': "{rank} transposed convolution layer (the adjoint of :class:`Conv{suffix}`).",
    'ScaledWSConv': "{rank} weight-standardised convolution: as :class:`Conv{suffix}`, with the kernel "
                    "standardised per output channel at every call.",
}


def _render(stem: str, nd: int | None) -> str:
    """The one docstring of ``stem``, rendered for rank ``nd`` (None: the generic N-d class)."""
    rank = f'{nd}-d' if nd else 'N-d'
    suffix = f'{nd}d' if nd else ''
    fields = dict(
        nd=nd or 'num_spatial_dims', title=_TITLES[stem].format(rank=rank, suffix=suffix),
        dims=f'{nd} spatial axes' if nd else '``num_spatial_dims`` spatial axes',
        num='' if nd else '    num_spatial_dims : int\n        Number of spatial axes (1 for Conv1d, ...).\n',
        call=_CALL, extra=_WS_EXTRA if stem == 'ScaledWSConv' else '', lowering=_LOWERING_ARG + _DTYPE_ARGS,
        example=_EXAMPLES[stem, nd][0], example_out=_EXAMPLES[stem, nd][1])
    fields['shared'] = _SHARED_ARGS.format(**fields)
    fields['tail'] = _SHARED_TAIL.format(modes=_TRANSPOSE_MODES if stem == 'ConvTranspose' else _MODES)
    return (_TRANSPOSE_DOC if stem == 'ConvTranspose' else _CONV_DOC).format(**fields)


