"""The command line: flags from a script's `Args` dataclass (tyro), YAML presets (`--config`), range checks, and
the entry point that turns bad input into one `error:` line (exit 2) and Ctrl-C into a clean stop (exit 130)."""
import contextlib
import dataclasses
import difflib
import io
import os
import signal
import sys
import threading
import time
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
    types = {f.name: f.type for f in dataclasses.fields(cls) if f.name != "config"}
    flags = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in types:
            raise UsageError(f"config file '{path}': unknown key '{key}'{suggest(name, types)}; "
                             f"remove it or use a flag name from --help")
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags[key] = [flag if value else "--no-" + flag[2:]]
        else:  # YAML reads 5e6 as a string: a whole number is passed as one, so int flags take it
            values = value if isinstance(value, list) else [value]
            whole = "int" in str(types[name])
            flags[key] = [flag, *(str(int(float(v))) if whole and _is_whole(v) else str(v) for v in values)]
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
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            return tyro.cli(cls, args=(preset_flags(path, cls) if path else []) + argv)
    except SystemExit as e:
        if not e.code:  # --help
            raise
        # tyro's message box: its first line says what is wrong, "Perhaps you meant:" the closest flag
        lines = [line.strip("│| ") for line in printed.getvalue().splitlines()]
        lines = [line for line in lines if line.strip("─-+=╭╮╰╯")]  # lines[0] is the box's title
        hint = lines.index("Perhaps you meant:") + 1 if "Perhaps you meant:" in lines else 0
        raise UsageError((lines[1] if len(lines) > 1 else "bad command line") +
                         (f" (did you mean {lines[hint].split()[0]}?)" if 0 < hint < len(lines) else "") +
                         "; see --help")


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


# Ctrl-C (SIGINT) and SIGTERM, which cluster schedulers send before killing a job. The first one sets STOP: the
# training loop stops after its current chunk (a few seconds) with everything written; outside that loop it
# also raises KeyboardInterrupt. A second one quits at once. Python runs signal handlers only when the main
# thread runs Python code, not while it waits in XLA (a compile, a chunk), so a watcher thread counts them:
# the C-level handler writes each signal's number to a pipe (signal.set_wakeup_fd) the moment it arrives.
STOP = threading.Event()
TRAINING = threading.Event()  # set by the training loop while it runs
GRACE = 8.0  # seconds the orderly stop may take before the run quits with what is complete (a long compile)
_received = []
_on_quit = []  # set by the training loop: writes what is complete (logs, last completed chunk's checkpoint)


def _on_signal(signum, frame):
    if not TRAINING.is_set():
        _received.append(signum)
        raise KeyboardInterrupt


def _watch(pipe: int) -> None:
    while True:
        try:
            signum = os.read(pipe, 1)[0]
        except (OSError, IndexError):  # closed when run_main returns
            return os.close(pipe)
        if STOP.is_set():
            os._exit(128 + signum)
        _received.append(signum)
        STOP.set()
        if signum == signal.SIGINT:  # someone at a terminal: say that it was heard (SIGTERM gets one line, at the end)
            print("\nCtrl-C: stopping after the current chunk; press it again to quit at once", file=sys.stderr,
                  flush=True)
        threading.Thread(target=_quit_after_grace, args=(signum,), daemon=True).start()


def _quit_after_grace(signum: int) -> None:
    """The main thread has not stopped within GRACE seconds (it waits in XLA): keep what is complete, quit."""
    time.sleep(GRACE)
    for write_what_is_complete in _on_quit:
        write_what_is_complete()
    print(f"stopped by {signal.Signals(signum).name} while the program was compiling or running a chunk: logs "
          f"are flushed and, with --save-model, the last completed chunk is saved", file=sys.stderr, flush=True)
    os._exit(128 + signum)


def run_main(main: Callable[[], None]) -> None:
    """Run a script's main: usage errors print one line and exit 2, a divergence one line and exit 3; Ctrl-C
    exits 130 and SIGTERM 143, after the logs are flushed and, with --save-model, the last chunk is saved."""
    STOP.clear()
    _received.clear()
    _on_quit.clear()
    read, write = os.pipe()
    os.set_blocking(write, False)
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
    threading.Thread(target=_watch, args=(read,), daemon=True).start()
    try:
        main()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Diverged as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    except KeyboardInterrupt:
        signum = _received[0] if _received else signal.SIGINT
        print(f"stopped by {signal.Signals(signum).name}: logs are flushed and, with --save-model, the last "
              f"completed chunk is saved", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # Exit without interpreter teardown: a compile or host env callback may still be running under it.
        os._exit(128 + signum)
    finally:
        signal.set_wakeup_fd(previous_fd)
        for s, handler in previous.items():
            signal.signal(s, handler)
        os.close(write)
