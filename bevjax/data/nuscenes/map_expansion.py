"""nuScenes map-expansion vector layers rasterised onto the BEV grid.

Format: one JSON per location, ``<dataroot>/maps/expansion/<location>.json``. Geometry tables ``node``
(token, x, y: global frame, metres), ``line`` (node_tokens), ``polygon`` (exterior_node_tokens, holes:
[{node_tokens}]); layers ``drivable_area`` (polygon_tokens), ``ped_crossing``, ``walkway``, ``stop_line``,
``carpark_area`` (polygon_token each), ``road_divider``, ``lane_divider`` (line_token each).

Frames: map points are global (x, y, z = 0), brought to the ego frame by ``invert_rigid(ego_to_global)``;
cell (i, j) of a ``[nx, ny]`` layer is centred at (xmin + (i + 0.5) step_x, ymin + (j + 0.5) step_y).

Drawn with :mod:`bevjax.data.raster` (PIL): polygons filled (holes cut out) and sampled at the cell
centres, dividers (road and lane dividers together) as polylines ``max(1, round(line_width_m / step))``
pixels wide, one pixel by default.
Only geometry whose global bounding box meets the grid's footprint (plus a margin) is drawn.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bevjax.data import raster
from bevjax.geometry.grid import BEVGrid
from bevjax.geometry.transforms import invert_rigid, transform_points

LOCATIONS = ("boston-seaport", "singapore-onenorth", "singapore-queenstown", "singapore-hollandvillage")

# BEV class -> map-expansion layers drawn into it (class names of ``bevjax.schema.BEV_CLASSES``).
POLYGON_LAYERS: dict[str, tuple[str, ...]] = {
    "drivable_area": ("drivable_area",),
    "ped_crossing": ("ped_crossing",),
    "walkway": ("walkway",),
    "stop_line": ("stop_line",),
    "carpark_area": ("carpark_area",),
}
LINE_LAYERS: dict[str, tuple[str, ...]] = {"divider": ("road_divider", "lane_divider")}
MAP_CLASSES: tuple[str, ...] = (*POLYGON_LAYERS, *LINE_LAYERS)

# Divider width: None = one cell, the thinnest raster that stays connected. Painted markings are 0.1-0.2 m
# wide, less than a cell of the default 0.5 m grid, so a wider default would only inflate the class.
DEFAULT_LINE_WIDTH_M: float | None = None

_Box = tuple[float, float, float, float]  # xmin, ymin, xmax, ymax (global frame)


def _boxes(shapes: list[np.ndarray]) -> np.ndarray:
    """[n, 4] (xmin, ymin, xmax, ymax) of a list of [k, 2] vertex arrays."""
    if not shapes:
        return np.zeros((0, 4))
    return np.array([[*s.min(0), *s.max(0)] for s in shapes], np.float64)


class MapExpansion:
    """One location's map-expansion vectors, indexed for BEV raster queries.

    Attributes:
      path: the JSON file.
      nodes: token -> index into ``xy``; ``xy`` [N, 2] float64 global (x, y) of all nodes.
      lines: token -> [k, 2] vertices.
      polygons: token -> ([k, 2] exterior, list of [m, 2] holes).
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: nuScenes map-expansion file not found")
        with open(self.path) as fh:
            tables = json.load(fh)

        def table(name: str) -> list[dict]:
            if not isinstance(tables, dict) or name not in tables:
                raise KeyError(f"{self.path}: map-expansion file has no '{name}' table")
            return tables[name]

        nodes = table("node")
        self.nodes = {n["token"]: k for k, n in enumerate(nodes)}
        self.xy = np.array([[n["x"], n["y"]] for n in nodes], np.float64).reshape(-1, 2)

        def coords(node_tokens, where: str) -> np.ndarray:
            try:
                return self.xy[[self.nodes[t] for t in node_tokens]].reshape(-1, 2)
            except KeyError as err:
                raise KeyError(f"{self.path}: {where} references missing node {err.args[0]!r}") from None

        self.lines = {r["token"]: coords(r["node_tokens"], f"line {r['token']}") for r in table("line")}
        self.polygons = {}
        for r in table("polygon"):
            where = f"polygon {r['token']}"
            holes = [coords(h["node_tokens"], where) for h in r.get("holes", [])]
            self.polygons[r["token"]] = (
                coords(r["exterior_node_tokens"], where),
                [h for h in holes if len(h)],
            )

        def ref(index: dict, kind: str, layer: str, token):
            if token not in index:
                raise KeyError(f"{self.path}: {layer} references missing {kind} {token!r}")
            return index[token]

        # Per BEV class: the drawable geometry and its global bounding boxes, computed once.
        self._polygon_shapes: dict[str, list[tuple[np.ndarray, list[np.ndarray]]]] = {}
        for name, layers in POLYGON_LAYERS.items():
            shapes = []
            for layer in layers:
                for rec in table(layer):
                    tokens = rec["polygon_tokens"] if "polygon_tokens" in rec else [rec["polygon_token"]]
                    for token in tokens:
                        if token is None:  # a null token has no geometry
                            continue
                        shape = ref(self.polygons, "polygon", layer, token)
                        if len(shape[0]) >= 3:
                            shapes.append(shape)
            self._polygon_shapes[name] = shapes
        self._line_shapes: dict[str, list[np.ndarray]] = {}
        for name, layers in LINE_LAYERS.items():
            shapes = []
            for layer in layers:
                for rec in table(layer):
                    if rec.get("line_token") is None:
                        continue
                    line = ref(self.lines, "line", layer, rec["line_token"])
                    if len(line) >= 2:
                        shapes.append(line)
            self._line_shapes[name] = shapes
        self._boxes = {name: _boxes([ext for ext, _ in s]) for name, s in self._polygon_shapes.items()}
        self._boxes.update({name: _boxes(s) for name, s in self._line_shapes.items()})

    @classmethod
    def find(cls, dataroot, location: str) -> MapExpansion | None:
        """The map of ``location`` under ``<dataroot>/maps/expansion/``, or None where that file is absent."""
        path = Path(dataroot) / "maps" / "expansion" / f"{location}.json"
        return cls(path) if path.is_file() else None

    def __len__(self) -> int:
        """Number of drawable shapes over all classes."""
        return sum(len(b) for b in self._boxes.values())

    @staticmethod
    def window(ego_to_global, grid: BEVGrid, margin: float = 0.0) -> _Box:
        """Global (xmin, ymin, xmax, ymax) box around the grid's footprint, grown by ``margin`` metres."""
        (x0, x1, _), (y0, y1, _) = grid.xbound, grid.ybound
        corners = np.array([[x0, y0, 0.0], [x1, y0, 0.0], [x1, y1, 0.0], [x0, y1, 0.0]])
        xy = transform_points(np.asarray(ego_to_global, np.float64), corners)[:, :2]
        lo, hi = xy.min(0) - margin, xy.max(0) + margin
        return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])

    def indices_in(self, window: _Box) -> dict[str, np.ndarray]:
        """Per class, the indices of the shapes whose bounding box intersects ``window``."""
        x0, y0, x1, y1 = window
        out = {}
        for name, b in self._boxes.items():
            hit = (b[:, 2] >= x0) & (b[:, 0] <= x1) & (b[:, 3] >= y0) & (b[:, 1] <= y1)
            out[name] = np.flatnonzero(hit)
        return out

    def raster(
        self, ego_to_global, grid: BEVGrid, line_width_m: float | None = DEFAULT_LINE_WIDTH_M
    ) -> dict[str, np.ndarray]:
        """``{class: [nx, ny] uint8}`` 0/1 layers of ``MAP_CLASSES`` for a [4, 4] ego -> global pose.

        Polygon layers are 1 where the cell centre lies in a polygon (outside its holes); dividers are
        ``max(1, round(line_width_m / step))`` pixels wide (step: the smaller grid step; None: one pixel).
        """
        ego_to_global = np.asarray(ego_to_global, np.float64)
        ego_from_global = invert_rigid(ego_to_global)
        step = min(grid.xbound[2], grid.ybound[2])
        width = 1 if line_width_m is None else max(1, round(line_width_m / step))
        margin = (width + 1) * max(grid.xbound[2], grid.ybound[2])
        hits = self.indices_in(self.window(ego_to_global, grid, margin))

        def ego(xy: np.ndarray) -> np.ndarray:
            return transform_points(ego_from_global, np.concatenate([xy, np.zeros((len(xy), 1))], -1))

        out = {}
        for name, shapes in self._polygon_shapes.items():
            polygons = [(ego(shapes[k][0]), [ego(h) for h in shapes[k][1]]) for k in hits[name]]
            out[name] = raster.fill_polygons(polygons, grid)
        for name, shapes in self._line_shapes.items():
            out[name] = raster.draw_polylines([ego(shapes[k]) for k in hits[name]], grid, line_width_m)
        return {name: out[name] for name in MAP_CLASSES}
