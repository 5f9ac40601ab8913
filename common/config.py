"""Command line and YAML presets: `--config preset.yaml` sets new defaults, flags given on the command
line override them. Bad input becomes a UsageError, which `run_main` turns into one line and exit 2."""
import dataclasses
import difflib
import os
import signal
import sys
import threading
from typing import Any, Callable, Sequence

import tyro
import yaml


class UsageError(Exception):
    """A problem with what the user asked for; the message names it and says how to fix it."""


def suggest(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _find_config_path(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config":
            if i + 1 >= len(argv):
                raise UsageError("--config needs a path, e.g. --config configs/ppo_continuous_hopper_cleanrl.yaml")
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _coerce(name: str, value: Any, default: Any, path: str) -> Any:
    # YAML reads `1e6` as a string and lists as lists; match the type of the dataclass default.
    try:
        if isinstance(default, bool) or value is None:
            return value
        if isinstance(default, int):
            as_float = float(value)
            if as_float != int(as_float):
                raise ValueError
            return int(as_float)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            return tuple(value)
    except (TypeError, ValueError):
        raise UsageError(f"{path}: '{name}: {value}' is not a valid {type(default).__name__}; fix the value")
    return value


def load_config(path: str, cls: type) -> dict:
    """Read a preset; keys are the flag names (dashes or underscores)."""
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise UsageError(f"config file '{path}' not found; check the path (presets live in configs/)")
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "syntax error"
        raise UsageError(f"config file '{path}' is not valid YAML ({first}); fix the file")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UsageError(f"config file '{path}' must be a mapping of flag: value lines")
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in defaults or name == "config":
            raise UsageError(f"config file '{path}': unknown key '{key}'{suggest(name, defaults)}; "
                             f"remove it or use a flag name from --help")
        values[name] = _coerce(name, value, defaults[name], path)
    return values


def parse_args(cls: type, argv: Sequence[str] | None = None) -> Any:
    argv = list(sys.argv[1:] if argv is None else argv)
    path = _find_config_path(argv)
    default = cls(**load_config(path, cls)) if path else cls()
    return tyro.cli(cls, default=default, args=argv)


def check_positive(args: Any, names: Sequence[str]) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value <= 0:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} must be positive, got {value}; pass a value > 0")


def setup_jax() -> None:
    """Process-wide JAX settings every script uses."""
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")  # TF32 on GPUs breaks RL training
    # The PRNG stays JAX's default threefry: RngBitGenerator ("rbg") keys draw every vmapped seed's bits
    # from the first seed's key, so seed 2 of a --num-seeds run would not repeat a lone --seed 2 run.
    # Compiled programs are kept on disk, so re-running a configuration skips most of XLA's compile time
    # (gymnax CartPole, 1 seed: ~3.5 of ~8 s). JAX_COMPILATION_CACHE_DIR moves the cache and
    # JAX_ENABLE_COMPILATION_CACHE=false turns it off; past 1 GB the least recently used entries go.
    if jax.config.jax_compilation_cache_dir is None:
        cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        cache_dir = os.path.join(cache_home, "jax-rl")
        try:
            os.makedirs(cache_dir, exist_ok=True)
            jax.config.update("jax_compilation_cache_dir", cache_dir)
        except OSError:  # nowhere to write it: compile every time, without a warning per program
            pass
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_compilation_cache_max_size", 2**30)
    try:  # one XLA CPU device per core, so runs can be spread over all cores (common.runner.spread_runs)
        jax.config.update("jax_num_cpu_devices", len(os.sched_getaffinity(0)))
    except RuntimeError:  # JAX has already computed something in this process (tests): keep its devices
        pass


# Set by Ctrl-C. Python raises KeyboardInterrupt wherever the main thread is, and one raised inside a
# garbage-collector callback (JAX has one) is printed and dropped: the run went on. The training loop checks
# this after every chunk, so such an interrupt still stops it.
INTERRUPTED = threading.Event()


def _on_sigint(signum, frame):
    INTERRUPTED.set()
    raise KeyboardInterrupt


def check_interrupted() -> None:
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt


def run_main(main: Callable[[], None]) -> None:
    """Run a script's main: usage errors print one line and exit 2, Ctrl-C exits 130 with everything saved."""
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        main()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: logs are flushed and, with --save-model, the last completed update is saved",
              file=sys.stderr)
        # A compiled chunk may still be running and calling back into Python (Gymnasium envs); a normal
        # interpreter shutdown under it segfaulted. Everything is written and closed by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    finally:
        signal.signal(signal.SIGINT, previous)
