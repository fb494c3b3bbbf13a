"""Tests for jaxrobust.models: shapes, in-model normalisation, pooling, adapters, registry."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxrobust.errors import ConfigError, InputError
from jaxrobust.models import (
    MODELS,
    PreActResNet18,
    ResNet,
    SmallCNN,
    WideResNet,
    as_features_fn,
    as_logits_fn,
    create_model,
    init_model,
    max_pool_2x2,
    model_kwargs,
    normalize,
)
from jaxrobust.models.layers import (
    GEMM_MAX_POSITIONS,
    Conv,
    conv_as_gemm,
    conv_gemm_grad,
    conv_general_dilated_gemm_grad,
)

# An "rbg" key: XLA:CPU compiles threefry-based parameter init ~3x slower (seconds per model),
# which dominates this file's runtime. Results do not depend on the generator.
KEY = jax.random.key(0, impl="rbg")

# name, create_model kwargs, input shape (without batch), expected feature width
SPECS = {
    "mlp": ({"hidden": (32, 16)}, (8, 8, 1), 16),
    "small_cnn": ({"channels": (8, 16), "dense": 32}, (8, 8, 1), 32),
    "madry_cnn": ({}, (8, 8, 1), 1024),
    "bn_cnn": ({"channels": (4, 8)}, (8, 8, 1), 8),
    "preact_resnet18": ({}, (32, 32, 3), 512),
    "resnet18": ({"width": 8}, (8, 8, 3), 64),
    "resnet50": ({"width": 4}, (8, 8, 3), 128),
    "wide_resnet": ({"depth": 10, "width": 1}, (32, 32, 3), 64),
}


def _uniform(key, shape):
    return jax.random.uniform(key, shape, jnp.float32)


class _Built(dict):
    """Registered models, each built and initialised on first use (once for the module)."""

    def __missing__(self, name):
        kwargs, shape, dim = SPECS[name]
        model = create_model(name, 10, **kwargs)
        variables = init_model(model, jax.random.fold_in(KEY, list(SPECS).index(name)), shape)
        self[name] = (model, variables, shape, dim)
        return self[name]


@pytest.fixture(scope="module")
def built():
    return _Built()


# Compiled and compared with PyTorch in tests/test_from_torch.py (marked torch); here their
# logits/features shapes are traced without compiling (test_resnet_shapes_traced).
_HEAVY = ("resnet18", "resnet50")


def test_registry_covers_all_models():
    assert set(SPECS) == set(MODELS)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in _HEAVY else n for n in SPECS]
)
def test_model_logits_and_features(built, name):
    model, variables, shape, dim = built[name]
    x = _uniform(jax.random.key(1), (2, *shape))
    # Jitted, not eager: op-by-op dispatch of a ResNet compiles every op separately.
    feats = jax.jit(as_features_fn(model, variables))(x)
    logits = feats["logits"]
    assert logits.shape == (2, 10)
    assert logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()
    assert feats["features"].shape == (2, dim)
    # The features fn and the logits fn run the same forward pass.
    logits_fn = jax.jit(as_logits_fn(model, variables))
    np.testing.assert_allclose(logits_fn(x), logits, rtol=1e-5, atol=1e-5)
    # init_model keeps only the variable collections, never the sown intermediates.
    assert "intermediates" not in variables
    with_bn = ("bn_cnn", "preact_resnet18", "resnet18", "resnet50", "wide_resnet")
    assert ("batch_stats" in variables) == (name in with_bn)


@pytest.mark.parametrize("name", ["mlp", "small_cnn", "madry_cnn"])
def test_input_gradients_finite(built, name):
    model, variables, shape, _ = built[name]
    f = as_logits_fn(model, variables)
    x = _uniform(jax.random.key(2), (2, *shape))
    g = jax.grad(lambda x: f(x)[:, 0].sum())(x)
    assert g.shape == x.shape
    assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).sum() > 0


@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 1), (32, 32, 3)])
def test_resnets_any_input_size(shape):
    # Global average pooling makes the ResNets size-agnostic (8x8 digits, 28x28 MNIST, CIFAR).
    # Shapes only (eval_shape traces without compiling), to keep the suite fast.
    x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
    for model in (PreActResNet18(num_classes=3), WideResNet(depth=16, width=2, num_classes=3)):
        variables = jax.eval_shape(lambda x, m=model: m.init(KEY, x), x)
        logits = jax.eval_shape(lambda v, x, m=model: m.apply(v, x), variables, x)
        assert logits.shape == (2, 3)


@pytest.mark.parametrize("name", _HEAVY)
def test_resnet_shapes_traced(name):
    kwargs, shape, dim = SPECS[name]
    model = create_model(name, 10, **kwargs)
    x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(KEY, x), x)
    assert set(variables) == {"params", "batch_stats"}
    feats = jax.eval_shape(lambda v, x: as_features_fn(model, v)(x), variables, x)
    assert feats["logits"].shape == (2, 10) and feats["features"].shape == (2, dim)
    # Stage widths: `width` doubles per stage; bottlenecks expand the output 4x.
    expansion = 4 if name == "resnet50" else 1
    assert feats["stage4"].shape[-1] == 8 * kwargs["width"] * expansion


def test_madry_cnn_mnist_shapes():
    model = create_model("madry_cnn", 10)
    x = jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32)
    p = jax.eval_shape(lambda x: model.init(KEY, x), x)["params"]
    assert p["conv1"]["kernel"].shape == (5, 5, 1, 32)
    assert p["conv2"]["kernel"].shape == (5, 5, 32, 64)
    assert p["fc1"]["kernel"].shape == (7 * 7 * 64, 1024)
    assert p["head"]["kernel"].shape == (1024, 10)


# --- normalisation lives inside the model ----------------------------------------------------


@pytest.mark.parametrize(
    "name, kwargs, shape, mean, std",
    [
        ("mlp", {"hidden": (16,)}, (8, 8, 1), 0.3, 0.2),
        (
            "small_cnn",
            {"channels": (4, 8), "dense": 8},
            (8, 8, 3),
            (0.4, 0.5, 0.6),
            (0.2, 0.25, 0.3),
        ),
    ],
)
def test_normalisation_inside_model(name, kwargs, shape, mean, std):
    normed = create_model(name, 5, mean=mean, std=std, **kwargs)
    plain = create_model(name, 5, **kwargs)
    variables = init_model(plain, KEY, shape)
    x = _uniform(jax.random.key(3), (2, *shape))
    m, s = jnp.asarray(mean), jnp.asarray(std)
    both = jax.jit(lambda x: (normed.apply(variables, x), plain.apply(variables, (x - m) / s)))
    inside, outside = both(x)
    np.testing.assert_allclose(inside, outside, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(normalize(x, mean, std), (x - m) / s, rtol=1e-6)


# --- max_pool_2x2 ----------------------------------------------------------------------------


def _ref_pool(x, padding="VALID"):
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding=padding)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 4, 6, 2)])
def test_max_pool_matches_flax_values_and_grads(shape):
    x = jax.random.normal(jax.random.key(4), shape)
    w = jax.random.normal(jax.random.key(5), (shape[0], shape[1] // 2, shape[2] // 2, shape[3]))
    np.testing.assert_array_equal(max_pool_2x2(x), _ref_pool(x))
    g = jax.grad(lambda x: (max_pool_2x2(x) * w).sum())(x)
    g_ref = jax.grad(lambda x: (_ref_pool(x) * w).sum())(x)
    np.testing.assert_allclose(g, g_ref, rtol=1e-6)


def test_max_pool_odd_sizes_pad_like_same():
    x = jax.random.normal(jax.random.key(6), (2, 7, 5, 3))
    y = max_pool_2x2(x)
    assert y.shape == (2, 4, 3, 3)
    np.testing.assert_array_equal(y, _ref_pool(x, "SAME"))
    g = jax.grad(lambda x: max_pool_2x2(x).sum())(x)
    assert np.isfinite(np.asarray(g)).all()
    assert float(g.sum()) == pytest.approx(y.size)  # one unit of gradient per window


def test_max_pool_jits_and_vmaps():
    x = jax.random.normal(jax.random.key(7), (3, 2, 6, 6, 1))
    np.testing.assert_array_equal(jax.jit(max_pool_2x2)(x[0]), max_pool_2x2(x[0]))
    np.testing.assert_array_equal(jax.vmap(max_pool_2x2)(x), max_pool_2x2(x))


# --- Conv / conv_as_gemm ------------------------------------------------------------------


def _xla_conv(x, w, strides, padding):
    dims = ("NHWC", "HWIO", "NHWC")
    return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dims)


@pytest.mark.slow  # compile-heavy: runs with the slow tests, keeping the default suite < 15 min
@settings(max_examples=15, deadline=None)
@given(
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    strides=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    size=st.tuples(st.integers(3, 7), st.integers(3, 7)),
    channels=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.sampled_from(["SAME", "VALID", ((1, 1), (0, 2)), ((2, 0), (1, 1))]),
    seed=st.integers(0, 2**16),
)
def test_conv_as_gemm_equals_xla_convolution(kernel, strides, size, channels, padding, seed):
    """Values and both gradients (input and kernel) of the GEMM form equal XLA's conv."""
    kx, kw = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (2, *size, channels[0]))
    w = jax.random.normal(kw, (*kernel, *channels))

    @jax.jit  # one program per example: compiling op by op would dominate the test
    def outputs_and_grads(x, w):
        out = []
        for conv in (conv_as_gemm, _xla_conv):
            y, vjp = jax.vjp(lambda x, w, conv=conv: conv(x, w, strides, padding), x, w)
            out.append((y, *vjp(jnp.cos(y))))
        return out

    gemm, ref = outputs_and_grads(x, w)
    assert gemm[0].shape == ref[0].shape
    for a, b in zip(gemm, ref, strict=True):  # output, input gradient, kernel gradient
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(
    "kernel, strides, size, padding",
    [
        ((3, 3), (1, 1), (7, 6), "SAME"),
        ((3, 3), (2, 2), (8, 9), ((1, 1), (1, 1))),
        ((3, 2), (2, 1), (7, 7), "VALID"),
        ((2, 3), (1, 2), (5, 6), ((2, 0), (1, 1))),
    ],
)
def test_conv_gemm_grad_has_xlas_value_and_derivatives(kernel, strides, size, padding):
    """XLA's value; reverse mode (both gradients), forward mode and a Hessian equal XLA's
    convolution's: the custom derivative rule is the convolution's own, as GEMMs."""
    x = jax.random.normal(jax.random.key(1), (2, *size, 3))
    w = jax.random.normal(jax.random.key(2), (*kernel, 3, 4))

    def ours(x, w):
        return conv_gemm_grad(x, w, strides, padding)

    def ref(x, w):
        return _xla_conv(x, w, strides, padding)

    @jax.jit
    def derivatives(x, w):
        out = []
        for conv in (ours, ref):
            y, vjp = jax.vjp(conv, x, w)
            _, tangent = jax.jvp(conv, (x, w), (jnp.sin(x), jnp.cos(w)))
            input_grad = jax.grad(lambda x, conv=conv: jnp.sum(conv(x, w) ** 2))(x)
            hessian = jax.hessian(lambda w, conv=conv: jnp.sum(jnp.tanh(conv(x, w))))(w)
            out.append((y, *vjp(jnp.cos(y)), tangent, input_grad, hessian))
        return out

    mine, theirs = derivatives(x, w)
    np.testing.assert_array_equal(mine[0], theirs[0])  # the value is XLA's convolution
    for a, b in zip(mine, theirs, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-5)
    batched = jax.vmap(lambda x: ours(x[None], w)[0])(x)
    np.testing.assert_allclose(batched, mine[0], atol=1e-5)


