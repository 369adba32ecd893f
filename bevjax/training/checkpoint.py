"""Orbax checkpoints of the train state together with the Grain iterator state (wrapped once, here).

Layout: ``<directory>/<step>/state`` (the train state, ``ocp.args.StandardSave``) and
``<directory>/<step>/data`` (the Grain iterator position) as items of one Composite checkpoint.

A resume survives a damaged newest checkpoint (a save killed mid-write on a filesystem without atomic renames,
a truncated file, a deleted item): :meth:`Checkpointer.restore` checks a step before reading it, reads the
newest readable one, and moves each unreadable step aside to ``<directory>/unreadable/`` (never deleting it),
saying so in one line. Saves orbax never finalised (``<step>.orbax-checkpoint-tmp-*``) are moved there too.

:func:`load_params` reads the parameters of an earlier run (``config.init_from``) without its state template.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

_UNREADABLE = "unreadable"  # sub-folder of the checkpoint directory for the steps moved aside
_SUPERSEDED = "superseded"  # steps newer than an explicitly restored one
_TMP_MARK = ".orbax-checkpoint-tmp"  # orbax's name for a save that has not been finalised


class CheckpointError(RuntimeError):
    """A checkpoint step that cannot be read (missing or damaged files)."""


class CheckpointMismatchError(ValueError):
    """A readable checkpoint whose saved tree differs from the template (another config)."""


class Checkpointer:
    """Periodic and final saves of ``state`` (+ data iterator), keep-N, resume from the newest readable step.

    Args:
      directory: where the step folders go (created).
      max_to_keep: how many recent checkpoints stay on disk.

    Attributes:
      restored_step: the step the last :meth:`restore` read (None: nothing was restored).
    """

    def __init__(self, directory: str, max_to_keep: int = 3):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )
        self.restored_step: int | None = None

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state, data_iterator=None, force: bool = False) -> bool:
        """Saves (asynchronously) ``state`` and the iterator position at ``step``."""
        args = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

    def restore(self, state_template, data_iterator=None, step: int | None = None):
        """The saved state (with the template's shardings), restoring the iterator in place.

        With ``step=None`` this is the newest readable step: a step that cannot be read is reported in one
        line, moved to ``<directory>/unreadable/`` and the next newest is tried. :attr:`restored_step` says
        which step was read.

        Args:
          state_template: a pytree of arrays (or ``jax.ShapeDtypeStruct``) with the saved state's structure,
            shapes and shardings.
          data_iterator: a Grain iterator whose position is restored in place (the checkpoint must hold one).
          step: a given step instead of the newest readable one.

        Returns:
          The restored state, or None when the directory holds no checkpoint (or none that can be read:
          those were moved aside).

        Raises:
          CheckpointMismatchError: the saved tree differs from the template (paths, shapes); nothing is moved.
          CheckpointError: the given ``step`` is missing or unreadable; or no step could be read while some
            failed only in their data-iterator item (which a pipeline change can cause); nothing is moved.
        """
        self.restored_step = None
        _quiet_orphaned_reads()
        self.manager.wait_until_finished()
        self._set_aside_unfinished()
        steps = self.all_steps()
        if step is not None:
            if step not in steps:
                raise CheckpointError(
                    f"there is no checkpoint step {step} in {self.directory} (steps there: {steps or 'none'})"
                )
            state, why, _ = self._read(step, state_template, data_iterator)
            if why is not None:
                raise CheckpointError(
                    f"checkpoint step {step} in {self.directory} is unreadable: {why}. Choices: restore "
                    f"another step (--restore_step, steps there: {steps}), or start fresh after moving "
                    f"{os.path.join(self.directory, str(step))} (or the whole folder) elsewhere"
                )
            self.restored_step = step
            return state
        failed = []  # (step, why, certain): certain = damaged files; otherwise maybe a pipeline change
        state = None
        for candidate in reversed(steps):
            state, why, certain = self._read(candidate, state_template, data_iterator)
            if why is None:
                self.restored_step = candidate
                break
            print(f"checkpoint step {candidate} in {self.directory} is unreadable: {why}", flush=True)
            failed.append((candidate, why, certain))
        if self.restored_step is None and not all(certain for _, _, certain in failed):
            listing = "; ".join(f"step {s}: {why}" for s, why, _ in failed)
            raise CheckpointError(
                f"no checkpoint in {self.directory} could be read ({listing}); nothing was moved. The data "
                "iterator's state does not fit this data pipeline or is missing: run with the pipeline that "
                "wrote these checkpoints, or start fresh after moving the folder elsewhere"
            )
        for s, _, _ in failed:
            print(f"moved unreadable checkpoint step {s} to {self._set_aside(str(s))}", flush=True)
        if failed:
            self._reload()
        if self.restored_step is None and failed:
            print(f"no readable checkpoint in {self.directory}: starting from scratch", flush=True)
        return state

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    # -- checks and reads ------------------------------------------------------------------------------------

    def _read(self, step: int, state_template, data_iterator) -> tuple[Any, str | None, bool]:
        """``(state, None, _)``, or ``(None, why, certain)`` when the step cannot be read."""
        step_dir = os.path.join(self.directory, str(step))
        for name, what in (("_CHECKPOINT_METADATA", "file"), ("state", "item"), ("state/_METADATA", "file")):
            if not os.path.exists(os.path.join(step_dir, name)):
                return None, f"{what} {name} is missing (a save that did not finish?)", True
        if data_iterator is not None and not os.path.isdir(os.path.join(step_dir, "data")):
            return None, "item data (the data-iterator state) is missing", False
        try:
            saved = saved_tree(os.path.join(step_dir, "state"))
        except Exception as err:  # noqa: BLE001 - any failure to parse the metadata means unreadable
            return None, _describe(err, step_dir, "state/_METADATA"), True
        check_matches(saved, state_template, f"checkpoint step {step} in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_template)
        try:
            state = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )["state"]
        except Exception as err:  # noqa: BLE001 - the tree matches the template, so the files are at fault
            _collect_orphaned_reads()
            return None, _describe(err, step_dir, "item state"), True
        if data_iterator is not None:
            try:
                self.manager.restore(
                    step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(data_iterator))
                )
            except Exception as err:  # noqa: BLE001
                certain = isinstance(err, (OSError, json.JSONDecodeError, UnicodeDecodeError))
                return None, _describe(err, step_dir, "item data"), certain
        return state, None, True

    # -- moving steps aside ----------------------------------------------------------------------------------

    def set_aside_after(self, step: int) -> list[str]:
        """Moves the steps newer than ``step`` into ``<directory>/superseded/`` (a run resumed from an older
        step writes its own steps in their place), saying so; returns where they went."""
        moved = []
        for s in [s for s in self.all_steps() if s > step]:
            moved.append(self._set_aside(str(s), _SUPERSEDED))
            print(
                f"checkpoint step {s} is newer than the restored step {step}: moved to {moved[-1]}",
                flush=True,
            )
        if moved:
            self._reload()
        return moved

    def _set_aside(self, name: str, folder: str | None = None) -> str:
        """Moves ``<directory>/<name>`` into ``<directory>/<folder>/`` (default ``unreadable/``; a new name if
        taken): the new one."""
        dest_dir = os.path.join(self.directory, folder or _UNREADABLE)
        dest = os.path.join(dest_dir, name)
        if os.path.exists(dest):
            dest = f"{dest}-{time.strftime('%Y%m%d-%H%M%S')}"
            n = 1
            while os.path.exists(dest if n == 1 else f"{dest}-{n}"):
                n += 1
            dest = dest if n == 1 else f"{dest}-{n}"
        if jax.process_index() == 0:
            os.makedirs(dest_dir, exist_ok=True)
            os.rename(os.path.join(self.directory, name), dest)
        return dest

    def _set_aside_unfinished(self) -> None:
        """Moves the folders of saves orbax never finalised (killed mid-write) aside, saying so."""
        if not os.path.isdir(self.directory):
            return
        names = sorted(n for n in os.listdir(self.directory) if _TMP_MARK in n)
        for name in names:
            dest = self._set_aside(name)
            print(f"incomplete save (interrupted mid-write) {name} in {self.directory}: moved to {dest}")
        if names:
            self._reload()

    def _reload(self) -> None:
        if jax.process_count() > 1:
            ocp.multihost.sync_global_processes("bevjax_checkpoint_set_aside")
        self.manager.reload()


# -- saved trees ----------------------------------------------------------------------------------------------


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def flat_paths(tree) -> dict[str, Any]:
    """``{'params/a/kernel': leaf, ...}``: the leaves of ``tree`` by '/'-joined path (dict keys, dataclass
    fields and sequence indices alike, so a saved metadata tree and a live state give the same paths)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(k) for k in path): leaf for path, leaf in leaves}


