"""A float32 Winograd F(2x2, 3x3) conv kernel, and what the float32 bound says about it.

Winograd computes each 2x2 output tile from a 4x4 input tile as
``Y = Aᵀ [Σ_c (G g_c Gᵀ) ⊙ (Bᵀ d_c B)] A`` (Lavin & Gray 2016), all in float32.
Its transforms mix *every* input of the 4x4 tile into *every* output of the tile:
the extra terms cancel in exact arithmetic but their rounding errors stay. So
the error of an output is not bounded by its own Σ|x·w| but by the transformed
magnitudes ``Aᵀ[Σ_c |G||g_c||Gᵀ| ⊙ |Bᵀ||d_c||B|]|A|`` (Barabasz et al.,
arXiv:1803.10986: the error grows with the tile size and the transform entries).

What this example shows (and the tests check):

* on well-scaled random data the kernel **passes** the plain float32 bound
  (the bound is worst-case; Winograd's extra error is modest there);
* on mixed-magnitude data (a dominant kernel tap, scattered huge inputs: see
  ``adversarial_problem``) the kernel **fails** the plain float32 bound, and the assertion says that the
  errors exceed the bound without any semantic fault and names transform
  amplification (Winograd/FFT) as the cause;
* with a Winograd-aware tolerance (``winograd_tolerance``: γ·the transformed
  magnitudes, passed as ``tol=``) the same output passes: the kernel is an
  honest Winograd, just not as accurate as direct float32 summation.
"""

from __future__ import annotations

import numpy as np

from refconv.testing import assert_conv2d_close

BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)


def _winograd(x, w, pads, dtype, bt, g, at):
    """F(2x2,3x3) on NHWC x and HWIO w (3x3, stride 1, no dilation, groups 1), all arithmetic in ``dtype``."""
    (t, b_), (l, r) = pads
    n, h, wd, c = x.shape
    oh, ow = h + t + b_ - 2, wd + l + r - 2
    th, tw = -(-oh // 2), -(-ow // 2)
    xp = np.zeros((n, 2 * th + 2, 2 * tw + 2, c), dtype)
    xp[:, t:t + h, l:l + wd] = x
    bt, g, at = bt.astype(dtype), g.astype(dtype), at.astype(dtype)
    # input tiles (n, th, tw, 4, 4, c) -> V = Bᵀ d B
    tiles = np.stack([np.stack([xp[:, 2 * i:2 * i + 4, 2 * j:2 * j + 4] for j in range(tw)], 1)
                      for i in range(th)], 1)
    v = np.einsum("ab,ntsbdc,ed->ntsaec", bt, tiles, bt)
    u = np.einsum("ab,bdco,ed->aeco", g, w.astype(dtype), g)  # U = G g Gᵀ, (4, 4, c, o)
    m = np.einsum("ntsaec,aeco->ntsaeo", v, u)  # Σ_c U ⊙ V
    y = np.einsum("ab,ntsbdo,ed->ntsaeo", at, m, at)  # Aᵀ M A, (n, th, tw, 2, 2, o)
    y = y.transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * th, 2 * tw, -1)
    return y[:, :oh, :ow]


def conv2d_winograd_f32(x, w, b, spec):
    """float32 Winograd F(2x2,3x3): 3x3 kernels, stride 1, dilation 1, groups 1; float32 in spec.data_format."""
    assert (spec.KH, spec.KW) == (3, 3) and spec.stride == (1, 1) and spec.dilation == (1, 1) and spec.groups == 1
    xn = spec.x_to_nhwc(np.asarray(x, np.float32))
    wn = spec.w_to_hwio(np.asarray(w, np.float32))
    y = _winograd(xn, wn, spec.pads, np.float32, BT, G, AT)
    if b is not None:
        y = y + np.asarray(b, np.float32)
    return spec.y_from_nhwc(y.astype(np.float32))


def winograd_tolerance(x, w, b, spec):
    """γ_m·Aᵀ[Σ_c |G||g||Gᵀ| ⊙ |Bᵀ||d||B|]|A| (+|b|), m = C + 13 roundings along any path (float32 u).

    Evaluated in float64 with absolute values (each stage's rounding is bounded by
    u times the magnitudes that stage combines, Higham 2002 §3.1); inflated by 2
    for safety. A tolerance array in spec.data_format, for ``tol=``.
    """
    u = 2.0**-24
    m = spec.C + 13  # 4 (input transform) + 4 (kernel transform) + 1 (product) + C (channel sum) + 4 (output)
    gamma = m * u / (1 - m * u)
    xn = np.abs(spec.x_to_nhwc(np.asarray(x, np.float64)))
    wn = np.abs(spec.w_to_hwio(np.asarray(w, np.float64)))
    mag = _winograd(xn, wn, spec.pads, np.float64, np.abs(BT), np.abs(G), np.abs(AT))
    if b is not None:
        mag = mag + np.abs(np.asarray(b, np.float64))
    return spec.y_from_nhwc(2 * gamma * mag)


def adversarial_problem(rng: np.random.Generator, c: int = 16, o: int = 8, scale: float = 2.0**20):
    """Mixed magnitudes that Winograd's transforms amplify: a dominant tap and scattered huge inputs.

    w is tiny (scale⁻¹) except its (0, 0) tap; a quarter of x is huge (scale).
    In the exact conv a huge input meets the tiny taps, so Σ|x·w| stays small;
    the input transform Bᵀ d B, however, adds huge and small inputs of one tile
    (e.g. d₀₀ - d₀₂ - d₂₀ + d₂₂), and that sum's rounding error (u·huge) is
    then multiplied by the dominant tap's transformed weight.
    """
    x = rng.standard_normal((1, 12, 12, c))
    x[rng.random(x.shape) < 0.25] *= scale
    w = rng.standard_normal((3, 3, c, o)) / scale
    w[0, 0] *= scale
    return x.astype(np.float32), w.astype(np.float32)


def main() -> dict[str, str]:
    from refconv.spec import ConvSpec

    rng = np.random.default_rng(4)
    out: dict[str, str] = {}
    x = rng.standard_normal((1, 12, 12, 16)).astype(np.float32)
    w = rng.standard_normal((3, 3, 16, 8)).astype(np.float32)
    assert_conv2d_close(conv2d_winograd_f32, x, w, padding="SAME", precision="float32")
    out["random"] = "passes the plain float32 bound"
    xa, w = adversarial_problem(rng)
    try:
        assert_conv2d_close(conv2d_winograd_f32, xa, w, padding="SAME", precision="float32")
        out["adversarial"] = "passes the plain float32 bound"
    except AssertionError as exc:
        out["adversarial"] = str(exc)
    spec = ConvSpec.from_shapes(xa.shape, w.shape, padding="SAME")
    y = conv2d_winograd_f32(xa, w, None, spec)
    assert_conv2d_close(y, xa, w, padding="SAME", tol=winograd_tolerance(xa, w, None, spec))
    out["adversarial_winograd_tol"] = "passes the Winograd-aware tolerance"
    for k, v in out.items():
        print(f"--- {k}:\n{v}")
    return out


if __name__ == "__main__":
    main()