def test_flax_conv_takes_the_gemm_grad_convolution():
    """A user's nn.Conv with `conv_general_dilated=conv_general_dilated_gemm_grad`: same
    parameters, values and gradients; dilated / grouped / NCHW calls fall back to XLA."""
    x = _uniform(KEY, (2, 9, 9, 4))
    for kwargs in ({"strides": 2}, {"padding": "VALID"}, {"kernel_dilation": 2},
                   {"feature_group_count": 2}, {"padding": "CIRCULAR"}):  # fmt: skip
        ref = nn.Conv(6, (3, 3), **kwargs)
        ours = nn.Conv(6, (3, 3), conv_general_dilated=conv_general_dilated_gemm_grad, **kwargs)
        variables = ref.init(KEY, x)
        jax.tree.map(np.testing.assert_array_equal, ours.init(KEY, x), variables)
        for module in (ref, ours):
            loss = jax.value_and_grad(
                lambda v, x, m=module: jnp.sum(jnp.tanh(m.apply(v, x))), (0, 1)
            )
            if module is ref:
                expected = loss(variables, x)
            else:
                jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                             loss(variables, x), expected)  # fmt: skip
    nchw = conv_general_dilated_gemm_grad(
        jnp.ones((1, 2, 5, 5)), jnp.ones((3, 2, 3, 3)), (1, 1), "SAME"
    )
    np.testing.assert_array_equal(nchw, jax.lax.conv_general_dilated(
        jnp.ones((1, 2, 5, 5)), jnp.ones((3, 2, 3, 3)), (1, 1), "SAME"))  # fmt: skip


