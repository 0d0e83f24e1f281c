"""The operators a probe program may call: a closed allow-list, and the one rule that applies it.

``why_refused(target)`` is the rule. The service's archive validator (``_program``) and
``obstacle.Probe.capture`` both call it, so a refused operator is reported at capture time, while
the user is training, with the same reason the service would give. Torch-free.

What is allowed: the pure part of torch's core ATen opset, i.e. what a model and its loss lower to
under ``run_decompositions()`` (torch 2.13). That is the ``Tag.core`` operators plus the pure
operators the default decomposition table keeps because they have no decomposition (``lgamma``,
``digamma``, ``erfinv``, the ``special_*`` functions, linear-algebra kernels, pooling variants).
Each family below says where its members come from. The list was checked by capturing, through
``Probe.capture``, MLPs with these losses: cross-entropy (label smoothing, class weights), NLL,
MSE, L1, smooth-L1, Huber, BCE, BCE-with-logits, KL, Poisson NLL with ``full=True`` and an exact
Poisson likelihood (``lgamma``), soft-margin, multi-label soft-margin, multi-margin and hinge
embedding; every activation module but ``RReLU`` (random); CNNs (1d/2d/3d, transposed, dilated,
grouped, every padding mode); max, average, adaptive, LP and fractional pooling; nearest,
(bi/tri)linear and bicubic upsampling; ``grid_sample``, fold/unfold, pixel and channel shuffle;
batch, group, instance, layer, RMS and local-response norms; ``nn.RNN``/``LSTM``/``GRU``
(multi-layer, bidirectional, with projections), ``GRUCell`` and ``RNNCell`` loops; attention
with causal masks and ``nn.Transformer``; ``nn.EmbeddingBag`` and ``nn.Bilinear``; and the
``torch``/``torch.special``/``torch.linalg``/``torch.fft`` functions a loss plausibly calls.
``tests/battery/test_operator_families.py`` keeps one such capture per family;
``tests/artifacts/test_allowed_ops.py`` checks every entry against torch's schema and tags.
(``torch.linalg.inv``, ``cholesky`` and ``solve`` are still refused: export wraps their error
check, ``aten._linalg_check_errors``, in the ``with_effects`` higher-order operator.)

What is refused, and why (``why_refused`` names the reason for each):

- anything that touches files, the network, processes or shared memory (``aten.from_file``,
  ``_print``, ``prims`` storage ops): a graph runs on the worker, so such an op would read the
  server's files into the loss the report shows;
- in-place (``*_``) and ``out=`` forms, and storage and aliasing surgery (``set_``,
  ``as_strided``, ``resize``, ``view.dtype``): a functional, decomposed program never needs them,
  and they can reach memory outside a tensor's extent;
- uninitialised allocations (``empty``, ``empty_strided``, ``empty_permuted``,
  ``new_empty_strided``): their contents are whatever the allocator last held, possibly another
  run's tensors. ``Probe.capture`` lowers them to zero-filled ``full`` (circular padding and
  ``HingeEmbeddingLoss`` use them internally), so a captured probe never holds one;
- data-dependent scalars and shapes (``_local_scalar_dense``/``item``, ``nonzero``,
  ``masked_select``, ``unique``, ``bincount``, ``repeat_interleave.Tensor``): they introduce
  unbacked symbols the probe never needs;
- random sampling beyond the five samplers under ``_RANDOM``, which dropout lowers to
  (``normal``, ``uniform``, ``poisson``, ``multinomial``, ``rrelu_with_noise``, ...): the probe
  is traced in eval mode, where a model draws nothing, and the battery evaluates the loss many
  times at one θ; a sampler nobody has vetted stays out until it is;
- every higher-order operator (``torch.ops.higher_order.*``: ``cond``, ``while_loop``,
  ``auto_functionalized``, ``with_effects``, ``invoke_subgraph``, triton and delegate wrappers):
  they carry subgraphs or wrap arbitrary (custom) operators;
- every namespace other than ``aten`` (``torch.ops.mylib.*``, ``#extension:op``) and any other
  Python callable: torch resolves a target by walking attributes from ``torch``, ``operator`` or
  ``math``, so ``torch.serialization.os.system`` would otherwise resolve to ``os.system``;
- ``operator.pow``, ``lshift`` and ``rshift`` on symbolic sizes (exponential integers).
"""

from __future__ import annotations

