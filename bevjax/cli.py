"""What the command-line programs share: errors a user can act on end in one line, ``--debug`` shows the trace.

``python -m bevjax.train``, ``python -m bevjax.evaluate`` (absl flags, ml_collections configs) and
``python -m bevjax.data.prepare`` (argparse) report a known user error as::

    error: <what was wrong, naming the file, flag or field, and what to do>
    (--debug shows the traceback)

on stderr with a non-zero exit status: 2 for a bad command line (a misspelled ``--config.a.b`` override, a
config file that is not there, an unknown variant, a value of the wrong type), 1 for a failure of the run (a
missing or damaged file or checkpoint, a diverged run: ``ValueError``, ``OSError``, ``FloatingPointError``,
``CheckpointError``). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import glob
import os
import re
import sys
from collections.abc import Callable, Sequence

DEBUG_HINT = "(--debug shows the traceback)"


def wants_debug(argv: Sequence[str]) -> bool:
    """Whether the command line asks for ``--debug`` (read before the flags are parsed)."""
    return any(a in ("--debug", "--debug=true", "--debug=True", "--debug=1") for a in argv)


def fail(message: str, status: int = 1) -> None:
    """Prints ``error: <message>`` and the ``--debug`` hint to stderr and exits with ``status``."""
    print(f"error: {message}\n{DEBUG_HINT}", file=sys.stderr, flush=True)
    sys.exit(status)


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (ValueError, OSError, FloatingPointError)
    checkpoint = sys.modules.get("bevjax.training.checkpoint")  # imported by whatever could raise it
    return errors + ((checkpoint.CheckpointError,) if checkpoint is not None else ())


def run_reporting_errors(fn: Callable, *args, debug: bool = False, **kwargs):
    """``fn(*args, **kwargs)``; an error a user can act on (a bad config value, a missing or damaged file or
    checkpoint, a diverged run: ValueError, OSError, FloatingPointError, CheckpointError) ends the program with
    ``error: <type>: <message>`` on stderr and exit status 1 (``debug``: the full traceback instead). Anything
    else keeps its traceback."""
    try:
        return fn(*args, **kwargs)
    except _user_errors() as err:
        if debug:
            raise
        fail(f"{type(err).__name__}: {err}")


def check_command_line(argv: Sequence[str]) -> None:
    """Common start of the absl programs: no stray arguments; library INFO/WARNING logs off unless
    ``--verbosity`` is given, so that progress lines stay readable."""
    from absl import app, flags
    from absl import logging as absl_logging

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.ERROR)


# absl / ml_collections flags -----------------------------------------------------------------------------------


def _flag_values(argv: Sequence[str], name: str) -> list[str]:
    """The values given to ``--name`` on the command line (``--name=v`` or ``--name v``)."""
    out = []
    for i, a in enumerate(argv):
        if a.startswith(f"--{name}="):
            out.append(a.split("=", 1)[1])
        elif a == f"--{name}" and i + 1 < len(argv):
            out.append(argv[i + 1])
    return out


def _config_overrides(argv: Sequence[str], name: str = "config") -> list[str]:
    """The ``--config.a.b[=v]`` arguments."""
    return [a for a in argv if a.startswith(f"--{name}.")]


def missing_config_file(argv: Sequence[str], name: str = "config") -> str | None:
    """A message when ``--config path.py[:variant]`` names no file (listing the configs beside it), else None."""
    for value in _flag_values(argv, name):
        path = value.split(":", 1)[0]
        if path and not os.path.isfile(path):
            folder = os.path.dirname(path) or "."
            there = sorted(glob.glob(os.path.join(folder, "*.py")))
            choices = f"; the configs in {folder}/ are {', '.join(there)}" if there else ""
            return f"--{name} {value}: no such file {path!r} (working directory {os.getcwd()}){choices}"
    return None


def _unwrap_text(err: BaseException) -> str:
    """The message of a config-override error; ml_collections wraps a KeyError in an AttributeError, whose
    text is then the KeyError's repr with escaped quotes and newlines."""
    inner = err.args[0] if err.args and isinstance(err.args[0], BaseException) else err
    text = inner.args[0] if inner.args and isinstance(inner.args[0], str) else str(inner)
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def load_config(spec: str):
    """The config of ``spec`` = ``path/to/config.py[:variant]`` (its ``get_config(variant)``), as ``--config`` reads
    it, without overrides.

    Raises:
      FileNotFoundError: no such config file.
    """
    import importlib.util

    path, _, variant = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} (of '{spec}') does not exist")
    module_spec = importlib.util.spec_from_file_location("_bevjax_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()


def _config_fields(argv: Sequence[str], parent: Sequence[str], name: str = "config") -> list[str] | None:
    """The field names under ``parent`` of the config file named by ``--name`` (no overrides), or None."""

    values = _flag_values(argv, name)
    if not values:
        return None
    try:
        node = load_config(values[-1])
        for key in parent:
            node = node[key]
        return sorted(node.keys())
    except Exception:  # noqa: BLE001 (only a hint: the error message stands without it)
        return None


def config_override_message(err: BaseException, argv: Sequence[str], name: str = "config") -> str | None:
    """One line for an error from a ``--config.a.b=v`` override, naming the override, the field that is not
    there, the closest name and the fields that are; None if no override is to blame."""
    overrides = _config_overrides(argv, name)
    if not overrides:
        return None
    text = _unwrap_text(err)
    match = re.match(r"^'([^']+)'\s*(.*)$", text)
    if match is None:
        return f"{' '.join(overrides)}: {text}"
    key, hint = match.group(1), match.group(2)
    for flag in overrides:
        path = flag.split("=", 1)[0][len(f"--{name}.") :].split(".")
        if key in path:
            parent = path[: path.index(key)]
            where = ".".join(parent) or name
            message = f"{flag}: {where} has no field {key!r}"
            close = re.search(r'[Dd]id you mean "([^"]+)"', hint)
            if close:
                message += f" (did you mean {close.group(1)!r}?)"
            fields = _config_fields(argv, parent, name)
            if fields:
                message += f"; its fields: {', '.join(fields)}"
            return message
    return f"{' '.join(overrides)}: the config has no field {key!r}"


def _flags_error_message(err: BaseException) -> str:
    """absl's ``flag --x=v: <why>``; a traceback inside it (an error raised by the config file's
    ``get_config``) is cut down to its last line."""
    text = str(err).strip()
    if "Traceback (most recent call last)" in text:
        head = text.split("\n", 1)[0].rstrip(": ").strip()
        last = [line.strip() for line in text.splitlines() if line.strip()][-1]
        return f"{head.replace('Error whilst parsing config file', '').rstrip(': ')}: {last}"
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl ``flags_parser`` for ``app.run``: parses the flags; a bad command line (a misspelled or mistyped
    ``--config`` override, a config file that is not there, an unknown variant, a flag value of the wrong type)
    ends in one ``error:`` line and exit status 2 (``--debug``: absl's own report and traceback)."""
    from absl import flags

    argv = list(argv)
    debug = wants_debug(argv)
    if not debug:
        missing = missing_config_file(argv)
        if missing:
            fail(missing, status=2)
    try:
        rest = flags.FLAGS(argv)
        if "config" in flags.FLAGS and _flag_values(argv, "config"):
            flags.FLAGS.config  # noqa: B018  (ml_collections loads the file lazily; fail here, not mid-run)
        return rest
    except flags.Error as err:
        if debug:
            raise
        fail(_flags_error_message(err), status=2)
    except (AttributeError, KeyError, TypeError) as err:
        if debug:
            raise
        message = config_override_message(err, argv)
        if message is None:
            raise
        fail(message, status=2)
    except OSError as err:  # the config file could not be read
        if debug:
            raise
        fail(f"--config: {' '.join(str(err).split())}", status=2)
    return []
