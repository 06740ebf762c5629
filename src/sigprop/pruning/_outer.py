"""SynFlow's per-round work on the CPU, compiled with numba: the scan of fully connected layers.

With a batch of one, the gradient of a ``Linear`` weight is the outer product ``g = delta a^T``
(``delta`` the gradient at the layer's output, ``a`` its input): autograd builds it as a matrix
product with an inner dimension of one, so each entry is the single rounded product
``delta_i * a_j``. SynFlow's score ``|w_ij g_ij|`` is therefore ``|w_ij * (delta_i * a_j)|``
exactly, bit for bit, and never needs the gradient matrix: :func:`scan` reads the weights once,
in blocks of rows whose flags stay in the L1 cache, and appends the alive entries whose score is
not above a threshold (NaN included), with their scores, to the round's candidates. A pruned
entry holds -0.0, which computes as 0 and marks it dead without a separate mask to read (every
weight of SynFlow's network is made nonnegative, so an alive one has its sign bit clear).

The selection of the round's entries (:func:`select`) and their pruning (:func:`prune`) are
compiled too; when every leaf ranked in a round is such a layer, :func:`round_` runs the round's
sample, scans, selection and pruning in three compiled calls (one more per retried bracket).
numba is imported on first use;
:func:`kernels` returns None when it cannot be (the caller then takes the gradient route, which
gives the same masks, only slower).

Tried and dropped (each measured in one process against this code, on the 784-1000-1000-10 MLP):
a float32 or bfloat16 copy of the weights for the scan (half or a quarter of the bytes; the extra
copy pushed the weights out of the last-level cache between the passes, and the bfloat16 bounds
were too loose: SynFlow's alive scores pile up just above the previous round's threshold), and
per-row buckets of the weights by magnitude, so that a round reads only the buckets near its
threshold (reading about 1.3-2x the candidates, but from scattered runs whose cache misses and
rebuilds cost as much as the scan).
"""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np

#: de Bruijn table: index of the single set bit of a power of two ``b`` at
#: ``(b * 0x03F79D71B4CB0A89) >> 58``
_DEBRUIJN = np.array(
    [0, 1, 48, 2, 57, 49, 28, 3, 61, 58, 50, 42, 38, 29, 17, 4, 62, 55, 59, 36, 53, 51, 43, 22, 45, 39, 33, 30, 24, 18, 12, 5,
     63, 47, 56, 27, 60, 41, 37, 16, 54, 35, 52, 21, 44, 32, 23, 11, 46, 26, 40, 15, 34, 20, 31, 10, 25, 14, 19, 9, 13, 8, 7, 6],
    dtype=np.int64,
)  # fmt: skip

_KERNELS = []  # [the compiled kernels, in the order of _FNS, or None], filled on first use


