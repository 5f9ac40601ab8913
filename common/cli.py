"""The command line: flags from a script's `Args` dataclass (tyro), YAML presets (`--config`), range checks, and
the entry point that turns bad input into one `error:` line (exit 2) and Ctrl-C into a clean stop (exit 130)."""
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


class Diverged(Exception):
    """Training produced NaN or inf; the message names the step."""


def suggest(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def preset_flags(path: str, cls: type) -> list[str]:
    """A YAML preset (keys are flag names, dashes or underscores) as command-line flags, so that tyro parses
    and type-checks a preset exactly as it does the command line."""
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise UsageError(f"config file '{path}' not found; check the path (presets live in configs/)")
    except yaml.YAMLError as e:
        raise UsageError(f"config file '{path}' is not valid YAML ({str(e).splitlines()[0]}); fix the file")
    if not isinstance(raw, dict):
        raise UsageError(f"config file '{path}' must be a mapping of flag: value lines")
    names = [f.name for f in dataclasses.fields(cls) if f.name != "config"]
    flags = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise UsageError(f"config file '{path}': unknown key '{key}'{suggest(name, names)}; "
                             f"remove it or use a flag name from --help")
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags[key] = [flag if value else "--no-" + flag[2:]]
        else:  # YAML reads 5e6 as a string: a whole number is passed as one, so int flags take it
            values = value if isinstance(value, list) else [value]
            flags[key] = [flag, *(str(int(float(v))) if _is_whole(v) else str(v) for v in values)]
    for key, tokens in flags.items():  # tyro's own types check each value
        try:
            tyro.cli(cls, args=tokens, console_outputs=False)
        except SystemExit:
            raise UsageError(f"config file '{path}': '{key}: {raw[key]}' is not a valid value for {tokens[0]}; "
                             f"fix the value (see --help)")
    return [token for tokens in flags.values() for token in tokens]


def _is_whole(value) -> bool:
    try:
        return not isinstance(value, bool) and float(value).is_integer()
    except (TypeError, ValueError):
        return False


def parse_args(cls: type, argv: Sequence[str] | None = None) -> Any:
    """Flags, with `--config FILE`'s values as defaults that the command line overrides."""
    argv = list(sys.argv[1:] if argv is None else argv)
    path = None
    for i, arg in enumerate(argv):
        if arg == "--config":
            if i + 1 >= len(argv):
                raise UsageError("--config needs a path, e.g. --config configs/ppo_continuous_hopper_cleanrl.yaml")
            path = argv[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
    return tyro.cli(cls, args=(preset_flags(path, cls) if path else []) + argv)


def check_ranges(args: Any, ranges: dict) -> None:
    """`ranges` maps field names to intervals such as "[0, 1]" or "(0, inf)"; unset (None) fields pass."""
    for name, interval in ranges.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        low, high = (float(x) for x in interval[1:-1].split(","))
        if not ((low < value if interval[0] == "(" else low <= value) and
                (value < high if interval[-1] == ")" else value <= high)):
            flag = "--" + name.replace("_", "-")
            positive = interval == "(0, inf)"
            raise UsageError(f"{flag} must be {'positive' if positive else 'in ' + interval}, got {value}; "
                             f"pass a value {'> 0' if positive else 'in ' + interval}")


# Set by Ctrl-C. Python raises KeyboardInterrupt wherever the main thread is, and one raised inside a
# garbage-collector callback (JAX has one) is printed and dropped; the training loop checks this flag too.
INTERRUPTED = threading.Event()


def _on_sigint(signum, frame):
    INTERRUPTED.set()
    raise KeyboardInterrupt


def check_interrupted() -> None:
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt


def run_main(main: Callable[[], None]) -> None:
    """Run a script's main: usage errors print one line and exit 2, a divergence one line and exit 3, Ctrl-C
    exits 130; logs are flushed and, with --save-model, the last good state is saved first."""
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        main()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Diverged as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    except KeyboardInterrupt:
        print("interrupted: logs are flushed and, with --save-model, the last completed update is saved",
              file=sys.stderr)
        # A compiled chunk may still be calling back into Python (Gymnasium envs): an interpreter shutdown
        # under it segfaults, and everything is written and closed by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    finally:
        signal.signal(signal.SIGINT, previous)