__all__ = [
    "ALLOWED_ATEN_OPERATORS",
    "ALLOWED_OPERATORS",
    "ALLOWED_SYMBOLIC_OPERATORS",
    "OPERATOR_FAMILIES",
    "why_refused",
]

_ATEN = "torch.ops.aten."

# -- pointwise arithmetic and elementwise math (Tag.core) --
_ARITHMETIC = frozenset(
    {
        "abs.default", "add.Scalar", "add.Tensor", "sub.Scalar", "sub.Tensor", "mul.Scalar",
        "mul.Tensor", "div.Scalar", "div.Tensor", "div.Scalar_mode", "div.Tensor_mode",
        "neg.default", "reciprocal.default", "remainder.Scalar", "remainder.Tensor",
        "remainder.Scalar_Tensor", "fmod.Scalar", "fmod.Tensor", "pow.Scalar",
        "pow.Tensor_Scalar", "pow.Tensor_Tensor", "sqrt.default", "rsqrt.default", "exp.default",
        "exp2.default", "expm1.default", "log.default", "log1p.default", "log2.default",
        "log10.default", "sign.default", "signbit.default", "copysign.Scalar", "copysign.Tensor",
        "ceil.default", "floor.default", "round.default", "round.decimals", "trunc.default",
        "clamp.default", "clamp.Tensor", "maximum.default", "minimum.default", "fmax.default",
        "fmin.default", "hypot.default", "nextafter.default", "ldexp.Tensor", "frexp.Tensor",
        "gcd.default", "lcm.default", "where.self",
        "sin.default", "cos.default", "tan.default", "asin.default", "acos.default",
        "atan.default", "atan2.default", "sinh.default", "cosh.default", "tanh.default",
        "asinh.default", "acosh.default", "atanh.default",
    }
)  # fmt: skip

# -- special functions: pure, but without a decomposition, so they survive export as they are
# (lgamma is what an exact Poisson or negative-binomial likelihood calls) --
_SPECIAL_FUNCTIONS = frozenset(
    {
        "erf.default", "erfc.default", "erfinv.default", "lgamma.default", "digamma.default",
        "polygamma.default", "igamma.default", "igammac.default", "i0.default",
        "special_i0e.default", "special_i1.default", "special_i1e.default",
        "special_erfcx.default", "special_ndtri.default", "special_zeta.default",
        "special_zeta.other_scalar", "special_zeta.self_scalar", "special_airy_ai.default",
        "special_bessel_j0.default", "special_bessel_j1.default", "special_bessel_y0.default",
        "special_bessel_y1.default", "special_modified_bessel_i0.default",
        "special_modified_bessel_i1.default", "special_modified_bessel_k0.default",
        "special_modified_bessel_k1.default", "special_scaled_modified_bessel_k0.default",
        "special_scaled_modified_bessel_k1.default", "special_spherical_bessel_j0.default",
        *(
            f"special_{family}_polynomial_{kind}.{overload}"
            for family, kinds in (
                ("chebyshev", "tuvw"),
                ("shifted_chebyshev", "tuvw"),
                ("hermite", ("h", "he")),
                ("laguerre", "l"),
                ("legendre", "p"),
            )
            for kind in kinds
            for overload in ("default", "n_scalar", "x_scalar")
        ),
    }
)  # fmt: skip

# -- comparisons, predicates and logic (Tag.core, plus the bitwise shifts on integer tensors) --
_COMPARISON_LOGIC = frozenset(
    {
        *(f"{op}.{kind}" for op in ("eq", "ne", "lt", "le", "gt", "ge") for kind in ("Scalar", "Tensor")),
        "isnan.default", "isinf.default", "logical_not.default", "logical_and.default",
        "logical_or.default", "logical_xor.default", "bitwise_not.default",
        *(
            f"bitwise_{op}.{kind}"
            for op in ("and", "or", "xor")
            for kind in ("Scalar", "Tensor", "Scalar_Tensor")
        ),
        *(
            f"bitwise_{op}_shift.{kind}"
            for op in ("left", "right")
            for kind in ("Tensor", "Tensor_Scalar", "Scalar_Tensor")
        ),
    }
)  # fmt: skip

# -- activations and softmax (Tag.core; the others decompose into pointwise math) --
_ACTIVATIONS = frozenset(
    {
        "relu.default", "leaky_relu.default", "elu.default", "gelu.default", "hardtanh.default",
        "sigmoid.default", "_softmax.default", "_log_softmax.default",
    }
)  # fmt: skip