def saved_tree(item_dir: str):
    """The metadata tree (a nested dict of array metadata with ``.shape`` / ``.dtype``) of a saved
    ``StandardSave`` / ``PyTreeSave`` item, read from its ``_METADATA`` without reading the arrays."""
    return ocp.PyTreeCheckpointHandler().metadata(epath.Path(item_dir)).tree


def _shape(leaf) -> tuple | None:
    shape = getattr(leaf, "shape", None)
    return None if shape is None else tuple(shape)


def _listing(paths: Sequence[str], limit: int = 8, sep: str = ", ") -> str:
    more = f" (+{len(paths) - limit} more)" if len(paths) > limit else ""
    return sep.join(paths[:limit]) + more


def check_matches(saved, template, where: str) -> None:
    """Raises CheckpointMismatchError naming the paths whose presence or shape differs between the saved
    metadata tree and ``template`` (both shapes for each)."""
    have, want = flat_paths(saved), flat_paths(template)
    problems = []
    shapes = [
        f"{p}: saved {_shape(have[p])}, template {_shape(want[p])}"
        for p in want
        if p in have and _shape(have[p]) != _shape(want[p]) and _shape(have[p]) is not None
    ]
    if shapes:
        problems.append("different shapes at " + _listing(shapes, sep="; "))
    missing = [p for p in want if p not in have]
    if missing:
        problems.append("not in the checkpoint: " + _listing(missing))
    extra = [p for p in have if p not in want]
    if extra:
        problems.append("only in the checkpoint: " + _listing(extra))
    if problems:
        raise CheckpointMismatchError(
            f"{where} does not fit the state being restored (trained with another config?): "
            + ". ".join(problems)
            + ". Use another --workdir for this config, or start from that run's parameters with "
            "config.init_from (checkpoint.load_params)"
        )


