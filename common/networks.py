"""Plain-function MLPs: params are a list of {"w", "b"} dicts, so they jit, vmap and pickle as they are."""
import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "swish": jax.nn.swish, "elu": jax.nn.elu}


def mlp_init(key: jax.Array, sizes: tuple, out_scale: float, hidden_scale: float = float(np.sqrt(2))) -> list:
    """Orthogonal weights with gain `hidden_scale` (last layer `out_scale`) and zero biases, as in CleanRL."""
    keys = jax.random.split(key, len(sizes) - 1)
    layers = []
    for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
        scale = out_scale if i == len(sizes) - 2 else hidden_scale
        w = jax.nn.initializers.orthogonal(scale)(k, (n_in, n_out), jnp.float32)
        layers.append({"w": w, "b": jnp.zeros(n_out, jnp.float32)})
    return layers


def mlp_init_torch(key: jax.Array, sizes: tuple) -> list:
    """PyTorch's nn.Linear default: weights and biases uniform in +-1/sqrt(fan_in) (CleanRL's SAC uses it)."""
    layers = []
    for k, n_in, n_out in zip(jax.random.split(key, len(sizes) - 1), sizes[:-1], sizes[1:]):
        k_w, k_b = jax.random.split(k)
        bound = 1.0 / np.sqrt(n_in)
        layers.append({"w": jax.random.uniform(k_w, (n_in, n_out), jnp.float32, -bound, bound),
                       "b": jax.random.uniform(k_b, (n_out,), jnp.float32, -bound, bound)})
    return layers


def mlp_apply(layers: list, x: jax.Array, activation: str = "tanh") -> jax.Array:
    act = ACTIVATIONS[activation]
    for layer in layers[:-1]:
        x = act(x @ layer["w"] + layer["b"])
    return x @ layers[-1]["w"] + layers[-1]["b"]
