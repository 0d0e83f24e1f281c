"""The operators an uploaded probe program may call: a closed allow-list, torch-free.

How it was derived (torch 2.13, CPU): a model and its loss were exported together with a dynamic
batch dimension (``torch.export.Dim("batch", min=1)``) in both ``train()`` and ``eval()`` mode
under ``sdpa_kernel(SDPBackend.MATH)``, ``.run_decompositions()`` (the default core-ATen table)
was applied, and every node target of the saved ``models/model.json`` was collected. The same
models were captured again through ``obstacle.Probe.capture``, whose table also decomposes
``native_layer_norm`` and the CPU flash-attention kernel, together with the battery's test
families (``tests/battery/families.py``). The models: an MLP with cross-entropy, MSE, NLL,
BCE-with-logits, smooth-L1 and L1 losses (ReLU, GELU, Tanh, Sigmoid, SiLU, LeakyReLU, ELU,
Softplus, Softmax, LogSoftmax); a CNN (Conv2d, BatchNorm2d, MaxPool2d, AvgPool2d,
AdaptiveAvgPool2d, Dropout, label smoothing); a Conv1d + GroupNorm net; LayerNorm and
BatchNorm1d MLPs; a two-layer ``nn.LSTM``, a bidirectional ``nn.GRU`` and an ``nn.RNN``; and
``nn.TransformerEncoder`` stacks (one behind an ``nn.Embedding``). Together they produce 60
distinct targets: ``_operator.mul`` and the 59 ATen operators in ``_OBSERVED`` below. To those
we add the pure members of torch's ``Tag.core`` ATen set that a model and loss plausibly
decompose to (more arithmetic, pooling and padding variants, reductions, indexing, comparisons,
filled-tensor creation, random sampling), and the Python operators torch serializes for
arithmetic on symbolic sizes: 195 targets in all.

What is left out on purpose, and why:

- anything that touches files, the network, processes or shared memory (``aten.from_file``,
  ``aten._load``/``save``-like ops, ``prims`` storage ops): a graph runs on the worker, so such an
  op would read the server's files into the loss the report shows;
- storage and aliasing surgery (``set_``, ``as_strided``, ``resize_``, ``_unsafe_view``, every
  in-place ``*_`` op): a functional, decomposed program never needs them and they can reach memory
  outside a tensor's extent;
- uninitialised allocations (``empty``, ``empty_strided``, ``empty_like``, ``new_empty``): their
  contents are whatever the allocator last held, possibly another run's tensors;
- data-dependent scalars and shapes (``_local_scalar_dense``/``item``, ``nonzero``): they introduce
  unbacked symbols the probe never needs;
- every higher-order operator (``torch.ops.higher_order.*``: ``cond``, ``while_loop``,
  ``auto_functionalized``, ``with_effects``, ``invoke_subgraph``, triton and delegate wrappers):
  they carry subgraphs or wrap arbitrary (custom) operators, and none of the models above emit one;
- every namespace other than ``aten`` (``torch.ops.mylib.*``, ``#extension:op``) and any other
  Python callable: torch resolves a target by walking attributes from ``torch``, ``operator`` or
  ``math``, so ``torch.serialization.os.system`` would otherwise resolve to ``os.system``;
- ``operator.pow``, ``lshift`` and ``rshift`` on symbolic sizes (exponential integers).

Random sampling (``rand``, ``randn``, ``randperm``, ``bernoulli``, ``native_dropout``) is allowed:
it only reads the generator state, and dropout in ``train()`` mode decomposes to it.
"""

from __future__ import annotations

__all__ = ["ALLOWED_ATEN_OPERATORS", "ALLOWED_OPERATORS", "ALLOWED_SYMBOLIC_OPERATORS"]

_ATEN = "torch.ops.aten."

# Exactly what the models listed above produce (eval and train mode, default table and
# Probe.capture's table), minus `_operator.mul`.
_OBSERVED = frozenset(
    {
        "_log_softmax.default",
        "_native_batch_norm_legit_functional.default",
        "_native_batch_norm_legit_no_training.default",
        "_softmax.default",
        "_to_copy.default",
        "abs.default",
        "add.Tensor",
        "addmm.default",
        "any.dim",
        "avg_pool2d.default",
        "bitwise_not.default",
        "bmm.default",
        "cat.default",
        "clone.default",
        "convolution.default",
        "div.Tensor",
        "elu.default",
        "embedding.default",
        "eq.Scalar",
        "exp.default",
        "expand.default",
        "flip.default",
        "full.default",
        "full_like.default",
        "gather.default",
        "gelu.default",
        "gt.Scalar",
        "leaky_relu.default",
        "log1p.default",
        "logical_not.default",
        "lt.Scalar",
        "max_pool2d_with_indices.default",
        "mean.default",
        "mean.dim",
        "minimum.default",
        "mul.Scalar",
        "mul.Tensor",
        "native_dropout.default",
        "native_group_norm.default",
        "native_layer_norm.default",
        "ne.Scalar",
        "neg.default",
        "permute.default",
        "pow.Tensor_Scalar",
        "relu.default",
        "scalar_tensor.default",
        "select.int",
        "sigmoid.default",
        "slice.Tensor",
        "split_with_sizes.default",
        "squeeze.dims",
        "sub.Tensor",
        "sum.dim_IntList",
        "sym_size.int",
        "tanh.default",
        "unsqueeze.default",
        "var_mean.correction",
        "view.default",
        "where.self",
    }
)