def _describe(err: Exception, step_dir: str, item: str) -> str:
    """``'ValueError: DATA_LOSS: Error decoding manifest: ... (state/manifest.ocdbt)'``: one short line. Of a
    chain of errors (orbax wraps tensorstore's), the innermost one that names a file or an array is told."""
    chain, e = [], err
    while e is not None and len(chain) < 8:
        chain.append(e)
        e = e.__cause__ or e.__context__
    named = [e for e in chain if 'local file "' in str(e) or "Error reading" in str(e)]
    err = named[-1] if named else err
    text = str(err).split(" [tensorstore_spec")[0].strip()
    array = re.search(r'Error reading "([^"]+)" in OCDBT database at local file "[^"]+": (.*)', text)
    if array:
        code = re.match(r"[A-Z][A-Z_]+: ", text)
        name = array.group(1).rsplit("/", 1)[0]
        return (
            f"{type(err).__name__}: {code.group(0) if code else ''}cannot read array {name}: "
            f"{array.group(2)[:120]} ({item}: a data file of the step is truncated or damaged)"
        )
    text = text.splitlines()[0] if text else ""
    files = [f for f in re.findall(r'local file "([^"]+)"', text) if not f.endswith("/")]
    code = re.match(r"[A-Z][A-Z_]+: ", text)
    tail = text.rsplit('": ', 1)[-1] if files else text
    if code and not tail.startswith(code.group(0)):
        tail = code.group(0) + tail
    if len(tail) > 160:
        tail = tail[:157] + "..."
    where = os.path.relpath(files[-1], step_dir) if files else item
    return f"{type(err).__name__}: {tail} ({where})"


def _collect_orphaned_reads() -> None:
    """Collects the failed restore's other reads now, so that their errors are dropped (by the filters of
    :func:`_quiet_orphaned_reads`) here rather than printed mid-run."""
    gc.collect()


