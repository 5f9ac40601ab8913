"""Plain-function MLPs: params are a list of {"w", "b"} dicts, so they jit, vmap and serialise as they are."""
import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "swish": jax.nn.swish, "elu": jax.nn.elu}


def orthonormal_columns(z: jax.Array) -> jax.Array:
    """Gram-Schmidt on the columns of `z` (..., rows, cols): the Q of its QR decomposition with R's diagonal
    positive, as jax.nn.initializers.orthogonal makes it. All-zero columns stay zero."""
    def column(q, j):  # q holds the finished columns, zeros after them
        v = z[..., j]
        for _ in range(2):  # the second pass removes what rounding left of the first ("twice is enough")
            v = v - jnp.einsum("...rc,...c->...r", q, jnp.einsum("...rc,...r->...c", q, v))
        v = v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-30)
        return q.at[..., j].set(v), None

    return jax.lax.scan(column, jnp.zeros_like(z), jnp.arange(z.shape[-1]))[0]


def mlp_init(key: jax.Array, sizes: tuple, out_scale: float, hidden_scale: float = float(np.sqrt(2))) -> list:
    """Orthogonal weights with gain `hidden_scale` (last layer `out_scale`) and zero biases, as in CleanRL.
    Not jax.nn.initializers.orthogonal: its LAPACK QR, vmapped over seeds, can deadlock XLA's CPU thread pool
    on the pinned JAX; one zero-padded Gram-Schmidt loop serves all layers."""
    shapes = [(max(n_in, n_out), min(n_in, n_out)) for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    rows, cols = max(r for r, _ in shapes), max(c for _, c in shapes)
    mask = np.zeros((len(shapes), rows, cols), np.float32)
    for i, (r, c) in enumerate(shapes):
        mask[i, :r, :c] = 1
    q = orthonormal_columns(jax.random.normal(key, mask.shape, jnp.float32) * mask)
    layers = []
    for i, ((r, c), n_in, n_out) in enumerate(zip(shapes, sizes[:-1], sizes[1:])):
        w = q[i, :r, :c] if n_in >= n_out else q[i, :r, :c].T
        scale = out_scale if i == len(shapes) - 1 else hidden_scale
        layers.append({"w": scale * w, "b": jnp.zeros(n_out, jnp.float32)})
    return layers


def mlp_init_torch(key: jax.Array, sizes: tuple, layer_norm: bool = False) -> list:
    """PyTorch's nn.Linear default: weights and biases uniform in +-1/sqrt(fan_in) (CleanRL's SAC uses it).
    With `layer_norm`, each hidden layer also gets a LayerNorm's scale (ones) and offset (zeros)."""
    layers = []
    for i, (k, n_in, n_out) in enumerate(zip(jax.random.split(key, len(sizes) - 1), sizes[:-1], sizes[1:])):
        k_w, k_b = jax.random.split(k)
        bound = 1.0 / np.sqrt(n_in)
        layers.append({"w": jax.random.uniform(k_w, (n_in, n_out), jnp.float32, -bound, bound),
                       "b": jax.random.uniform(k_b, (n_out,), jnp.float32, -bound, bound)})
        if layer_norm and i < len(sizes) - 2:
            layers[-1].update(scale=jnp.ones(n_out, jnp.float32), offset=jnp.zeros(n_out, jnp.float32))
    return layers


def mlp_apply(layers: list, x: jax.Array, activation: str = "tanh") -> jax.Array:
    """Hidden layers: linear, LayerNorm where the layer holds its scale and offset, activation."""
    act = ACTIVATIONS[activation]
    for layer in layers[:-1]:
        x = x @ layer["w"] + layer["b"]
        if "scale" in layer:  # LayerNorm as torch's: features to mean 0, variance 1 (eps 1e-5), scaled, shifted
            x = jax.nn.standardize(x, axis=-1, epsilon=1e-5) * layer["scale"] + layer["offset"]
        x = act(x)
    return x @ layers[-1]["w"] + layers[-1]["b"]
