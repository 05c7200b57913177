"""The landmark layouts (5, 29, 68 points): the one table every other module reads.

Each layout holds the paper's facts about it: the feature width D (METHOD §2), the
clusters P_1..P_m of multi-center learning (METHOD §8), the mirror permutation used
by horizontal flips (METHOD §6), and the inter-ocular rule of the metrics and of the
loss normalisation d (METHOD §7). Indices are 0-based everywhere in code; the
comments quote the paper's 1-based numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# METHOD §1: the network's input, a 50 x 50 grayscale patch, pixel p -> (p - 128) * 0.0078125
# (in Caffe terms transform_param { mean_value: 128 scale: 0.0078125 }).
INPUT_SIZE = 50
PIXEL_MEAN = 128.0
PIXEL_SCALE = 0.0078125


@dataclass(frozen=True)
class Layout:
    name: str
    n_points: int
    feature_dim: int  # D: width of conv43 and of the global-average feature x
    clusters: tuple[tuple[str, tuple[int, ...]], ...]  # (name, landmark indices) in head order
    mirror: tuple[int, ...]  # flipped image: point i takes the role of point mirror[i]
    inter_ocular: tuple[tuple[int, ...], tuple[int, ...]]  # d = |mean(group A) - mean(group B)|
    outer_corners: tuple[int, int] | None  # the later papers' normalisation, reported separately

    @property
    def m(self) -> int:
        return len(self.clusters)

    @property
    def cluster_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.clusters)

    def cluster(self, name: str) -> tuple[int, ...]:
        for cname, idx in self.clusters:
            if cname == name:
                return idx
        raise KeyError(f"layout {self.name} has no cluster {name!r}; it has {', '.join(self.cluster_names)}")

    def cluster_of(self) -> np.ndarray:
        """Index of the cluster each landmark belongs to (the P_i partition)."""
        owner = np.full(self.n_points, -1, dtype=np.int64)
        for i, (_, idx) in enumerate(self.clusters):
            owner[list(idx)] = i
        return owner

    def inter_ocular_distance(self, points: np.ndarray) -> np.ndarray:
        """d of METHOD §7.1 for points shaped (..., n, 2), in the points' own units."""
        pts = np.asarray(points, dtype=np.float64)
        a = pts[..., list(self.inter_ocular[0]), :].mean(axis=-2)
        b = pts[..., list(self.inter_ocular[1]), :].mean(axis=-2)
        return np.linalg.norm(a - b, axis=-1)

    def outer_corner_distance(self, points: np.ndarray) -> np.ndarray:
        if self.outer_corners is None:
            raise ValueError(f"layout {self.name} has no outer eye corners")
        pts = np.asarray(points, dtype=np.float64)
        i, j = self.outer_corners
        return np.linalg.norm(pts[..., i, :] - pts[..., j, :], axis=-1)


def _mirror_from_pairs(n: int, pairs: list[tuple[int, int]]) -> tuple[int, ...]:
    perm = list(range(n))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return tuple(perm)


def _r(a: int, b: int) -> tuple[int, ...]:
    """0-based indices of the paper's 1-based range a..b inclusive."""
    return tuple(range(a - 1, b))


# 5 points (MTFL/AFLW): left eye, right eye, nose, left and right mouth corner.
AFLW5 = Layout(
    name="5",
    n_points=5,
    feature_dim=512,
    clusters=(("left_eye", (0,)), ("right_eye", (1,)), ("nose", (2,)), ("mouth", (3, 4))),
    mirror=_mirror_from_pairs(5, [(0, 1), (3, 4)]),
    inter_ocular=((0,), (1,)),
    outer_corners=None,
)

