"""Eq. 2-3: the m heads assembled into one shape prediction layer, on arrays.

For every landmark j in cluster P_i, the assembled layer takes rows 2j and 2j+1
(x and y) of head i's weight matrix and entries 2j, 2j+1 of its bias (METHOD §9).
One InnerProduct D -> 2n remains, so AM costs what BM costs at test time.
"""

from __future__ import annotations

import numpy as np

from mcl.method.layouts import Layout


def splice(head_blobs: dict[str, list[np.ndarray]], layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    """(W^a, b^a) from each cluster's head (W_i, b_i), Eq. 2-3."""
    owner = layout.cluster_of()
    W = np.empty_like(head_blobs[layout.cluster_names[0]][0])
    b = np.empty_like(head_blobs[layout.cluster_names[0]][1])
    for j in range(layout.n_points):
        Wi, bi = head_blobs[layout.cluster_names[owner[j]]]
        W[2 * j:2 * j + 2] = Wi[2 * j:2 * j + 2]
        b[2 * j:2 * j + 2] = bi[2 * j:2 * j + 2]
    return W, b
