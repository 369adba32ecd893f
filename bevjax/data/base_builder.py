"""The base of the bevjax TFDS builders (``bevjax_world``, ``bevjax_nuscenes``, ``bevjax_av2``) and the data dir.

:class:`BevjaxBuilder` is what the three builders share: ``array_record`` files (random access, no TensorFlow),
predefined configs passed by name (TFDS pickles builders by their keyword arguments), generation settings that
are not content (progress callbacks, worker processes, options), records in generation order
(``disable_shuffling``), the config in ``metadata.json`` under ``METADATA_KEY`` (from which custom configs are
reopened by name), and :meth:`BevjaxBuilder.prepare` with a progress bar.

Layering: this module builds on :mod:`bevjax.data.records` only; the dataset builders subclass it and know
nothing of the sources, the registry or the command line above them.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

from bevjax.data.records import ordered_map, stored_features

DATA_DIR_ENV = "BEVJAX_DATA_DIR"


def default_data_dir() -> str:
    """The data dir used when none is given: ``$BEVJAX_DATA_DIR`` or ``~/bevjax_data``.

    Returns:
      An absolute path (not created).
    """
    return os.path.abspath(os.path.expanduser(os.environ.get(DATA_DIR_ENV) or "~/bevjax_data"))


def _no_state() -> None:
    return None


class BevjaxBuilder(tfds.core.GeneratorBasedBuilder):
    """The shared part of the bevjax builders.

    Subclasses set the TFDS class attributes (``name``, ``VERSION``, ``BUILDER_CONFIGS``, ...) and:

    - ``PREDEFINED_CONFIGS``: ``{name: config}``;
    - ``METADATA_KEY``: the ``metadata.json`` entry holding ``config.to_json()``;
    - ``TITLE``: the dataset's name in messages (``'world'``, ``'nuScenes'``, ``'Argoverse 2'``);
    - :meth:`config_from_json`: the config back from ``to_json()``.

    Their configs have ``spec()`` (a decoded record), ``stored()`` (the record as stored) and ``to_json()``.
    """

    PREDEFINED_CONFIGS: Mapping[str, Any] = {}
    METADATA_KEY = ""
    TITLE = ""

    def __init__(self, *, file_format: str | None = "array_record", **kw):
        """Args: ``file_format`` (default ``array_record``) and the ``tfds.core.DatasetBuilder`` keywords
        (``data_dir``, ``config``: a name or a config object, ...)."""
        self._progress, self._total, self._workers, self._generation = None, None, 0, {}
        config = kw.get("config")
        if (
            config is not None
            and not isinstance(config, str)
            and self.PREDEFINED_CONFIGS.get(config.name) is config
        ):
            # By name: TFDS pickles a builder as its init kwargs and refuses an unpickled copy of a class config.
            kw["config"] = config.name
        super().__init__(file_format=file_format, **kw)

    # Configs --------------------------------------------------------------------------------------------------

    @classmethod
    def config_from_json(cls, d: Mapping[str, Any]):
        """The config written by ``config.to_json()`` (stored in ``metadata.json``)."""
        raise NotImplementedError(f"{cls.__name__} does not rebuild configs from metadata")

    @classmethod
    def config_from_prepared(cls, data_dir: str | epath.PathLike, name: str):
        """The config stored in ``metadata.json`` of a prepared ``<dataset>/<name>``, or None if absent.

        Args:
          data_dir: the TFDS data dir.
          name: the config name (e.g. ``custom_0123456789``).

        Returns:
          The config (newest prepared version), or None when no prepared copy with metadata exists.
        """
        root = epath.Path(data_dir) / cls.name / name
        if not root.exists():
            return None
        for version_dir in sorted(root.iterdir(), reverse=True):
            meta = version_dir / "metadata.json"
            if meta.exists():
                d = json.loads(meta.read_text())
                if cls.METADATA_KEY in d:
                    return cls.config_from_json(d[cls.METADATA_KEY])
        return None

    @classmethod
    def resolve_config(cls, data_dir: str | epath.PathLike | None, config):
        """A config from a config object or a name (predefined, or a prepared custom one in ``data_dir``).

        Raises:
          ValueError: naming the predefined configs and where a custom one was looked for.
        """
        if not isinstance(config, str):
            return config
        if config in cls.PREDEFINED_CONFIGS:
            return cls.PREDEFINED_CONFIGS[config]
        found = cls.config_from_prepared(data_dir, config) if data_dir is not None else None
        if found is None:
            raise ValueError(
                f"unknown {cls.TITLE} config '{config}': not predefined ({sorted(cls.PREDEFINED_CONFIGS)}) and "
                f"no prepared copy with metadata under {data_dir}/{cls.name}/{config}; pass the config object "
                "instead"
            )
        return found

    # Generation -----------------------------------------------------------------------------------------------

    def set_generation(
        self,
        progress: Callable[[], Any] | None = None,
        total: Callable[[int], Any] | None = None,
        workers: int = 0,
        **options,
    ) -> None:
        """How ``download_and_prepare`` runs: a callable per record, one told the number of records once the
        raw data is read, worker processes, builder options."""
        self._progress, self._total = progress, total
        self._workers, self._generation = int(workers), dict(options)

    def _announce(self, num_records: int) -> None:
        """Tells the ``total`` callable of :meth:`set_generation` how many records all splits will hold."""
        if self._total is not None:
            self._total(num_records)

    def _generate_records(self, fn, items: list, initializer=_no_state) -> Iterator[tuple[int, dict]]:
        """``(index, fn(state, item))`` in order (see :func:`~bevjax.data.records.ordered_map`); records whose
        ``_points_cut`` is set are counted and reported at the end."""
        cut = 0
        for index, ex in enumerate(ordered_map(fn, items, initializer, self._workers)):
            cut += ex.pop("_points_cut", 0)
            if self._progress is not None:
                self._progress()
            yield index, ex
        if cut:
            print(
                f"{self.name}: {cut} of {len(items)} records filled all num_points slots (points may be cut)"
            )

    def prepare(self, manual_dir: str | None = None, *, progress: bool = True, **generation) -> BevjaxBuilder:
        """Runs ``download_and_prepare`` (a no-op when already prepared) with a tqdm bar over the records.

        Args:
          manual_dir: the raw data (TFDS's manual dir); None for builders that need none (the world).
          progress: show a tqdm bar (with ETA) whose total the builder sets once it knows it.
          **generation: :meth:`set_generation` arguments (``workers``, builder options).

        Returns:
          The prepared builder, reopened on the info written to disk.
        """
        if self.is_prepared():
            return self
        cfg = self.builder_config
        if manual_dir is not None and not (os.path.isdir(manual_dir) and os.listdir(manual_dir)):
            raise FileNotFoundError(
                f"{self.name}/{cfg.name}: the raw data folder {manual_dir} does not exist or is empty; "
                f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}"
            )
        bar = None
        if progress:
            from bevjax.progress import close_progress, progress_bar

            bar = progress_bar(f"{self.name}/{cfg.name}", "record")
        self.set_generation(
            progress=None if bar is None else bar.update,
            total=None if bar is None else (lambda n: bar.reset(total=n)),
            **generation,
        )
        download_config = None
        self._bevjax_manual_dir = manual_dir
        if manual_dir is not None:
            download_config = tfds.download.DownloadConfig(manual_dir=str(manual_dir))
        shown = tfds.core.utils.tqdm_utils._active  # TFDS's own bars would interleave with ours
        tfds.display_progress_bar(False)
        ok = False
        try:
            self.download_and_prepare(download_config=download_config)
            ok = True
        finally:
            tfds.display_progress_bar(shown)
            if bar is not None:
                close_progress(bar, ok)
        print(f"prepared {self.name}/{cfg.name} in {self.data_path}", flush=True)
        return type(self)(data_dir=self.data_dir_root, config=cfg)

    # TFDS ------------------------------------------------------------------------------------------------------

    def is_prepared(self) -> bool:
        """Whether the files are there, without TFDS's warning about a folder not prepared yet."""
        return (epath.Path(self.data_path) / "dataset_info.json").exists() and super().is_prepared()

    def _log_download_bytes(self) -> None:  # TFDS says "Downloading and preparing"; nothing is downloaded
        source = self._manual_dir_text()
        print(f"preparing {self.name}/{self.builder_config.name}{source} into {self.data_path}", flush=True)

    def _log_download_done(self) -> None:  # said by prepare() once its progress report is closed
        pass

    def _manual_dir_text(self) -> str:
        manual = getattr(self, "_bevjax_manual_dir", None)
        return f" from {manual}" if manual else ""

    # TFDS's own ``code_path`` needs the ``importlib_resources`` backport (absent here) for any builder outside
    # tensorflow_datasets; the answer is simply the subclass's file (there is no checksums file next to it).
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(inspect.getfile(cls))

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=(inspect.getmodule(type(self)).__doc__ or "").split("\n\n")[0],
            features=stored_features(cfg.stored()),
            disable_shuffling=True,  # record i of a split is the i-th generated one
            metadata=tfds.core.MetadataDict({self.METADATA_KEY: cfg.to_json()}),
        )