# 29 points (COFW, LFPW order). Mirror pairs from the dataset (METHOD §11.2).
# Eyebrows go with their eye (METHOD §8.2). The side of each brow point follows the
# mirror pairs: 1-based (1,2) (3,4) (5,7) (6,8), so one brow is {1,3,5,6} and the
# other {2,4,7,8}. [interp] (METHOD §12.3) Strictly alternating sides, {1,3,5,7} / {2,4,6,8}, would put
# the mirror pair 5<->7 inside one cluster; we follow the mirror pairs. The side
# that is "left" (image left) is taken to be the odd-numbered one.
_COFW_PAIRS = [(0, 1), (2, 3), (4, 6), (5, 7), (8, 9), (10, 11), (12, 14), (13, 15), (16, 17), (18, 19), (22, 23)]
COFW29 = Layout(
    name="29",
    n_points=29,
    feature_dim=512,
    clusters=(
        ("left_eye", (0, 2, 4, 5, 8, 10, 12, 13, 16)),
        ("right_eye", (1, 3, 6, 7, 9, 11, 14, 15, 17)),
        ("nose", _r(19, 22)),
        ("mouth", _r(23, 28)),
        ("chin", (28,)),
    ),
    mirror=_mirror_from_pairs(29, _COFW_PAIRS),
    inter_ocular=((16,), (17,)),  # the pupils, 1-based 17 and 18
    outer_corners=(8, 9),
)

# 68 points (300-W). [interp] eyes include their brows; contour split 1-6/7-11/12-17.
_IBUG_PAIRS = (
    [(i, 16 - i) for i in range(8)]  # contour
    + [(17 + i, 26 - i) for i in range(5)]  # brows
    + [(31, 35), (32, 34)]  # nostrils
    + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    + [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lip
    + [(60, 64), (61, 63), (65, 67)]  # inner lip
)
IBUG68 = Layout(
    name="68",
    n_points=68,
    feature_dim=1024,
    clusters=(
        ("left_eye", _r(18, 22) + _r(37, 42)),
        ("right_eye", _r(23, 27) + _r(43, 48)),
        ("nose", _r(28, 36)),
        ("mouth", _r(49, 68)),
        ("left_contour", _r(1, 6)),
        ("chin", _r(7, 11)),
        ("right_contour", _r(12, 17)),
    ),
    mirror=_mirror_from_pairs(68, _IBUG_PAIRS),
    inter_ocular=(_r(37, 42), _r(43, 48)),  # eye centres (the authors' evaluation code)
    outer_corners=(36, 45),
)

LAYOUTS = {layout.name: layout for layout in (AFLW5, COFW29, IBUG68)}

# 68-point index of each 29-point landmark, to derive the COFW layout from a
# 68-point face (the synthetic set). Brows: outer and inner ends, then the top
# middle and a second point; pupils are the eye centres (computed, marked -1).
FROM68_TO29 = (17, 26, 21, 22, 19, 18, 24, 25, 36, 45, 39, 42, 37, 41, 44, 46,
               -1, -2, 31, 35, 30, 33, 48, 54, 51, 57, 62, 66, 8)


def get_layout(name: str | int) -> Layout:
    key = str(name)
    if key not in LAYOUTS:
        raise ValueError(f"unknown layout {name!r}: choose one of {', '.join(LAYOUTS)}")
    return LAYOUTS[key]


def derive_from_68(points68: np.ndarray, layout: Layout) -> np.ndarray:
    """Points of `layout` from 68-point points shaped (..., 68, 2)."""
    pts = np.asarray(points68, dtype=np.float64)
    if layout.n_points == 68:
        return pts.copy()
    left_c = pts[..., 36:42, :].mean(axis=-2)
    right_c = pts[..., 42:48, :].mean(axis=-2)
    if layout.n_points == 5:
        mouth = pts[..., [48, 54], :]
        return np.concatenate([left_c[..., None, :], right_c[..., None, :], pts[..., 30:31, :], mouth], axis=-2)
    if layout.n_points == 29:
        out = []
        for k in FROM68_TO29:
            out.append(left_c if k == -1 else right_c if k == -2 else pts[..., k, :])
        return np.stack(out, axis=-2)
    raise ValueError(f"cannot derive layout {layout.name} from 68 points")