# -- reductions, scans, sorting and searching --
_REDUCTIONS = frozenset(
    {
        "sum.dim_IntList", "mean.default", "mean.dim", "prod.default", "prod.dim_int",
        "var.correction", "var.dim", "var_mean.correction", "amax.default", "amin.default",
        "max.default", "max.dim", "min.default", "min.dim", "argmax.default", "argmin.default",
        "any.default", "any.dim", "any.dims", "median.default", "median.dim",
        "nanmedian.default", "nanmedian.dim", "mode.default", "kthvalue.default",
        "linalg_vector_norm.default", "dist.default", "histc.default",
        "cumsum.default", "cumprod.default", "cummax.default", "cummin.default",
        "logcumsumexp.default",
        "sort.default", "sort.stable", "topk.default", "searchsorted.Tensor",
        "searchsorted.Scalar", "bucketize.Tensor", "bucketize.Scalar",
    }
)  # fmt: skip

# -- views, reshapes and their functional copies (no `as_strided`, no `view.dtype`) --
_VIEWS_SHAPES = frozenset(
    {
        "view.default", "alias.default", "expand.default", "permute.default", "squeeze.dim",
        "squeeze.dims", "unsqueeze.default", "select.int", "slice.Tensor", "diagonal.default",
        "split_with_sizes.default", "unfold.default", "cat.default", "repeat.default",
        "flip.default", "clone.default", "view_copy.default", "permute_copy.default",
        "unbind_copy.int", "narrow_copy.default",
    }
)  # fmt: skip

# -- indexing, gathering and scattering, in their functional (out-of-place) forms --
_INDEXING = frozenset(
    {
        "index.Tensor", "index_select.default", "index_put.default", "index_reduce.default",
        "gather.default", "scatter.src", "scatter.value", "scatter.reduce",
        "scatter.value_reduce", "scatter_add.default", "scatter_reduce.two",
        "slice_scatter.default", "select_scatter.default", "diagonal_scatter.default",
        "masked_scatter.default", "nonzero_static.default", "embedding.default",
        "_embedding_bag.default", "_embedding_bag_forward_only.default",
    }
)  # fmt: skip

# -- linear algebra: products layers use, and the decompositions torch.linalg lowers to --
_LINEAR_ALGEBRA = frozenset(
    {
        "mm.default", "mm.dtype", "bmm.default", "bmm.dtype", "addmm.default", "addmm.dtype",
        "addmv.default", "addbmm.default", "_trilinear.default", "_cdist_forward.default",
        "_pdist_forward.default", "_linalg_det.default", "_linalg_slogdet.default",
        "_linalg_eigh.default", "_linalg_svd.default", "_linalg_solve_ex.default",
        "linalg_inv_ex.default", "linalg_cholesky_ex.default", "linalg_qr.default",
        "linalg_solve_triangular.default", "linalg_lu.default", "linalg_lu_factor_ex.default",
        "linalg_lu_solve.default", "lu_unpack.default", "cholesky_solve.default",
        "cholesky_inverse.default", "triangular_solve.default",
        "linalg_householder_product.default", "linalg_matrix_exp.default",
    }
)  # fmt: skip

# -- spectral: the FFT kernels torch.fft lowers to, and the complex views around them --
_SPECTRAL = frozenset(
    {
        "_fft_r2c.default", "_fft_c2r.default", "_fft_c2c.default", "view_as_real.default",
        "view_as_complex.default", "complex.default", "polar.default", "angle.default",
    }
)  # fmt: skip

# -- convolution, pooling, padding and resampling --
_CONVOLUTION_POOLING = frozenset(
    {
        "convolution.default", "_convolution.default", "col2im.default",
        "avg_pool1d.default", "avg_pool2d.default", "avg_pool3d.default",
        "adaptive_avg_pool1d.default", "_adaptive_avg_pool2d.default",
        "_adaptive_avg_pool3d.default", "max_pool2d_with_indices.default",
        "max_pool3d_with_indices.default", "adaptive_max_pool2d.default",
        "adaptive_max_pool3d.default", "fractional_max_pool2d.default",
        "constant_pad_nd.default", "reflection_pad1d.default", "reflection_pad2d.default",
        "reflection_pad3d.default", "replication_pad2d.default", "replication_pad3d.default",
        "upsample_nearest2d.vec", "upsample_bilinear2d.vec", "upsample_bilinear2d.default",
        "upsample_bicubic2d.default", "upsample_trilinear3d.default",
        "_upsample_bilinear2d_aa.default", "_upsample_bicubic2d_aa.default",
        "grid_sampler_2d.default", "grid_sampler_3d.default",
    }
)  # fmt: skip

