"""Contact sheets: faces with their landmarks drawn, coloured by cluster (METHOD §8),
occluded landmarks as red crosses. Drawn with OpenCV, so equal input gives equal bytes."""

from __future__ import annotations

import cv2
import numpy as np

from mcl.method.layouts import Layout

TILE = 160
_PALETTE = [(60, 220, 60), (230, 160, 40), (40, 200, 230), (200, 80, 220), (80, 120, 255), (255, 255, 80),
            (160, 255, 160), (120, 180, 255)]  # BGR, one per cluster


def draw_face(image: np.ndarray, points: np.ndarray, layout: Layout, occluded: np.ndarray | None = None,
              box: np.ndarray | None = None, tile: int = TILE) -> np.ndarray:
    """A tile x tile BGR picture of a grayscale face, scaled to fit, landmarks on top."""
    h, w = image.shape[:2]
    s = tile / max(h, w)
    canvas = np.zeros((tile, tile, 3), np.uint8)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_NEAREST)
    canvas[:nh, :nw] = cv2.cvtColor(small, cv2.COLOR_GRAY2BGR)
    sy, sx = nh / h, nw / w

    def at(p):
        return int(round(((p[0] + 0.5) * sx - 0.5) * 16)), int(round(((p[1] + 0.5) * sy - 0.5) * 16))

    if box is not None:
        cv2.rectangle(canvas, at(box[:2]), at(box[2:]), (0, 200, 255), 1, cv2.LINE_AA, 4)
    owner = layout.cluster_of()
    r = 2 if tile >= 120 else 1
    for j, p in enumerate(points):
        c = at(p)
        if occluded is not None and occluded[j]:
            d = (r + 1) * 16
            cv2.line(canvas, (c[0] - d, c[1] - d), (c[0] + d, c[1] + d), (40, 40, 255), 1, cv2.LINE_AA, 4)
            cv2.line(canvas, (c[0] - d, c[1] + d), (c[0] + d, c[1] - d), (40, 40, 255), 1, cv2.LINE_AA, 4)
        else:
            cv2.circle(canvas, c, r * 16, _PALETTE[owner[j] % len(_PALETTE)], -1, cv2.LINE_AA, 4)
    return canvas


def contact_sheet(rows: list[tuple[str, list[np.ndarray]]], cols: int = 8, tile: int = TILE) -> np.ndarray:
    """Titled rows of tiles, wrapped at `cols` per line."""
    pad, title_h = 4, 22
    width = cols * (tile + pad) + pad
    blocks = []
    for title, tiles in rows:
        if not tiles:
            continue
        head = np.full((title_h, width, 3), 32, np.uint8)
        cv2.putText(head, title, (pad, title_h - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (235, 235, 235), 1, cv2.LINE_AA)
        blocks.append(head)
        for start in range(0, len(tiles), cols):
            line = np.full((tile + pad, width, 3), 32, np.uint8)
            for k, t in enumerate(tiles[start:start + cols]):
                x = pad + k * (tile + pad)
                line[:tile, x:x + tile] = t
            blocks.append(line)
    if not blocks:
        return np.full((tile, width, 3), 32, np.uint8)
    return np.concatenate(blocks, axis=0)