class _OrphanedReadFilter(logging.Filter):
    """Drops asyncio's "Task/Future exception was never retrieved" records of orbax's reads."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "exception was never retrieved" not in text:
            return True
        markers = ("orbax", "_read_array_index", "async_deserialize", "OCDBT database", "TensorStore")
        return not any(m in text for m in markers)


def _quiet_orphaned_reads() -> None:
    """Silences the reports of a failed restore's other reads (before any read: they can come before the
    failure reaches the caller): ``RuntimeError: Event loop is closed``, and the errors of orbax's read
    coroutines that are collected without being awaited (tens of thousands of lines for a truncated data file).

    When one array of a restore fails, orbax closes its event loop while tensorstore still completes the
    other reads; their callbacks then find the loop closed and tensorstore reports each through
    ``sys.unraisablehook`` (a screen of tracebacks, harmless: later restores use a fresh loop). Only that
    exact report is dropped; everything else reaches the previous hook.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_bevjax_quiet", False):
        return

    def hook(unraisable):
        value, obj = unraisable.exc_value, unraisable.object
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        code = getattr(obj, "cr_code", None)  # a read coroutine of the failed restore, collected unawaited
        if code is not None and "orbax" in code.co_filename:
            return
        previous(unraisable)

    hook._bevjax_quiet = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_OrphanedReadFilter())


# -- init_from ------------------------------------------------------------------------------------------------


def _step_dirs(source: str) -> tuple[str, list[tuple[int, str]]]:
    """The checkpoint directory of ``source`` (a workdir, its ``checkpoints/`` or one step folder) and its
    ``(step, folder)`` pairs, newest first."""
    source = os.path.abspath(source)
    if os.path.isdir(os.path.join(source, "checkpoints")):
        source = os.path.join(source, "checkpoints")
    if os.path.isdir(os.path.join(source, "state")):
        name = os.path.basename(source)
        return os.path.dirname(source), [(int(name) if name.isdigit() else -1, source)]
    if not os.path.isdir(source):
        raise FileNotFoundError(f"init_from: {source} does not exist")
    steps = sorted((int(n) for n in os.listdir(source) if n.isdigit()), reverse=True)
    return source, [(s, os.path.join(source, str(s))) for s in steps]


def _under(path: str, prefix: str) -> str | None:
    """The rest of ``path`` below ``prefix`` ('' for the prefix itself), None when it is not below it."""
    if not prefix:
        return path
    if path == prefix:
        return ""
    return path[len(prefix) + 1 :] if path.startswith(prefix + "/") else None


def _join(prefix: str, rest: str) -> str:
    return "/".join(p for p in (prefix, rest) if p)


def _plan(saved: dict, want: dict, pairs: list[tuple[str, str]], where: str) -> dict[str, str]:
    """``{target path: source path}`` for every target leaf a mapping entry covers (the entry with the longest
    target prefix wins); raises one ValueError listing every unmapped, missing or misfitting path."""
    plan, problems = {}, []
    for path in want:
        covering = [(t, s) for s, t in pairs if _under(path, t) is not None]
        if covering:
            t, s = max(covering, key=lambda ts: len(ts[0]))
            plan[path] = _join(s, _under(path, t))
    for s, t in pairs:
        n_target = sum(_under(p, t) is not None for p in want)
        n_source = sum(_under(p, s) is not None for p in saved)
        if n_target == 0 and n_source > 0:
            problems.append(f"the target has nothing under '{t}' (the source has {n_source} under '{s}')")
    missing = [f"{t} <- {s}" for t, s in plan.items() if s not in saved]
    if missing:
        problems.append("not in the source: " + _listing(missing, 20))
    misfits = []
    for t, s in plan.items():
        if s in saved:
            a, b = saved[s], want[t]
            if _shape(a) != _shape(b) or jax.numpy.dtype(a.dtype) != jax.numpy.dtype(b.dtype):
                misfits.append(f"{t} <- {s}: source {_shape(a)} {a.dtype}, target {_shape(b)} {b.dtype}")
    if misfits:
        problems.append("different shape or dtype: " + _listing(misfits, 20, sep="; "))
    if problems:
        under = sorted(p for p in saved if any(_under(p, s) is not None for s, _ in pairs)) or sorted(saved)
        raise ValueError(
            f"init_from {where}: " + ". ".join(problems) + ". Fix init_from.mapping ((source prefix, target "
            f"prefix), ...; source leaves: {_listing(under, 10)}) or leave these paths out of it"
        )
    return plan