# -- normalization (the functional batch-norm forms; `_native_batch_norm_legit.default` updates
# its running statistics in place and is left out) --
_NORMALIZATION = frozenset(
    {
        "native_layer_norm.default", "native_group_norm.default", "native_batch_norm.default",
        "_native_batch_norm_legit_functional.default",
        "_native_batch_norm_legit_no_training.default", "_native_batch_norm_legit.no_stats",
        "_batch_norm_with_update_functional.default", "_batch_norm_no_update.default",
    }
)  # fmt: skip

# -- backward kernels (Tag.core): a loss that differentiates inside forward (a gradient penalty)
# lowers to them --
_BACKWARD_KERNELS = frozenset(
    {
        "convolution_backward.default", "avg_pool2d_backward.default",
        "_adaptive_avg_pool2d_backward.default", "max_pool2d_with_indices_backward.default",
        "native_group_norm_backward.default", "native_layer_norm_backward.default",
        "embedding_dense_backward.default",
    }
)  # fmt: skip

# -- filled tensors and conversions (never uninitialised ones; `copy` and `fill` here are the
# functional forms, which return a new tensor) --
_CREATION_CONVERSION = frozenset(
    {
        "full.default", "full_like.default", "scalar_tensor.default", "arange.start_step",
        "fill.Scalar", "copy.default", "tril_indices.default", "triu_indices.default",
        "_to_copy.default",
    }
)  # fmt: skip

# -- random sampling: only reads the generator state; dropout in train() mode decomposes to it --
_RANDOM = frozenset(
    {"rand.default", "randn.default", "randperm.default", "bernoulli.p", "native_dropout.default"}
)

# -- symbolic shapes and metadata assertions (`_assert_tensor_metadata` is what export records for
# a no-op `.to()`, as in transformers' attention masks; it checks dtype/device/shape only) --
_SHAPES_ASSERTIONS = frozenset(
    {
        "sym_size.int", "sym_numel.default", "sym_stride.int", "sym_storage_offset.default",
        "_assert_scalar.default", "_assert_tensor_metadata.default",
    }
)  # fmt: skip

OPERATOR_FAMILIES: dict[str, frozenset[str]] = {
    "arithmetic": _ARITHMETIC,
    "special_functions": _SPECIAL_FUNCTIONS,
    "comparison_logic": _COMPARISON_LOGIC,
    "activations": _ACTIVATIONS,
    "reductions": _REDUCTIONS,
    "views_shapes": _VIEWS_SHAPES,
    "indexing": _INDEXING,
    "linear_algebra": _LINEAR_ALGEBRA,
    "spectral": _SPECTRAL,
    "convolution_pooling": _CONVOLUTION_POOLING,
    "normalization": _NORMALIZATION,
    "backward_kernels": _BACKWARD_KERNELS,
    "creation_conversion": _CREATION_CONVERSION,
    "random": _RANDOM,
    "shapes_assertions": _SHAPES_ASSERTIONS,
}
"""The allowed ATen operators (``name.overload``, without ``torch.ops.aten.``) by family."""

ALLOWED_ATEN_OPERATORS: frozenset[str] = frozenset(
    _ATEN + name for family in OPERATOR_FAMILIES.values() for name in family
)

# Python-level operators torch serializes for arithmetic on symbolic sizes (`_SYM_OPS`),
# without `pow`, `lshift` and `rshift`.
ALLOWED_SYMBOLIC_OPERATORS: frozenset[str] = frozenset(
    {
        "_operator.add",
        "_operator.sub",
        "_operator.mul",
        "_operator.floordiv",
        "_operator.mod",
        "_operator.truediv",
        "_operator.neg",
        "_operator.pos",
        "_operator.eq",
        "_operator.ne",
        "_operator.lt",
        "_operator.le",
        "_operator.gt",
        "_operator.ge",
        "_operator.and_",
        "_operator.or_",
        "math.trunc",
        "torch.sym_max",
        "torch.sym_min",
        "torch.sym_not",
        "torch.sym_int",
        "torch.sym_float",
        "torch.sym_ite",
    }
)