def _conv_layouts(compiled_text: str) -> set[str]:
    return set(re.findall(r"convolution\(.*?dim_labels=([\w>-]+)", compiled_text))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the 'auto' rule is CPU's")
def test_conv_gradients_inside_a_scan_use_only_the_canonical_layout():
    """Why "auto" picks "gemm_grad" on CPU: XLA:CPU runs convolutions in layouts other than
    NHWC/HWIO as naive loops, and inside `scan` it leaves the ones autodiff emits in theirs
    (the kernel gradient `f01b_i01o->01bf`, 10-20x slower here). Checks the compiled
    program of 3 training steps under `lax.scan` for the layouts themselves, not timings."""
    layer = {impl: Conv(8, (3, 3), impl=impl) for impl in ("auto", "xla")}
    x = _uniform(KEY, (4, 8, 8, 3))
    params = layer["auto"].init(KEY, x)

    def layouts(impl):
        def loss(p, x):
            return jnp.sum(jnp.tanh(layer[impl].apply(p, x)) ** 2)

        def steps(p, x):
            def body(carry, _):
                p, x = carry
                gp, gx = jax.grad(loss, argnums=(0, 1))(p, x)
                return (jax.tree.map(lambda a, b: a - 0.1 * b, p, gp), x - 0.1 * gx), None

            return jax.lax.scan(body, (p, x), None, length=3)[0]

        return _conv_layouts(jax.jit(steps).lower(params, x).compile().as_text())

    assert Conv(8, (3, 3)).formulation(x.shape) == "gemm_grad"
    assert layouts("auto") == {"b01f_01io->b01f"}
    assert layouts("xla") - {"b01f_01io->b01f"}, "XLA now canonicalises loop bodies: revisit"


