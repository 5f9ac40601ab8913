import glob
import os
import subprocess
import sys
import types

import pytest
import yaml

import ppo_continuous
import ppo_discrete
import sac
from common.cli import UsageError, check_ranges, parse_args, preset_flags
from conftest import ROOT
from ppo_continuous import Args

SCRIPTS = {"ppo_continuous": ppo_continuous, "ppo_discrete": ppo_discrete, "sac": sac}


def write(tmp_path, text):
    path = tmp_path / "preset.yaml"
    path.write_text(text)
    return str(path)


def test_preset_sets_defaults_and_flags_override(tmp_path):
    path = write(tmp_path, "env-id: brax/ant\nnum_envs: 16\nlearning_rate: 1e-3\ntotal-timesteps: 5e6\n"
                           "actor_hidden: [32, 32]\nanneal_lr: false\nmax_grad_norm: null\n")
    args = parse_args(Args, ["--config", path, "--num-envs", "8"])
    assert args.env_id == "brax/ant" and args.num_envs == 8  # flag beats preset
    assert args.learning_rate == 1e-3 and args.total_timesteps == 5_000_000  # YAML's 5e6 string taken as an int
    assert args.actor_hidden == (32, 32) and args.anneal_lr is False and args.max_grad_norm is None
    assert args.gamma == Args().gamma  # untouched keys keep the script default
    assert parse_args(Args, [f"--config={path}"]).num_envs == 16
    assert parse_args(Args, ["--config", path, "--anneal-lr"]).anneal_lr is True


def test_preset_becomes_flags(tmp_path):
    path = write(tmp_path, "num-envs: 2e1\nanneal_lr: false\nnorm_adv: true\nactor_hidden: [8, 4]\n")
    assert preset_flags(path, Args) == ["--num-envs", "20", "--no-anneal-lr", "--norm-adv",
                                        "--actor-hidden", "8", "4"]


def script_of(path):
    name = os.path.basename(path)
    (script,) = [s for s in SCRIPTS if name.startswith(s + "_")]
    return SCRIPTS[script]


def expected_value(value, current):
    """A YAML value as the parsed field should hold it: lists become tuples, numbers (YAML reads 3e-4 as a
    string) become the field's number type."""
    if isinstance(value, list):
        return tuple(type(c)(v) for v, c in zip(value, current)) if len(value) == len(current) else tuple(value)
    if isinstance(value, (str, int, float)) and isinstance(current, (int, float)) and not isinstance(current, bool):
        return type(current)(float(value))
    return value


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml"))),
                         ids=os.path.basename)
def test_every_shipped_preset_parses_with_its_own_script(path):
    module = script_of(path)
    with open(path) as f:
        raw = yaml.safe_load(f)
    assert raw, path
    args = parse_args(module.Args, ["--config", path])
    module.check_args(args)  # and passes the script's own checks
    for key, value in raw.items():
        got = getattr(args, key.replace("-", "_"))
        assert got == expected_value(value, got), (key, value, got)
    assert args.config == path


def test_presets_cover_the_continuous_scripts():
    names = [os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "configs", "*.yaml"))]
    assert sum(n.startswith("ppo_continuous_") for n in names) >= 3 and sum(n.startswith("sac_") for n in names) >= 2
    assert all(any(n.startswith(s + "_") for s in SCRIPTS) for n in names), names  # every preset has its script


@pytest.mark.parametrize("text, message", [
    ("num_env: 4\n", "unknown key 'num_env' (did you mean num_envs"),
    ("num_envs: [4\n", "is not valid YAML"),
    ("- 1\n- 2\n", "must be a mapping"),
    ("num_envs: 2.5\n", "'num_envs: 2.5' is not a valid value for --num-envs"),
    ("activation: [relu, tanh]\n", "is not a valid value for --activation"),
    ("anneal_lr: maybe\n", "is not a valid value for --anneal-lr"),
])
def test_bad_presets(tmp_path, text, message):
    path = write(tmp_path, text)
    for load in (lambda: preset_flags(path, Args), lambda: parse_args(Args, ["--config", path])):
        with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("[", r"\[")):
            load()


def test_missing_preset():
    with pytest.raises(UsageError, match="not found"):
        parse_args(Args, ["--config", "configs/nope.yaml"])
    with pytest.raises(UsageError, match="--config needs a path"):
        parse_args(Args, ["--config"])


@pytest.mark.parametrize("values, message", [
    (dict(gamma=1.5), "--gamma must be in [0, 1], got 1.5; pass a value in [0, 1]"),
    (dict(gamma=-0.1), "--gamma must be in [0, 1], got -0.1"),
    (dict(num_envs=0), "--num-envs must be positive, got 0; pass a value > 0"),
    (dict(tau=0.0), "--tau must be in (0, 1], got 0.0"),
    (dict(ent_coef=-1.0), "--ent-coef must be in [0, inf), got -1.0"),
])
def test_check_ranges_messages(values, message):
    ranges = {"gamma": "[0, 1]", "num_envs": "(0, inf)", "tau": "(0, 1]", "ent_coef": "[0, inf)"}
    with pytest.raises(UsageError) as info:
        check_ranges(types.SimpleNamespace(**{**dict(gamma=0.9, num_envs=1, tau=1.0, ent_coef=0.0), **values}),
                     ranges)
    assert str(info.value).startswith(message), str(info.value)


def test_check_ranges_accepts_bounds_and_unset_values():
    check_ranges(types.SimpleNamespace(gamma=0.0, lam=1.0, tau=1.0, x=None),
                 {"gamma": "[0, 1]", "lam": "[0, 1]", "tau": "(0, 1]", "x": "(0, inf)", "absent": "(0, inf)"})


# compiles one tiny program after setup_jax (cached whatever its compile time) and prints the cache directory
CACHE_PROBE = ("import jax, jax.numpy as jnp; from common.runner import setup_jax; setup_jax(); "
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


def test_preset_numbers_become_whole_only_for_int_flags(tmp_path):
    path = tmp_path / "preset.yaml"
    path.write_text("exp_name: 1e3\nwandb_entity: '007'\ntotal_timesteps: 2.0e+6\nactor_hidden: [3.0e+1, 32]\n")
    args = parse_args(Args, ["--config", str(path)])
    assert args.exp_name == "1e3" and args.wandb_entity == "007"  # text stays text
    assert args.total_timesteps == 2_000_000 and args.actor_hidden == (30, 32)


@pytest.mark.parametrize("preset", ["sac_hopper_cleanrl.yaml", "sac_halfcheetah_cleanrl.yaml"])
def test_sac_cleanrl_presets_are_the_defaults(preset):
    # the presets pin CleanRL's settings, which sac.py's defaults also are: the baselines judge them as one setup
    path = os.path.join(ROOT, "configs", preset)
    pinned = vars(parse_args(sac.Args, ["--config", path]))
    defaults = vars(parse_args(sac.Args, ["--env-id", pinned["env_id"]]))
    assert {k: v for k, v in pinned.items() if k != "config"} == {k: v for k, v in defaults.items() if k != "config"}