# Pure `Tag.core` ATen operators a model and loss plausibly decompose to.
_CORE_EXTRA = frozenset(
    {
        # arithmetic and elementwise math
        "add.Scalar",
        "sub.Scalar",
        "div.Scalar",
        "div.Tensor_mode",
        "div.Scalar_mode",
        "reciprocal.default",
        "remainder.Scalar",
        "remainder.Tensor",
        "fmod.Scalar",
        "fmod.Tensor",
        "pow.Scalar",
        "pow.Tensor_Tensor",
        "sqrt.default",
        "rsqrt.default",
        "expm1.default",
        "log.default",
        "log2.default",
        "log10.default",
        "sign.default",
        "ceil.default",
        "floor.default",
        "round.default",
        "trunc.default",
        "clamp.default",
        "clamp.Tensor",
        "maximum.default",
        "erf.default",
        "sin.default",
        "cos.default",
        "tan.default",
        "asin.default",
        "acos.default",
        "atan.default",
        "atan2.default",
        "sinh.default",
        "cosh.default",
        "asinh.default",
        "acosh.default",
        "atanh.default",
        "isnan.default",
        "isinf.default",
        # matmul
        "mm.default",
        # activations
        "hardtanh.default",
        # pooling, padding, resampling
        "avg_pool1d.default",
        "avg_pool3d.default",
        "adaptive_avg_pool1d.default",
        "_adaptive_avg_pool2d.default",
        "_adaptive_avg_pool3d.default",
        "max_pool3d_with_indices.default",
        "constant_pad_nd.default",
        "reflection_pad1d.default",
        "reflection_pad2d.default",
        "reflection_pad3d.default",
        "replication_pad2d.default",
        "replication_pad3d.default",
        "upsample_nearest2d.vec",
        "upsample_bilinear2d.vec",
        # norms
        "_native_batch_norm_legit.default",
        "_native_batch_norm_legit.no_stats",
        "var.correction",
        "var.dim",
        # reductions and sorting
        "amax.default",
        "amin.default",
        "max.dim",
        "min.dim",
        "argmax.default",
        "argmin.default",
        "prod.default",
        "prod.dim_int",
        "any.default",
        "any.dims",
        "cumsum.default",
        "sort.default",
        "topk.default",
        # views and reshapes
        "squeeze.dim",
        "alias.default",
        "repeat.default",
        "diagonal.default",
        # indexing and scattering (functional forms)
        "index.Tensor",
        "index_select.default",
        "index_put.default",
        "scatter.src",
        "scatter.value",
        "scatter_add.default",
        "scatter_reduce.two",
        "slice_scatter.default",
        "select_scatter.default",
        "_embedding_bag.default",
        # comparisons and logic
        "eq.Tensor",
        "ne.Tensor",
        "lt.Tensor",
        "le.Scalar",
        "le.Tensor",
        "gt.Tensor",
        "ge.Scalar",
        "ge.Tensor",
        "logical_and.default",
        "logical_or.default",
        "logical_xor.default",
        "bitwise_and.Scalar",
        "bitwise_and.Tensor",
        "bitwise_or.Scalar",
        "bitwise_or.Tensor",
        "bitwise_xor.Scalar",
        "bitwise_xor.Tensor",
        # filled tensors (never uninitialised ones)
        "arange.start_step",
        # random sampling
        "rand.default",
        "randn.default",
        "randperm.default",
        "bernoulli.p",
        # symbolic shapes
        "sym_numel.default",
        "sym_stride.int",
        "_assert_scalar.default",
        # a metadata assertion export records for no-op `.to()` calls (transformers' attention
        # masks); it checks dtype/device/shape and touches no data
        "_assert_tensor_metadata.default",
    }
)

ALLOWED_ATEN_OPERATORS: frozenset[str] = frozenset(_ATEN + name for name in _OBSERVED | _CORE_EXTRA)

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