def load_params(source: str, step: int | None, target, mapping=(("params", "params"),)):
    """``target`` with the leaves that ``mapping`` names replaced by an earlier run's saved ones (init_from).

    Reads the saved train state's metadata (paths, shapes, dtypes) and then only the mapped arrays, so neither
    that run's config nor its state template is needed. Paths are '/'-joined over the saved tree, whose top
    level is the train state's fields (``params/camencode/...``, ``model_state/batch_stats/...``,
    ``opt_state/...``). Nothing in ``source`` is moved or changed; an unreadable step is reported in one line
    and the next newest one is used (when ``step`` is None).

    The trainer calls it for ``config.init_from``::

        c.init_from = ml_collections.ConfigDict(dict(
            workdir='runs/pretrain',      # '' = off; a workdir, its checkpoints/ folder or one step folder
            step=-1,                      # -1 (or None): the newest readable step
            mapping=(('params/encoder', 'params/backbone'), ('model_state', 'model_state')),
        ))

    Args:
      source: the earlier run's workdir (holding ``checkpoints/``), its checkpoint folder, or a step folder.
      step: the step to read; None or a negative number for the newest readable step.
      target: a pytree (e.g. ``{'params': ..., 'model_state': ...}`` or a train state) of arrays whose leaves
        give the paths, shapes, dtypes and shardings to load onto; leaves not covered by the mapping are kept.
      mapping: ``(source prefix, target prefix)`` pairs or a ``{source prefix: target prefix}`` dict over
        '/'-joined paths (a prefix is whole path components; ``''`` is the whole tree). A target leaf takes
        the entry with the longest target prefix that covers it.

    Returns:
      ``target`` with the mapped leaves loaded; prints ``init_from: loaded N leaves from DIR step S``.

    Raises:
      ValueError: one message listing every mapped target path missing in the source and every path whose
        shape or dtype differs (both given), and a mapping prefix that covers no target leaf.
      CheckpointError: no readable checkpoint (or not the given step) in ``source``.
    """
    pairs = list(mapping.items()) if isinstance(mapping, Mapping) or hasattr(mapping, "items") else mapping
    pairs = [(str(s).strip("/"), str(t).strip("/")) for s, t in pairs]
    directory, candidates = _step_dirs(source)
    _quiet_orphaned_reads()
    if step is not None and step >= 0:
        candidates = [(s, d) for s, d in candidates if s == step]
        if not candidates:
            raise CheckpointError(f"init_from: there is no checkpoint step {step} in {directory}")
    if not candidates:
        raise CheckpointError(f"init_from: no checkpoint in {directory}")
    want = flat_paths(target)
    errors = []
    for s, step_dir in candidates:
        item_dir = os.path.join(step_dir, "state")
        try:
            saved_meta = saved_tree(item_dir)
        except Exception as err:  # noqa: BLE001
            errors.append((s, _describe(err, step_dir, "state/_METADATA")))
            print(f"init_from: checkpoint step {s} in {directory} is unreadable: {errors[-1][1]}", flush=True)
            continue
        saved = flat_paths(saved_meta)
        plan = _plan(saved, want, pairs, f"{directory} step {s}")
        needed = {src: want[t] for t, src in plan.items()}

        def wanted(path, meta, needed=needed):
            name = "/".join(_key_name(k) for k in path)
            if name not in needed:
                return ocp.PLACEHOLDER
            like = needed[name]
            sharding = getattr(like, "sharding", None) or jax.sharding.SingleDeviceSharding(jax.devices()[0])
            return jax.ShapeDtypeStruct(_shape(meta), meta.dtype, sharding=sharding)

        item = jax.tree_util.tree_map_with_path(wanted, saved_meta)
        try:
            restored = ocp.PyTreeCheckpointer().restore(
                item_dir,
                args=ocp.args.PyTreeRestore(
                    item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item)
                ),
            )
        except Exception as err:  # noqa: BLE001
            if step is not None and step >= 0:
                raise CheckpointError(
                    f"init_from: checkpoint step {s} in {directory} is unreadable: "
                    f"{_describe(err, step_dir, 'item state')}"
                ) from err
            errors.append((s, _describe(err, step_dir, "item state")))
            print(f"init_from: checkpoint step {s} in {directory} is unreadable: {errors[-1][1]}", flush=True)
            continue
        values = flat_paths(restored)
        leaves, treedef = jax.tree_util.tree_flatten_with_path(target)
        out = [
            values[plan[name]] if name in plan else leaf
            for name, leaf in ((("/".join(_key_name(k) for k in p)), leaf) for p, leaf in leaves)
        ]
        print(f"init_from: loaded {len(plan)} leaves from {directory} step {s}", flush=True)
        return jax.tree_util.tree_unflatten(treedef, out)
    listing = "; ".join(f"step {s}: {why}" for s, why in errors)
    raise CheckpointError(f"init_from: no readable checkpoint in {directory} ({listing})")
