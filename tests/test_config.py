import os
import subprocess
import sys

import pytest

from common.config import UsageError, load_config, parse_args
from conftest import ROOT
from ppo_continuous import Args


def write(tmp_path, text):
    path = tmp_path / "preset.yaml"
    path.write_text(text)
    return str(path)


def test_preset_sets_defaults_and_flags_override(tmp_path):
    path = write(tmp_path, "env-id: brax/ant\nnum_envs: 16\nlearning_rate: 1e-3\ntotal-timesteps: 5e6\n"
                           "actor_hidden: [32, 32]\nanneal_lr: false\n")
    args = parse_args(Args, ["--config", path, "--num-envs", "8"])
    assert args.env_id == "brax/ant" and args.num_envs == 8  # flag beats preset
    assert args.learning_rate == 1e-3 and args.total_timesteps == 5_000_000  # YAML's 5e6 string coerced
    assert args.actor_hidden == (32, 32) and args.anneal_lr is False
    assert args.gamma == Args().gamma  # untouched keys keep the script default
    assert parse_args(Args, [f"--config={path}"]).num_envs == 16


def test_shipped_presets_load():
    import glob
    presets = glob.glob("configs/ppo_continuous_*.yaml")
    assert len(presets) >= 3
    for path in presets:
        parse_args(Args, ["--config", path])


@pytest.mark.parametrize("text, message", [
    ("num_env: 4\n", "unknown key 'num_env' (did you mean num_envs"),
    ("num_envs: [4\n", "is not valid YAML"),
    ("- 1\n- 2\n", "must be a mapping"),
    ("num_envs: 2.5\n", "not a valid int"),
])
def test_bad_presets(tmp_path, text, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(write(tmp_path, text), Args)


def test_missing_preset():
    with pytest.raises(UsageError, match="not found"):
        parse_args(Args, ["--config", "configs/nope.yaml"])


# compiles one tiny program after setup_jax (cached whatever its compile time) and prints the cache directory
CACHE_PROBE = ("import jax, jax.numpy as jnp; from common.config import setup_jax; setup_jax(); "
               "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0); "
               "jax.jit(lambda x: jnp.sin(x) @ x)(jnp.ones((4, 4))).block_until_ready(); "
               "print(jax.config.jax_compilation_cache_dir)")


@pytest.mark.parametrize("override", [None, "moved", "off", "unwritable"])
def test_compiled_programs_are_cached_on_disk(tmp_path, override):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "home")
    expected = tmp_path / "home" / "jax-rl"
    if override == "moved":
        env["JAX_COMPILATION_CACHE_DIR"] = expected = str(tmp_path / "moved")
    if override == "off":
        env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    if override == "unwritable":  # no cache, and no warning for every compiled program
        env["XDG_CACHE_HOME"], expected = "/proc/no-such-dir", None
    out = subprocess.run([sys.executable, "-c", CACHE_PROBE], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(expected)
    assert "compilation cache" not in out.stderr, out.stderr
    entries = os.listdir(expected) if expected and os.path.isdir(expected) else []
    assert any(e.startswith("jit_") for e in entries) == (override in (None, "moved")), entries
