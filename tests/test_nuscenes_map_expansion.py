"""nuScenes map-expansion rasterisation on synthetic map files (NumPy / PIL only)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from PIL import ImageDraw

from bevjax.data.nuscenes.map_expansion import MAP_CLASSES, MapExpansion
from bevjax.geometry.grid import BEVGrid
from bevjax.geometry.transforms import pose2d
from bevjax.schema import BEV_CLASSES

TABLES = (
    "node",
    "line",
    "polygon",
    "drivable_area",
    "ped_crossing",
    "walkway",
    "stop_line",
    "carpark_area",
    "road_divider",
    "lane_divider",
)


class MapBuilder:
    """Writes a minimal map-expansion JSON from global-frame polygons and lines."""

    def __init__(self):
        self.tables = {name: [] for name in TABLES}
        self._ids = itertools.count()

    def _token(self, kind: str) -> str:
        return f"{kind}-{next(self._ids)}"

    def _nodes(self, points) -> list[str]:
        tokens = []
        for x, y in np.asarray(points, np.float64).tolist():
            tokens.append(self._token("node"))
            self.tables["node"].append({"token": tokens[-1], "x": x, "y": y})
        return tokens

    def polygon(self, exterior, holes=()) -> str:
        token = self._token("polygon")
        self.tables["polygon"].append(
            {
                "token": token,
                "exterior_node_tokens": self._nodes(exterior),
                "holes": [{"node_tokens": self._nodes(h)} for h in holes],
            }
        )
        return token

    def area(self, layer: str, exterior, holes=()) -> None:
        token = self.polygon(exterior, holes)
        record = {"token": self._token(layer)}
        if layer == "drivable_area":
            record["polygon_tokens"] = [token]
        else:
            record["polygon_token"] = token
        self.tables[layer].append(record)

    def line(self, layer: str, points) -> None:
        token = self._token("line")
        self.tables["line"].append({"token": token, "node_tokens": self._nodes(points)})
        self.tables[layer].append({"token": self._token(layer), "line_token": token})

    def write(self, path, drop=()):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({k: v for k, v in self.tables.items() if k not in drop}))
        return path


def square(cx, cy, half, yaw=0.0) -> np.ndarray:
    """[4, 2] corners of a square centred at (cx, cy), rotated by ``yaw``."""
    c, s = np.cos(yaw), np.sin(yaw)
    local = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64) * half
    return local @ np.array([[c, s], [-s, c]]) + [cx, cy]


def to_global(ego_to_global, xy) -> np.ndarray:
    xy = np.asarray(xy, np.float64)
    return xy @ ego_to_global[:2, :2].T + ego_to_global[:2, 3]


def to_ego_cells(ego_to_global, grid: BEVGrid, xy) -> np.ndarray:
    """Global points -> continuous cell coordinates (i, j) (cell centres at integers), via np.linalg.inv."""
    xy = np.asarray(xy, np.float64)
    inv = np.linalg.inv(ego_to_global)
    ego = xy @ inv[:2, :2].T + inv[:2, 3]
    i = (ego[:, 0] - grid.xbound[0]) / grid.xbound[2] - 0.5
    j = (ego[:, 1] - grid.ybound[0]) / grid.ybound[2] - 0.5
    return np.stack([i, j], -1)


def even_odd(points: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """[p] bool: ray-crossing (even-odd) test of points [p, 2] against a closed ring [k, 2], float64."""
    px, py = points[:, 0], points[:, 1]
    inside = np.zeros(len(points), bool)
    for (ax, ay), (bx, by) in zip(ring, np.roll(ring, -1, 0), strict=True):
        crosses = (ay > py) != (by > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = ax + (py - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (px < x_at)
    return inside


def edge_distance(points: np.ndarray, rings) -> np.ndarray:
    """[p] Euclidean distance of points [p, 2] to the nearest edge of any ring (open polylines if 2-D)."""
    out = np.full(len(points), np.inf)
    for ring, closed in rings:
        ends = np.roll(ring, -1, 0) if closed else ring[1:]
        for a, b in zip(ring, ends, strict=False):
            d = b - a
            t = np.clip(((points - a) @ d) / (d @ d), 0, 1)
            out = np.minimum(out, np.linalg.norm(points - a - t[:, None] * d, axis=1))
    return out


def cell_grid(grid: BEVGrid) -> np.ndarray:
    """[nx * ny, 2] integer cell coordinates (i, j), row-major."""
    nx, ny, _ = grid.shape
    return np.stack(np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij"), -1).reshape(-1, 2).astype(float)


POSES = {
    "identity": np.eye(4),
    "rotated": pose2d(1234.5, -876.25, 0.6, z=2.0),
}


def test_map_classes_are_schema_classes():
    assert set(MAP_CLASSES) <= set(BEV_CLASSES)
    assert MAP_CLASSES == BEV_CLASSES[: len(MAP_CLASSES)]


@pytest.mark.parametrize("pose", POSES, ids=list(POSES))
def test_drivable_polygon_with_hole_matches_reference(tmp_path, pose):
    ego_to_global = POSES[pose]
    grid = BEVGrid(xbound=(-20.0, 20.0, 0.5), ybound=(-15.0, 15.0, 0.4))  # 80 x 75, unequal steps
    # In the ego frame: a 24 m square crossing the grid's +x edge, rotated 0.35 rad, with an 8 m hole.
    exterior_ego = square(10.0, 2.0, 12.0, yaw=0.35)
    hole_ego = square(8.0, 1.0, 4.0, yaw=-0.2)
    exterior, hole = to_global(ego_to_global, exterior_ego), to_global(ego_to_global, hole_ego)
    builder = MapBuilder()
    builder.area("drivable_area", exterior, [hole])
    layers = MapExpansion(builder.write(tmp_path / "m.json")).raster(ego_to_global, grid)

    nx, ny, _ = grid.shape
    assert set(layers) == set(MAP_CLASSES)
    for name, layer in layers.items():
        assert layer.shape == (nx, ny) and layer.dtype == np.uint8, name
        assert set(np.unique(layer)) <= {0, 1}, name
    got = layers["drivable_area"].reshape(-1).astype(bool)

    cells = cell_grid(grid)
    ext_c, hole_c = to_ego_cells(ego_to_global, grid, exterior), to_ego_cells(ego_to_global, grid, hole)
    ref = even_odd(cells, ext_c) & ~even_odd(cells, hole_c)
    near_edge = edge_distance(cells, [(ext_c, True), (hole_c, True)]) <= 0.5
    assert ref.sum() > 1000 and (~ref).sum() > 1000  # a real test: plenty of cells either way
    np.testing.assert_array_equal(got[~near_edge], ref[~near_edge])
    in_hole = even_odd(cells, hole_c)
    assert in_hole.sum() > 300 and not got[in_hole & ~near_edge].any()
    # The hole's centre region is empty outright.
    centre = to_ego_cells(ego_to_global, grid, to_global(ego_to_global, [[8.0, 1.0]]))[0]
    assert not got[np.abs(cells - centre).max(1) <= 4].any()
    for name in MAP_CLASSES:
        if name != "drivable_area":
            assert not layers[name].any(), name


def test_hole_does_not_erase_other_polygons(tmp_path):
    grid = BEVGrid(xbound=(-10.0, 10.0, 0.5), ybound=(-10.0, 10.0, 0.5))
    builder = MapBuilder()
    builder.area("drivable_area", square(0, 0, 2))  # an island inside the hole, drawn before it
    builder.area("drivable_area", square(0, 0, 8), [square(0, 0, 4)])
    builder.area("drivable_area", square(6, 6, 1))  # overlaps the holed polygon's exterior
    layer = MapExpansion(builder.write(tmp_path / "m.json")).raster(np.eye(4), grid)["drivable_area"]
    xy = grid.cell_centers().reshape(-1, 2)
    ref = np.abs(xy).max(1) < 2
    ref |= (np.abs(xy).max(1) < 8) & (np.abs(xy).max(1) > 4)
    ref |= np.abs(xy - 6).max(1) < 1
    edges = [(square(0, 0, h), True) for h in (8, 4, 2)] + [(square(6, 6, 1), True)]
    near = edge_distance(xy, edges) <= 0.25
    assert ref.sum() > 300
    np.testing.assert_array_equal(layer.reshape(-1).astype(bool)[~near], ref[~near])


def test_area_layers_land_in_their_own_layer(tmp_path):
    ego_to_global = pose2d(300.0, 420.0, -1.1)
    grid = BEVGrid(xbound=(-20.0, 20.0, 0.5), ybound=(-20.0, 20.0, 0.5))
    centres = {
        "ped_crossing": (-10.0, -10.0),
        "walkway": (10.0, -10.0),
        "stop_line": (-10.0, 10.0),
        "carpark_area": (10.0, 10.0),
    }
    builder = MapBuilder()
    for layer, (cx, cy) in centres.items():
        builder.area(layer, to_global(ego_to_global, square(cx, cy, 3.0, yaw=0.4)))
    layers = MapExpansion(builder.write(tmp_path / "m.json")).raster(ego_to_global, grid)
    xy = grid.cell_centers()
    for layer, (cx, cy) in centres.items():
        own = np.hypot(xy[..., 0] - cx, xy[..., 1] - cy) < 3.0 * np.sqrt(2) + 0.5
        core = np.hypot(xy[..., 0] - cx, xy[..., 1] - cy) < 2.5
        assert layers[layer][core].all(), layer
        assert not layers[layer][~own].any(), layer
    assert not layers["drivable_area"].any() and not layers["divider"].any()


@pytest.mark.parametrize("line_width_m, rows", [(None, [0]), (1.5, [-1, 0, 1])])
def test_dividers(tmp_path, line_width_m, rows):
    ego_to_global = pose2d(512.0, -300.0, 0.3)
    grid = BEVGrid(xbound=(-10.0, 10.0, 0.5), ybound=(-10.0, 10.0, 0.5))  # 40 x 40
    i_road = 10  # road divider along ego y through the centres of row 10, columns 4..35
    x_road = grid.xbound[0] + (i_road + 0.5) * 0.5
    road = np.array([[x_road, -10.0 + 4.5 * 0.5], [x_road, -10.0 + 35.5 * 0.5]])
    # Lane divider: a polyline through cell centres (25, 5) -> (35, 15) -> (28, 36) in cell coordinates.
    lane_cells = np.array([[25, 5], [35, 15], [28, 36]], np.float64)
    lane = np.stack([-10.0 + (lane_cells[:, 0] + 0.5) * 0.5, -10.0 + (lane_cells[:, 1] + 0.5) * 0.5], -1)
    builder = MapBuilder()
    builder.line("road_divider", to_global(ego_to_global, road))
    builder.line("lane_divider", to_global(ego_to_global, lane))
    layers = MapExpansion(builder.write(tmp_path / "m.json")).raster(
        ego_to_global, grid, line_width_m=line_width_m
    )
    div = layers["divider"]
    for name in MAP_CLASSES:
        if name != "divider":
            assert not layers[name].any(), name

    # Road divider: exactly the documented width, max(1, round(1.5 / 0.5)) = 3 rows, or 1 by default.
    band = div[:20, 6:34]  # away from the lane divider and the line ends
    assert np.flatnonzero(band.any(1)).tolist() == [i_road + r for r in rows]
    assert band[[i_road + r for r in rows]].all()

    # Lane divider: the 45-degree run sets exactly its diagonal cells (default width).
    diagonal = [(25 + k, 5 + k) for k in range(11)]
    assert all(div[i, j] for i, j in diagonal)
    if line_width_m is None:
        assert not any(div[i + 1, j] or div[i, j + 1] for i, j in diagonal[1:-1])

    # Every point of both lines has a set cell within one cell; no set cell lies 3+ cells from a line.
    road_cells = np.array([[i_road, 4.0], [i_road, 35.0]])
    t = np.linspace(0, 1, 200)[:, None]
    samples = [
        a + t * (b - a) for ring in (road_cells, lane_cells) for a, b in zip(ring, ring[1:], strict=False)
    ]
    on = set(map(tuple, np.argwhere(div)))
    for p in np.round(np.concatenate(samples)).astype(int):
        assert any((p[0] + di, p[1] + dj) in on for di in (-1, 0, 1) for dj in (-1, 0, 1)), p
    dist = edge_distance(cell_grid(grid), [(road_cells, False), (lane_cells, False)])
    assert not div.reshape(-1)[dist >= 3].any()
    if line_width_m is None:
        assert not div.reshape(-1)[dist >= 1].any()


def test_geometry_outside_window_is_skipped(tmp_path, monkeypatch):
    ego_to_global = pose2d(1000.0, 2000.0, 0.8)
    grid = BEVGrid(xbound=(-10.0, 10.0, 0.5), ybound=(-10.0, 10.0, 0.5))
    builder = MapBuilder()
    builder.area("drivable_area", to_global(ego_to_global, square(0, 0, 3)))  # inside
    builder.area("drivable_area", to_global(ego_to_global, square(12, 0, 4)))  # straddles the +x edge
    builder.area("drivable_area", to_global(ego_to_global, square(60, 60, 5)))  # far away
    builder.area("walkway", to_global(ego_to_global, square(-40, 0, 5)))  # far away
    builder.line("lane_divider", to_global(ego_to_global, [[-100, -100], [-90, -95]]))  # far away
    builder.line("road_divider", to_global(ego_to_global, [[0.25, -8], [0.25, 8]]))  # inside, row 20
    m = MapExpansion(builder.write(tmp_path / "m.json"))
    assert len(m) == 6

    hits = m.indices_in(m.window(ego_to_global, grid, margin=1.0))
    assert hits["drivable_area"].tolist() == [0, 1]
    assert hits["walkway"].tolist() == [] and hits["divider"].tolist() == [0]  # road dividers come first

    calls = {"polygon": 0, "line": 0}
    for method in calls:
        original = getattr(ImageDraw.ImageDraw, method)

        def counted(self, *args, _original=original, _method=method, **kwargs):
            calls[_method] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(ImageDraw.ImageDraw, method, counted)
    layers = m.raster(ego_to_global, grid)
    assert calls == {"polygon": 2, "line": 1}
    assert layers["drivable_area"][20:24, 18:22].all()  # 0..2 m in front of the ego: the first square
    assert layers["drivable_area"][-3:, 16:24].all()  # the straddling square, clipped at the edge
    assert not layers["walkway"].any()
    assert layers["divider"][20].sum() >= 30 and not layers["divider"][:18].any()


def test_window_filter_each_side(tmp_path):
    grid = BEVGrid(xbound=(-10.0, 10.0, 0.5), ybound=(-10.0, 10.0, 0.5))
    builder = MapBuilder()
    offsets = [(40, 0), (-40, 0), (0, 40), (0, -40), (0, 0), (13.5, 0)]  # each far one fails one test only
    for cx, cy in offsets:
        builder.area("carpark_area", square(cx, cy, 3))
    m = MapExpansion(builder.write(tmp_path / "m.json"))
    assert m.window(np.eye(4), grid, margin=1.0) == (-11.0, -11.0, 11.0, 11.0)
    assert m.indices_in(m.window(np.eye(4), grid, margin=1.0))["carpark_area"].tolist() == [4, 5]
    assert m.indices_in(m.window(np.eye(4), grid))["carpark_area"].tolist() == [4]


def test_find_and_errors(tmp_path):
    assert MapExpansion.find(tmp_path, "boston-seaport") is None
    builder = MapBuilder()
    builder.area("drivable_area", square(0, 0, 3))
    path = builder.write(tmp_path / "maps" / "expansion" / "singapore-onenorth.json")
    found = MapExpansion.find(tmp_path, "singapore-onenorth")
    assert isinstance(found, MapExpansion) and found.path == path and len(found) == 1
    assert MapExpansion.find(tmp_path, "singapore-queenstown") is None

    with pytest.raises(FileNotFoundError, match="missing.json"):
        MapExpansion(tmp_path / "missing.json")
    for table in ("node", "polygon", "lane_divider"):
        bad = builder.write(tmp_path / f"no-{table}.json", drop=(table,))
        with pytest.raises(KeyError) as err:
            MapExpansion(bad)
        assert str(bad) in str(err.value) and f"'{table}'" in str(err.value)