def _scan(w, delta, a, hi, offset, db, pos, val, n):  # pragma: no cover - compiled by numba
    """The alive entries ``k = i * len(a) + j`` of the row-major ``w`` (alive: sign bit clear;
    a pruned entry holds -0.0) with ``not (|w_k (delta_i a_j)| > hi)``, in increasing ``k``:
    ``offset + k`` into ``pos[n:]``, the scores into ``val[n:]``; returns the new ``n``.

    Blocks of rows: a vectorized pass writes the 0/1 flags of the block into a byte buffer; the
    flags are packed 64 to a word (eight bytes of 0/1 times 0x0102040810204080 put their eight
    flags in the top byte) and the set bits are walked with the de Bruijn table.
    """
    c = a.size
    r = delta.size
    bits_of = w.view(np.int64)
    rows = max(1, 16384 // c)
    buf = np.zeros(rows * c + 64, dtype=np.uint8)
    flags = buf.view(np.bool_)
    gather = np.uint64(0x0102040810204080)
    debruijn = np.uint64(0x03F79D71B4CB0A89)
    for r0 in range(0, r, rows):
        r1 = min(r0 + rows, r)
        base = r0 * c
        length = (r1 - r0) * c
        for i in range(r0, r1):
            di = delta[i]
            o = i * c
            wr = w[o : o + c]
            br = bits_of[o : o + c]
            fr = flags[o - base : o - base + c]
            for j in range(c):
                s = abs(wr[j] * (di * a[j]))
                fr[j] = (br[j] >= 0) & (not (s > hi))
        words = (length + 63) // 64
        for t in range(length, words * 64):
            buf[t] = 0
        b8 = buf[: words * 64].view(np.uint64)
        i = r0
        for q in range(words):
            bits = np.uint64(0)
            for u in range(8):
                bits |= ((b8[8 * q + u] * gather) >> np.uint64(56)) << np.uint64(8 * u)
            while bits:
                low = bits & (~bits + np.uint64(1))
                k = base + q * 64 + db[(low * debruijn) >> np.uint64(58)]
                while k >= (i + 1) * c:
                    i += 1
                pos[n] = offset + k
                val[n] = abs(w[k] * (delta[i] * a[k - i * c]))
                n += 1
                bits ^= low
    return n


def _sample(w, delta, a, rows, cols, smp, out):  # pragma: no cover - compiled by numba
    """Scores ``|w_k (delta_i a_j)|`` of the alive entries among the positions ``smp`` (rows
    ``rows``, columns ``cols``) into ``out``; returns their number."""
    bits_of = w.view(np.int64)
    n = 0
    for t in range(smp.size):
        k = smp[t]
        if bits_of[k] >= 0:
            out[n] = abs(w[k] * (delta[rows[t]] * a[cols[t]]))
            n += 1
    return n


def _select(pos, val, n, m, thr, sel):  # pragma: no cover - compiled by numba
    """Into ``sel``: the ``pos`` of the candidates with score ``val < thr``, then those with
    ``val == thr`` from the last one back, ``m`` in all. Returns the number found (m unless
    ``thr`` is not the m-th lowest), or -1 when a score is NaN."""
    cnt = 0
    for t in range(n):
        x = val[t]
        if x < thr:
            sel[cnt] = pos[t]
            cnt += 1
        elif x != x:
            return -1
    t = n - 1
    while cnt < m and t >= 0:
        if val[t] == thr:
            sel[cnt] = pos[t]
            cnt += 1
        t -= 1
    return cnt


def _prune(w, alive, sel, tracked):  # pragma: no cover - compiled by numba
    """Prune the flat positions ``sel``: weight -0.0 (zero, and dead to the scans); not alive
    where they fall in one of the ``[start, stop)`` rows of ``tracked`` (elsewhere the sign bit is
    the record, and the mask array is left alone: it stays out of the cache)."""
    for t in range(sel.size):
        p = sel[t]
        w[p] = -0.0
        for q in range(tracked.shape[0]):
            if tracked[q, 0] <= p < tracked[q, 1]:
                alive[p] = False
                break


def _round_sample(w, layers, deltas, acts, smp, smp_layer, smp_row, smp_col, out):  # pragma: no cover
    """The scores of the alive entries among the sample ``smp`` (flat positions, with their
    leaf, row and column) of the leaves ``layers`` (rows ``(offset, rows, cols, delta offset,
    a offset)``; their ``delta`` and ``a`` concatenated in ``deltas`` / ``acts``) into ``out``;
    returns their number, or -1 when one is NaN."""
    bits = w.view(np.int64)
    ns = 0
    for t in range(smp.size):
        k = smp[t]
        if bits[k] >= 0:
            q = smp_layer[t]
            s = abs(w[k] * (deltas[layers[q, 3] + smp_row[t]] * acts[layers[q, 4] + smp_col[t]]))
            if s != s:
                return -1
            out[ns] = s
            ns += 1
    return ns


def _round_scan(w, layers, deltas, acts, hi, db, pos, val):  # pragma: no cover - compiled by numba
    """:func:`_scan` of every leaf of ``layers`` (as in :func:`_round_sample`) into the
    candidates ``pos`` / ``val`` from 0; returns their number."""
    n = 0
    for q in range(layers.shape[0]):
        o, rows, cols, do, ao = layers[q, 0], layers[q, 1], layers[q, 2], layers[q, 3], layers[q, 4]
        n = _scan(w[o : o + rows * cols], deltas[do : do + rows], acts[ao : ao + cols], hi, o, db, pos, val, n)
    return n


def _round_prune(w, alive, tracked, pos, val, n, m, thr, sel):  # pragma: no cover - compiled by numba
    """:func:`_select` (``thr`` the m-th lowest of the ``n`` candidates) then :func:`_prune`;
    returns ``m``, or -1 when a score is NaN (nothing pruned)."""
    found = _select(pos, val, n, m, thr, sel)
    if found != m:
        return -1 if found < 0 else -2
    _prune(w, alive, sel[:m], tracked)
    return m


_FNS = ("_scan", "_sample", "_select", "_prune", "_round_sample", "_round_scan", "_round_prune")
#: the compiled kernels by name, without the leading underscore (``kernels().scan``)
_Kernels = namedtuple("_Kernels", [name[1:] for name in _FNS])


def kernels():
    """The compiled kernels (a :data:`_Kernels`), or None when numba is not available."""
    if not _KERNELS:
        try:
            import numba
        except ImportError:  # pragma: no cover - numba is a dependency
            _KERNELS.append(None)
        else:
            compiled = []
            for name in _FNS:  # (the module's names become the compiled ones: _round_* call them)
                fn = _PY[name]
                try:  # compiled once, cached next to the source or in the user's numba cache
                    jit = numba.njit(cache=True, nogil=True)(fn)
                except RuntimeError:  # pragma: no cover - no writable cache location
                    jit = numba.njit(nogil=True)(fn)
                globals()[name] = jit
                compiled.append(jit)
            _KERNELS.append(_Kernels(*compiled))
    return _KERNELS[0]


_PY = {name: globals()[name] for name in _FNS}  # the kernels' Python functions


def scan(w, delta, a, hi: float, offset: int, pos: np.ndarray, val: np.ndarray, n: int) -> int:
    """Append to ``pos[n:]`` / ``val[n:]`` the flat positions (``offset`` + position in ``w``)
    and scores of the alive entries of the flat row-major ``w`` (rows ``len(delta)``, columns
    ``len(a)``, pruned entries -0.0) whose score ``|w_ij (delta_i a_j)|`` is not above ``hi``, in
    increasing position; returns the new count. ``hi = inf`` gives every alive entry, ``hi =
    -inf`` the NaN ones. ``pos`` / ``val`` must have room for every alive entry."""
    return kernels().scan(w, delta, a, float(hi), offset, _DEBRUIJN, pos, val, n)


def sample(w, delta, a, rows, cols, smp, out) -> np.ndarray:
    """The scores of the alive entries at the positions ``smp`` of ``w`` (their rows and columns
    ``rows``, ``cols``), a view into the scratch ``out``."""
    return out[: kernels().sample(w, delta, a, rows, cols, smp, out)]


def select(pos: np.ndarray, val: np.ndarray, n: int, m: int, sel: np.ndarray) -> np.ndarray:
    """The positions of the ``m`` lowest of the ``n`` candidates ``(pos, val)`` (scores made
    absolute in place; ties: the later candidates first), a view into ``sel``; ValueError if a
    score is NaN."""
    v = val[:n]
    np.abs(v, out=v)
    thr = np.partition(v, m - 1)[m - 1]  # numpy's introselect (numba's partition is much slower)
    found = kernels().select(pos, val, n, m, thr, sel)  # (NaN sorts last in the partition)
    if found < 0:
        raise ValueError("scores contain NaN")
    if found != m:  # pragma: no cover - cannot happen: thr is the m-th lowest
        raise AssertionError(f"selected {found} of {m}")
    return sel[:m]


def round_(
    w, alive, tracked, layers, deltas, acts, smp, smp_layer, smp_row, smp_col, m: int, rank, zs, pos, val, sel
) -> None:
    """One SynFlow round on fully connected leaves only, in three compiled calls (one more per
    retried bracket): prune the
    ``m`` lowest-scored alive entries of the leaves ``layers`` (rows ``(offset, rows, cols,
    delta offset, a offset)``), their ``delta`` and ``a`` concatenated in ``deltas`` / ``acts``,
    as :func:`sample`, :func:`scan`, :func:`select` and :func:`prune` do one after the other: the
    alive entries of the sample ``smp`` (flat positions, with their leaf, row and column) bracket
    the m-th lowest score at their ``rank(sample size, z)``-th lowest for each ``z`` of ``zs``
    in turn, then every alive entry is a candidate. (numpy's partition, vectorized, finds the
    ranks: a compiled quickselect took 4-5 times as long.) ``pos`` / ``val`` / ``sel``: scratch,
    room for every entry (and for the sample in ``val``). ValueError if a score is NaN (nothing
    is pruned then)."""
    if len(smp) > len(val):
        raise ValueError(f"the sample ({len(smp)}) does not fit the scratch ({len(val)})")
    k = kernels()
    n = -1
    ns = k.round_sample(w, layers, deltas, acts, smp, smp_layer, smp_row, smp_col, val)
    if ns >= 256:
        vals = val[:ns].copy()
        for z in zs:
            r = rank(ns, z)
            if r >= ns:
                break
            n = k.round_scan(w, layers, deltas, acts, float(np.partition(vals, r)[r]), _DEBRUIJN, pos, val)
            if n >= m:
                break
            n = -1
    if n < 0:  # (a NaN in the sample too: the scan finds it, the selection reports it)
        n = k.round_scan(w, layers, deltas, acts, math.inf, _DEBRUIJN, pos, val)
    thr = np.partition(val[:n], m - 1)[m - 1]  # (NaN sorts last)
    got = k.round_prune(w, alive, tracked, pos, val, n, m, thr, sel)
    if got == -1:
        raise ValueError("scores contain NaN")
    if got != m:  # pragma: no cover - cannot happen: thr is the m-th lowest
        raise AssertionError(f"the compiled round selected {got}, not {m}")


def prune(w: np.ndarray, alive: np.ndarray, sel: np.ndarray, tracked: np.ndarray) -> None:
    """Set ``w[sel] = -0.0``, and ``alive[sel] = False`` for the positions in the ranges
    ``tracked`` (an ``(k, 2)`` int64 array of ``[start, stop)``)."""
    kernels().prune(w, alive, sel, tracked)