@pytest.mark.parametrize(
    "kernel, strides, padding",
    [((3, 3), (1, 1), "SAME"), ((3, 3), (2, 2), ((1, 1), (1, 1))), ((1, 1), (2, 2), "VALID")],
)
def test_conv_is_nn_conv_with_the_same_parameters(kernel, strides, padding):
    """Same parameter tree and initial values as flax's nn.Conv, and the same function
    (every formulation), with any number of leading batch dimensions or none."""
    x = _uniform(KEY, (2, 3, 6, 6, 4))
    ref = nn.Conv(5, kernel, strides, padding)
    variables = ref.init(KEY, x)
    y_ref = ref.apply(variables, x)
    for impl in ("auto", "xla", "gemm", "gemm_grad"):
        layer = Conv(5, kernel, strides, padding, impl=impl)
        assert jax.tree.map(jnp.shape, layer.init(KEY, x)) == jax.tree.map(jnp.shape, variables)
        jax.tree.map(np.testing.assert_array_equal, layer.init(KEY, x), variables)
        np.testing.assert_allclose(layer.apply(variables, x), y_ref, atol=1e-5)
        np.testing.assert_allclose(layer.apply(variables, x[0, 0]), y_ref[0, 0], atol=1e-5)
        jitted = jax.jit(layer.apply)(variables, x)
        np.testing.assert_allclose(jitted, layer.apply(variables, x), atol=1e-6)
        vmapped = jax.vmap(layer.apply, in_axes=(None, 0))(variables, x)
        np.testing.assert_allclose(vmapped, y_ref, atol=1e-5)


def _uses_xla_conv(layer, x):
    variables = layer.init(KEY, x)
    return "conv_general_dilated" in str(jax.make_jaxpr(layer.apply)(variables, x))


def test_conv_auto_picks_gemm_for_1x1_and_small_outputs_on_cpu():
    side = int(GEMM_MAX_POSITIONS**0.5)  # 4: a 4x4 output is the largest GEMM one
    assert not _uses_xla_conv(Conv(8, (3, 3)), jnp.ones((2, side, side, 8)))
    assert not _uses_xla_conv(Conv(8, (3, 3), (2, 2)), jnp.ones((2, 2 * side, 2 * side, 8)))
    assert not _uses_xla_conv(Conv(8, (1, 1)), jnp.ones((2, 32, 32, 8)))
    assert _uses_xla_conv(Conv(8, (3, 3)), jnp.ones((2, side + 1, side, 8)))
    assert _uses_xla_conv(Conv(8, (1, 1), impl="xla"), jnp.ones((2, 4, 4, 8)))
    assert not _uses_xla_conv(Conv(8, (5, 5), impl="gemm"), jnp.ones((2, 9, 9, 8)))
    # The rule is queryable without tracing (benchmarks/kernels.py reports it per layer).
    assert Conv(8, (3, 3)).uses_gemm((2, side, side, 8))
    assert not Conv(8, (3, 3)).uses_gemm((side + 1, side, 8))
    assert Conv(8, (3, 3)).formulation((side + 1, side, 8)) == "gemm_grad"
    assert Conv(8, (3, 3), impl="xla").formulation((2, side, side, 8)) == "xla"