ALLOWED_OPERATORS: frozenset[str] = ALLOWED_ATEN_OPERATORS | ALLOWED_SYMBOLIC_OPERATORS

# Refused ATen operators with a reason more specific than "not on the list", by base name.
_UNINITIALISED = frozenset({"empty", "empty_strided", "empty_permuted", "new_empty", "new_empty_strided", "empty_like"})  # fmt: skip
_DATA_DEPENDENT = frozenset(
    {
        "_local_scalar_dense", "item", "nonzero", "masked_select", "unique_dim",
        "unique_consecutive", "_unique", "_unique2", "bincount", "repeat_interleave",
    }
)  # fmt: skip
_STORAGE = frozenset(
    {
        "as_strided", "as_strided_copy", "as_strided_scatter", "set", "resize", "_resize_output",
        "_unsafe_view", "_nested_view_from_buffer",
    }
)  # fmt: skip
_FILES_PROCESSES = frozenset({"from_file", "_print", "_pin_memory", "is_pinned"})
_RANDOM_REFUSED = frozenset(
    {
        "normal", "uniform", "exponential", "geometric", "cauchy", "log_normal", "poisson",
        "multinomial", "randint", "rand_like", "randn_like", "randint_like", "bernoulli",
        "rand", "randn", "randperm", "rrelu_with_noise", "rrelu_with_noise_functional",
        "_standard_gamma", "_fused_dropout", "_philox_key_split", "_philox_key_fold_in",
        "native_dropout",
    }
)  # fmt: skip


def why_refused(target: str) -> str | None:
    """Why a probe may not call ``target`` (as torch serializes it), or ``None`` if it may.

    ``target`` is a node target as ``torch.export.save`` writes it: ``torch.ops.aten.addmm.default``,
    ``_operator.mul``, ``torch.sym_max``.
    """
    if target in ALLOWED_OPERATORS:
        return None
    shown = repr(target[:120])
    if target.startswith("torch.ops.higher_order."):
        return (
            f"calls the higher-order operator {shown}; higher-order operators carry subgraphs or "
            "wrap arbitrary (custom or side-effecting) operators and are not allowed"
        )
    if target.startswith(_ATEN):
        return (
            f"calls {shown}, which is not in the allow-list of pure ATen operators: "
            + _aten_reason(target[len(_ATEN) :])
        )
    if target.startswith("torch.ops."):
        namespace = target.split(".")[2]
        return (
            f"calls {shown} from the operator namespace {namespace[:40]!r}; only torch.ops.aten "
            "(and Python shape arithmetic) is allowed, since any other namespace can run "
            "arbitrary (custom) code"
        )
    return (
        f"calls {shown}, which is not an ATen operator; torch would resolve it by attribute "
        "lookup from torch, operator or math and call whatever it finds"
    )


def _aten_reason(name: str) -> str:
    base, _, overload = name.rpartition(".")
    if base in _STORAGE or base.rstrip("_") in _STORAGE:
        return "it edits storage or aliasing directly and can reach memory outside a tensor"
    if base.endswith("_") and not base.endswith("__"):
        return "it mutates a tensor in place (a probe program is functional)"
    if overload.startswith("out") or overload.endswith("_out"):
        return "it writes into an out= tensor (a probe program is functional)"
    if overload == "dtype" and base in ("view", "view_copy"):
        return "it reinterprets a tensor's bytes as another dtype, which the analysis dtype would change"
    if base in _UNINITIALISED:
        return (
            "it allocates uninitialised memory, whose contents are whatever the allocator last "
            "held (Probe.capture lowers it to a zero-filled tensor; use torch.zeros instead)"
        )
    if base in _DATA_DEPENDENT:
        return "its output shape or value depends on the data, which the probe's graph cannot hold"
    if base in _FILES_PROCESSES:
        return "it touches files, memory pinning or the console on the machine that runs the probe"
    if base in _RANDOM_REFUSED:
        return (
            "it draws random numbers in a way the battery does not replay (only rand, randn, "
            "randperm, bernoulli.p and native_dropout are allowed)"
        )
    return (
        "only pure operators of torch's core ATen opset are allowed (no file, network, process, "
        "storage, uninitialised-memory or random effects)"
    )
