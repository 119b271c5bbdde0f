"""Representational similarity between two sets of features of the same examples: linear CKA.

Centered kernel alignment (Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited",
arXiv:1905.00414) with a linear kernel, for X: [n, p] and Y: [n, q] (rows: the same n examples):

    K = X Xᵀ, L = Y Yᵀ  (Gram matrices, [n, n]);  H = I − 11ᵀ/n  (centering)
    CKA(X, Y) = ⟨HKH, HLH⟩_F / (‖HKH‖_F ‖HLH‖_F)  =  ‖Ycᵀ Xc‖²_F / (‖Xcᵀ Xc‖_F ‖Ycᵀ Yc‖_F)

It is 1 for identical representations, invariant to orthogonal transforms and isotropic scaling of either side
(not to arbitrary invertible linear maps), and in [0, 1]. The plain estimator is biased upwards at small n
(independent random features of width p score about p / n); the debiased form replaces each HSIC by the
unbiased estimator of Song et al. (2012), as Nguyen, Raghu & Kornblith (2021, arXiv:2010.15327) do:

    K̃ = K with its diagonal set to 0
    HSIC₁(K, L) = [tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1) / ((n−1)(n−2)) − 2/(n−2) · 1ᵀK̃L̃1] / (n(n−3))
    CKA₁(X, Y) = HSIC₁(K, L) / sqrt(HSIC₁(K, K) HSIC₁(L, L))

Caveat (Davari et al. 2022, arXiv:2210.16156): CKA is sensitive to a few outlier examples and directions —
one example far from the rest can move it a lot — so read it as a coarse map of where a network changed, not
a precise measure.

Computed from Gram matrices: a base × tuned layer matrix costs one [n, n] Gram per layer and side and one
inner product per pair.
"""

from __future__ import annotations

import numpy as np


def gram(features: np.ndarray) -> np.ndarray:
    """X Xᵀ in float64: [n, p] → [n, n]."""
    x = np.asarray(features, dtype=np.float64)
    return x @ x.T


def centered(k: np.ndarray) -> np.ndarray:
    """H K H: the Gram matrix of the column-centred features."""
    return k - k.mean(0, keepdims=True) - k.mean(1, keepdims=True) + k.mean()


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741 (the paper's name)
    """Song et al. (2012)'s unbiased HSIC estimator from two (uncentred) Gram matrices [n, n], n > 3."""
    n = k.shape[0]
    k, l = k.copy(), l.copy()  # noqa: E741
    np.fill_diagonal(k, 0.0)
    np.fill_diagonal(l, 0.0)
    ones_k, ones_l = k.sum(0), l.sum(0)                                  # 1ᵀK̃, 1ᵀL̃
    trace = float(np.sum(k * l))                                         # tr(K̃L̃), both symmetric
    return (trace + ones_k.sum() * ones_l.sum() / ((n - 1) * (n - 2)) - 2 / (n - 2) * float(ones_k @ ones_l)) / \
        (n * (n - 3))


def cka_from_grams(k: np.ndarray, l: np.ndarray, debiased: bool = False) -> float:  # noqa: E741
    """Linear CKA from two Gram matrices of the same n examples: the module docstring's formulas."""
    if debiased:
        cross, kk, ll = hsic_unbiased(k, l), hsic_unbiased(k, k), hsic_unbiased(l, l)
    else:
        kc, lc = centered(k), centered(l)
        cross, kk, ll = float(np.sum(kc * lc)), float(np.sum(kc * kc)), float(np.sum(lc * lc))
    if kk <= 0 or ll <= 0:  # a constant representation: no variance to align
        return float("nan")
    return cross / np.sqrt(kk * ll)


def linear_cka(x: np.ndarray, y: np.ndarray, debiased: bool = False) -> float:
    """CKA between features x: [n, p] and y: [n, q] of the same n examples."""
    if len(x) != len(y):
        raise ValueError(f"CKA needs the same examples on both sides: {len(x)} rows against {len(y)}")
    return cka_from_grams(gram(x), gram(y), debiased)


def cka_matrix(xs: np.ndarray, ys: np.ndarray, debiased: bool = False) -> np.ndarray:
    """[layers_x, layers_y] CKA between every layer of xs: [n, layers_x, p] and every layer of ys: [n, layers_y, q]
    (the diagonal, when both have the same layers: layer i against layer i)."""
    grams_x = [gram(xs[:, i]) for i in range(xs.shape[1])]
    grams_y = [gram(ys[:, j]) for j in range(ys.shape[1])]
    return np.array([[cka_from_grams(kx, ky, debiased) for ky in grams_y] for kx in grams_x])