def test_conv_bad_input_errors():
    x = jnp.ones((2, 4, 4, 3))
    with pytest.raises(ValueError, match="impl"):
        Conv(4, (3, 3), impl="winograd").init(KEY, x)
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W, C\)"):
        Conv(4, (3, 3)).init(KEY, jnp.ones((4, 3)))
    with pytest.raises(ValueError, match="padding"):
        Conv(4, (3, 3), padding="FULL").init(KEY, x)
    with pytest.raises(ValueError, match="padding"):
        Conv(4, (3, 3), padding=((1, -1), (1, 1))).init(KEY, x)
    with pytest.raises(ValueError, match="larger than the padded input"):
        conv_as_gemm(x, jnp.ones((5, 5, 3, 4)))
    with pytest.raises(ValueError, match="kernel"):
        conv_as_gemm(x, jnp.ones((3, 3, 2, 4)))


# --- adapters ---------------------------------------------------------------------------------


class TinyNNX(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(64, 16, rngs=rngs)
        self.bn = nnx.BatchNorm(16, rngs=rngs)
        self.fc2 = nnx.Linear(16, 4, rngs=rngs)

    def __call__(self, x):
        h = x.reshape((x.shape[0], -1))
        return self.fc2(nnx.relu(self.bn(self.fc1(h))))


def _plain_fn(x):
    return jnp.stack([x.sum(axis=(1, 2, 3)), jnp.sin(x).mean(axis=(1, 2, 3))], axis=-1)


def _logits_fns(built):
    model, variables, _, _ = built["small_cnn"]
    return {
        "linen": as_logits_fn(model, variables),
        "nnx": as_logits_fn(TinyNNX(nnx.Rngs(0))),
        "plain": as_logits_fn(_plain_fn),
    }


@pytest.mark.parametrize("kind", ["linen", "nnx", "plain"])
def test_as_logits_fn_jit_and_vmap(built, kind):
    f = _logits_fns(built)[kind]
    x = _uniform(jax.random.key(8), (3, 2, 8, 8, 1))
    eager = np.stack([np.asarray(f(xb)) for xb in x])
    np.testing.assert_allclose(jax.jit(f)(x[0]), eager[0], rtol=1e-5, atol=1e-6)
    # vmap over stacked batches (e.g. restarts) and over single examples.
    np.testing.assert_allclose(jax.vmap(f)(x), eager, rtol=1e-5, atol=1e-6)
    per_example = jax.jit(jax.vmap(lambda xi: f(xi[None])[0]))(x[0])
    np.testing.assert_allclose(per_example, eager[0], rtol=1e-5, atol=1e-6)


def test_as_logits_fn_plain_callable_becomes_a_pytree():
    f = as_logits_fn(_plain_fn)
    assert isinstance(f, jax.tree_util.Partial) and f.func is _plain_fn
    assert jax.tree.structure(f) == jax.tree.structure(as_logits_fn(_plain_fn))


def test_as_logits_fn_nnx_eval_mode_and_caller_untouched():
    module = TinyNNX(nnx.Rngs(1))
    # Make the running statistics non-trivial so eval and train modes differ.
    module.bn.mean[...] = jnp.full((16,), 0.3)
    module.bn.var[...] = jnp.full((16,), 2.0)
    f = as_logits_fn(module)
    x = _uniform(jax.random.key(9), (4, 8, 8, 1))
    np.testing.assert_allclose(f(x)[:1], f(x[:1]), rtol=1e-5, atol=1e-6)
    assert module.bn.use_running_average is False  # the caller's module keeps its mode
    before = np.asarray(module.bn.mean[...])
    f_train = as_logits_fn(module, train=True)
    assert not np.allclose(f_train(x)[:1], f_train(x[:1]))
    # Weights are captured when the function is made: later updates do not leak in.
    module.fc2.bias[...] = module.fc2.bias[...] + 1.0
    np.testing.assert_allclose(f(x), jax.jit(f)(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(as_logits_fn(module)(x), f(x) + 1.0, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(module.bn.mean[...], before)  # stats update was discarded


@pytest.mark.parametrize("name", ["preact_resnet18", "wide_resnet"])
def test_batchnorm_inference_is_batch_independent(built, name):
    model, variables, shape, _ = built[name]
    # Perturb the running statistics so that inference mode is not the identity.
    stats = jax.tree.map(lambda v: v + 0.1, variables["batch_stats"])
    variables = {**variables, "batch_stats": stats}
    # The same example next to two different companions; equal shapes, so one compilation.
    x = _uniform(jax.random.key(10), (3, *shape))
    y = x.at[1:].set(_uniform(jax.random.key(11), (2, *shape)))
    f = jax.jit(as_logits_fn(model, variables))
    np.testing.assert_allclose(f(x)[0], f(y)[0], rtol=1e-4, atol=1e-5)
    # Training mode uses batch statistics, so there the batch matters (the test has teeth).
    f_train = jax.jit(as_logits_fn(model, variables, train=True))
    assert not np.allclose(f_train(x)[0], f_train(y)[0], atol=1e-4)


def test_as_logits_fn_errors(built):
    model, variables, _, _ = built["small_cnn"]
    with pytest.raises(InputError, match="variables"):
        as_logits_fn(model)
    with pytest.raises(InputError, match="'params'"):
        as_logits_fn(model, variables["params"])
    with pytest.raises(InputError, match=r"only used with a flax\.linen"):
        as_logits_fn(TinyNNX(nnx.Rngs(0)), variables)
    with pytest.raises(InputError, match="cannot make a logits function"):
        as_logits_fn(42)
    with pytest.raises(InputError, match="linen"):
        as_features_fn(_plain_fn, variables)


def test_as_features_fn_jits_and_captures(built):
    model, variables, shape, _ = built["small_cnn"]
    x = _uniform(jax.random.key(12), (2, *shape))
    feats = jax.jit(as_features_fn(model, variables))(x)
    assert set(feats) == {"block1", "block2", "features", "logits"}
    assert feats["block1"].shape == (2, 4, 4, 8)
    captured = as_features_fn(model, variables, capture_intermediates=True)(x)
    assert captured["conv1_1"].shape == (2, 8, 8, 8)
    np.testing.assert_allclose(captured["head"], feats["logits"], rtol=1e-5, atol=1e-6)


# --- registry ---------------------------------------------------------------------------------


def test_create_model_errors():
    with pytest.raises(ConfigError, match=r"'resnet9'.*known models: .*madry_cnn"):
        create_model("resnet9", 10)
    with pytest.raises(ConfigError, match=r"'widht'.*wide_resnet"):
        create_model("wide_resnet", 10, widht=2)
    with pytest.raises(ConfigError, match="depth"):
        create_model("wide_resnet", 10, depth=12)
    with pytest.raises(ConfigError, match="std"):
        create_model("mlp", 10, std=0.0)
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("mlp", 0)
    with pytest.raises(ConfigError, match=r"conv_impl must be one of .*got 'winograd'"):
        create_model("bn_cnn", 10, conv_impl="winograd")
    # A module built directly (not through the registry) names the bad block the same way.
    with pytest.raises(ConfigError, match="'basic' or 'bottleneck', got 'wide'"):
        ResNet(block="wide").init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


@pytest.mark.parametrize("name, shape", [("bn_cnn", (2, 16, 16, 3)), ("madry_cnn", (2, 8, 8, 1))])
def test_cnn_conv_impl_changes_the_formulation_not_the_function(name, shape):
    """`conv_impl` picks how the convolutions run; parameters, logits and input gradients
    are the same for every choice (checkpoints are shared)."""
    x = _uniform(KEY, shape)
    models = {impl: create_model(name, 10, conv_impl=impl) for impl in ("auto", "xla", "gemm")}
    variables = models["auto"].init(KEY, x)
    jax.tree.map(np.testing.assert_array_equal, models["xla"].init(KEY, x), variables)
    ref = None
    for model in models.values():
        out = jax.value_and_grad(lambda x, m=model: jnp.sum(m.apply(variables, x) ** 2))(x)
        if ref is None:
            ref = out
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), out, ref)


def test_create_model_kwargs_and_lists():
    model = create_model("small_cnn", 7, mean=[0.5], std=[0.25], channels=[4, 8], dense=16)
    assert isinstance(model, SmallCNN)
    assert model.channels == (4, 8) and model.mean == (0.5,) and model.num_classes == 7
    assert "dropout" in model_kwargs("wide_resnet")
    assert "num_classes" not in model_kwargs("mlp")
