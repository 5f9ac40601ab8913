import re

import jax
import jax.numpy as jnp
import numpy as np

from common.networks import mlp_apply, mlp_init, mlp_init_torch, orthonormal_columns


def qr_reference(z):
    """numpy's Householder QR, signs fixed so R's diagonal is positive (as jax.nn.initializers.orthogonal)."""
    q, r = np.linalg.qr(z)
    return q * np.sign(np.diag(r))


def test_gram_schmidt_matches_qr():
    rng = np.random.default_rng(0)
    for rows, cols in [(64, 64), (64, 4), (256, 17), (5, 1)]:
        z = rng.standard_normal((rows, cols)).astype(np.float32)
        np.testing.assert_allclose(orthonormal_columns(jnp.asarray(z)), qr_reference(z), atol=2e-5)


def test_zero_padding_leaves_the_real_block_unchanged():
    z = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    padded = np.zeros((2, 8, 8), np.float32)
    padded[0, :3, :3] = z[:, :3]
    padded[1, :6, :3] = z.T
    q = np.asarray(orthonormal_columns(jnp.asarray(padded)))
    np.testing.assert_allclose(q[0, :3, :3], qr_reference(z[:, :3]), atol=2e-5)
    np.testing.assert_allclose(q[1, :6, :3], qr_reference(z.T), atol=2e-5)
    assert not np.isnan(q).any() and (q[:, :, 3:] == 0).all()


def test_mlp_init_is_scaled_orthogonal_with_zero_bias():
    layers = mlp_init(jax.random.PRNGKey(0), (4, 64, 64, 2), out_scale=0.01)
    for layer, (n_in, n_out), scale in zip(layers, [(4, 64), (64, 64), (64, 2)], [np.sqrt(2), np.sqrt(2), 0.01]):
        w = np.asarray(layer["w"], np.float64)
        assert w.shape == (n_in, n_out) and not np.asarray(layer["b"]).any()
        gram = w.T @ w if n_in >= n_out else w @ w.T  # orthonormal columns (tall) or rows (wide)
        np.testing.assert_allclose(gram, scale**2 * np.eye(min(n_in, n_out)), atol=1e-5)


def test_mlp_init_has_no_lapack_call():
    # vmapped LAPACK QR calls running at once deadlocked XLA's 2-thread CPU pool (jit(vmap(init)), 8 seeds)
    jaxpr = str(jax.make_jaxpr(jax.vmap(lambda k: mlp_init(k, (4, 64, 2), 1.0)))(
        jax.vmap(jax.random.PRNGKey)(jnp.arange(8))))
    assert not re.search(r"\b(qr|geqrf|householder_product)\b", jaxpr)


def test_layer_norm_mlp_matches_a_plain_forward_pass():
    layers = mlp_init_torch(jax.random.PRNGKey(0), (5, 32, 16, 1), layer_norm=True)
    assert [sorted(layer) for layer in layers] == [["b", "offset", "scale", "w"]] * 2 + [["b", "w"]]
    rng = np.random.default_rng(0)
    for layer in layers[:-1]:  # away from their initial ones and zeros, so both must be applied
        layer["scale"], layer["offset"] = (jnp.asarray(rng.uniform(0.5, 2.0, layer["b"].shape), jnp.float32),
                                           jnp.asarray(rng.normal(size=layer["b"].shape), jnp.float32))
    x = rng.normal(size=(7, 5)).astype(np.float32) * 10
    h = x.astype(np.float64)
    for layer in layers[:-1]:
        z = h @ np.asarray(layer["w"], np.float64) + np.asarray(layer["b"])
        z = (z - z.mean(1, keepdims=True)) / np.sqrt(z.var(1, keepdims=True) + 1e-5)
        h = np.maximum(z * np.asarray(layer["scale"]) + np.asarray(layer["offset"]), 0.0)
    expected = h @ np.asarray(layers[-1]["w"], np.float64) + np.asarray(layers[-1]["b"])
    np.testing.assert_allclose(mlp_apply(layers, jnp.asarray(x), "relu"), expected, rtol=1e-4, atol=1e-4)
    plain = mlp_init_torch(jax.random.PRNGKey(0), (5, 32, 16, 1))
    assert all(sorted(layer) == ["b", "w"] for layer in plain)
    np.testing.assert_allclose(plain[0]["w"], layers[0]["w"])  # the same weights: only the norm is added
