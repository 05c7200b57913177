/* CPU kernels of the torch engine's training step (mcl/engine/clkernels.py): channels-last maps first, NCHW below.
 *
 * A map of N x C x H x W in channels-last memory is a matrix of M = N*H*W rows and C contiguous
 * columns. BatchNorm -> Scale (-> ReLU) (METHOD §2, batch statistics as batch_norm_layer.cpp) runs
 * as one pass for the statistics and one for the output; its backward as one pass for the two sums
 * and one for the input's gradient, the ReLU's mask recomputed from the input (the same float
 * arithmetic as the forward, so the same mask). Every sum is accumulated in double per thread,
 * so no sum loses digits where it cancels (the Scale gradient at initialisation).
 * MAX pooling with stride equal to the kernel and no padding (pooling_layer.cpp's windows,
 * ceil-mode ones clipped at the edge): the first maximum of a window in row-major order is the
 * one the gradient reaches, as in Caffe.
 * The products and sums that decide the ReLU's mask are fmaf in both passes, so they round alike.
 * bfloat16 maps (the engine's bf16 training): the channels-last chain also reads x as bfloat16 (`x16`:
 * each value widened exactly to float, so every figure is the one the float32 kernels give on x cast to
 * float32) and writes the input's gradient as bfloat16, rounded to nearest even as PyTorch rounds a cast;
 * with `y16` as well, it writes its output as bfloat16 (rounded alike) and reads the output's gradient as
 * bfloat16: what a convolution under bfloat16 autocast would cast the output to, and gives back.
 * Threads: OpenMP, the same runtime as PyTorch's (libgomp, loaded by torch first).
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

static void row_range(int64_t m, int64_t *r0, int64_t *r1)
{
    int t = omp_get_thread_num(), nt = omp_get_num_threads();
    *r0 = m * t / nt;
    *r1 = m * (t + 1) / nt;
}

/* Zeroed room for two sums per channel per thread, each thread's on cache lines of its own (`stride`
 * doubles apart); NULL without memory. */
static double *parts_alloc(int nt, int64_t c, int64_t *stride)
{
    *stride = (2 * c + 7) / 8 * 8;
    double *part = aligned_alloc(64, (size_t)(nt * *stride) * sizeof(double));
    if (part)
        memset(part, 0, (size_t)(nt * *stride) * sizeof(double));
    return part;
}

/* The threads' two sums per channel added (in thread order) into u and v; frees `part`. */
static void parts_reduce(double *part, int nt, int64_t stride, int64_t c, double *u, double *v)
{
    for (int64_t j = 0; j < c; j++) {
        double a = 0.0, b = 0.0;
        for (int t = 0; t < nt; t++) {
            a += part[t * stride + j];
            b += part[t * stride + c + j];
        }
        u[j] = a;
        v[j] = b;
    }
    free(part);
}

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* Element i of a map of float (x16 0) or of bfloat16 (x16 1: the top 16 bits of a float). */
ALWAYS_INLINE float load(const void *x, int64_t i, const int x16)
{
    if (!x16)
        return ((const float *)x)[i];
    uint32_t bits = (uint32_t)((const uint16_t *)x)[i] << 16;
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* v stored as float, or as bfloat16 rounded to nearest even (a NaN stays a quiet NaN), as c10::BFloat16. */
ALWAYS_INLINE void store(void *y, int64_t i, float v, const int x16)
{
    if (!x16) {
        ((float *)y)[i] = v;
        return;
    }
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    uint16_t h = (uint16_t)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
    ((uint16_t *)y)[i] = v != v ? (uint16_t)0x7FC0 : h;
}

ALWAYS_INLINE void stats_rows(const void *x, int64_t r0, int64_t r1, int64_t c, double *s, double *q, const int x16)
{
    for (int64_t r = r0; r < r1; r++) {
#pragma omp simd
        for (int64_t j = 0; j < c; j++) {
            double v = load(x, r * c + j, x16);
            s[j] += v;
            q[j] += v * v;
        }
    }
}

/* Per channel: sum of x and sum of x*x over the m rows, in double. Returns 0, or -1 without memory. */
int mcl_bn_stats(const void *x, int x16, int64_t m, int64_t c, double *sum, double *sumsq)
{
    int nt = omp_get_max_threads();
    int64_t stride;
    double *part = parts_alloc(nt, c, &stride);
    if (!part)
        return -1;
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num();
        double *s = part + t * stride, *q = s + c;
        int64_t r0, r1;
        row_range(m, &r0, &r1);
        if (x16)
            stats_rows(x, r0, r1, c, s, q, 1);
        else
            stats_rows(x, r0, r1, c, s, q, 0);
    }
    parts_reduce(part, nt, stride, c, sum, sumsq);
    return 0;
}

/* y = (x - mean) * a + b, then max(y, 0) when relu. */
static inline float chain_value(float x, float mean, float a, float b, int relu)
{
    float y = fmaf(x - mean, a, b);
    return (relu && !(y > 0.0f)) ? 0.0f : y;
}

/* The three kinds of maps a chain runs on, each its own inlined loop: float32; bfloat16 x (and dx);
 * bfloat16 x, y and both gradients. `call(relu, x16, y16)`. */
#define BY_KIND(call, relu, x16, y16)                     \
    do {                                                  \
        if (relu && x16 && y16) call(1, 1, 1);            \
        else if (relu && x16) call(1, 1, 0);              \
        else if (relu) call(1, 0, 0);                     \
        else if (x16 && y16) call(0, 1, 1);               \
        else if (x16) call(0, 1, 0);                      \
        else call(0, 0, 0);                               \
    } while (0)

ALWAYS_INLINE void apply_rows(const void *x, int64_t r0, int64_t r1, int64_t c, const float *mean, const float *a,
                              const float *b, const int relu, void *y, const int x16, const int y16)
{
    for (int64_t r = r0; r < r1; r++) {
#pragma omp simd
        for (int64_t j = 0; j < c; j++)
            store(y, r * c + j, chain_value(load(x, r * c + j, x16), mean[j], a[j], b[j], relu), y16);
    }
}

/* The chain's output y from x: float, or bfloat16 where x16 (x) and y16 (y). */
void mcl_bn_apply(const void *x, int x16, int y16, int64_t m, int64_t c, const float *mean, const float *a,
                  const float *b, int relu, void *y)
{
#pragma omp parallel
    {
        int64_t r0, r1;
        row_range(m, &r0, &r1);
#define APPLY(R, X, Y) apply_rows(x, r0, r1, c, mean, a, b, R, y, X, Y)
        BY_KIND(APPLY, relu, x16, y16);
#undef APPLY
    }
}

/* g: dy where the chain's output was positive (every dy without relu), the output recomputed from x
 * exactly as mcl_bn_apply computed it. Row r's dy is dy's row r / rep: rep 1, or the h*w rows of one
 * image sharing one gradient row (the backward of a global average pooling, its 1/(h*w) folded in). `relu`
 * and `x16` are constants where these are inlined (one loop each). */

/* v where keep, else +0.0 (a bit mask, so the loops stay free of branches and vectorize). */
ALWAYS_INLINE float masked(float v, int keep)
{
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    bits &= -(uint32_t)(keep != 0);
    memcpy(&v, &bits, sizeof v);
    return v;
}

ALWAYS_INLINE void sums_rows(const void *dy, int64_t rep, const void *x, int64_t r0, int64_t r1, int64_t c,
                             const float *mean, const float *a, const float *b, const int relu,
                             double *p1, double *p2, const int x16, const int y16)
{
    for (int64_t r = r0; r < r1; r++) {
        int64_t dr = (r / rep) * c;
#pragma omp simd
        for (int64_t j = 0; j < c; j++) {
            float xc = load(x, r * c + j, x16) - mean[j];
            float d = load(dy, dr + j, y16);
            float g = relu ? masked(d, fmaf(xc, a[j], b[j]) > 0.0f) : d;
            p1[j] += (double)g;
            p2[j] += (double)g * (double)xc;
        }
    }
}

/* Per channel: s1 = sum of g, s2 = sum of g * (x - mean), in double. Returns 0, or -1 without memory. */
int mcl_bn_backward_sums(const void *dy, int64_t rep, const void *x, int x16, int y16, int64_t m, int64_t c,
                         const float *mean, const float *a, const float *b, int relu, double *s1, double *s2)
{
    int nt = omp_get_max_threads();
    int64_t stride;
    double *part = parts_alloc(nt, c, &stride);
    if (!part)
        return -1;
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num();
        double *p1 = part + t * stride, *p2 = p1 + c;
        int64_t r0, r1;
        row_range(m, &r0, &r1);
#define SUMS(R, X, Y) sums_rows(dy, rep, x, r0, r1, c, mean, a, b, R, p1, p2, X, Y)
        BY_KIND(SUMS, relu, x16, y16);
#undef SUMS
    }
    parts_reduce(part, nt, stride, c, s1, s2);
    return 0;
}

ALWAYS_INLINE void input_rows(const void *dy, int64_t rep, const void *x, int64_t r0, int64_t r1, int64_t c,
                              const float *mean, const float *a, const float *b, const int relu,
                              const float *ka, const float *kb, const float *kc, void *dx, const int x16,
                              const int y16)
{
    for (int64_t r = r0; r < r1; r++) {
        int64_t dr = (r / rep) * c;
#pragma omp simd
        for (int64_t j = 0; j < c; j++) {
            float xc = load(x, r * c + j, x16) - mean[j];
            float d = load(dy, dr + j, y16);
            float g = relu ? masked(d, fmaf(xc, a[j], b[j]) > 0.0f) : d;
            store(dx, r * c + j, fmaf(ka[j], g, fmaf(kb[j], xc, kc[j])), x16);
        }
    }
}

/* dx = ka * g + kb * (x - mean) + kc; x and dx float, or both bfloat16 where x16 (dy: where y16). */
void mcl_bn_backward_input(const void *dy, int64_t rep, const void *x, int x16, int y16, int64_t m, int64_t c,
                           const float *mean, const float *a, const float *b, int relu, const float *ka,
                           const float *kb, const float *kc, void *dx)
{
#pragma omp parallel
    {
        int64_t r0, r1;
        row_range(m, &r0, &r1);
#define INPUT(R, X, Y) input_rows(dy, rep, x, r0, r1, c, mean, a, b, R, ka, kb, kc, dx, X, Y)
        BY_KIND(INPUT, relu, x16, y16);
#undef INPUT
    }
}

/* MAX pooling, kernel kh x kw with the same stride, no padding, output oh x ow (windows at the
 * right and bottom edge clipped to the input). x: n x h x w x c; y: n x oh x ow x c; arg: the
 * window position (row-major, 0 .. kh*kw-1) of each output's maximum. */
void mcl_max_pool(const float *x, int64_t n, int64_t h, int64_t w, int64_t c, int64_t kh, int64_t kw,
                  int64_t oh, int64_t ow, float *y, uint8_t *arg)
{
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t i = 0; i < n; i++)
        for (int64_t p = 0; p < oh; p++) {
            int64_t h0 = p * kh, h1 = h0 + kh < h ? h0 + kh : h;
            for (int64_t q = 0; q < ow; q++) {
                int64_t w0 = q * kw, w1 = w0 + kw < w ? w0 + kw : w;
                float *yo = y + ((i * oh + p) * ow + q) * c;
                uint8_t *ao = arg + ((i * oh + p) * ow + q) * c;
                for (int64_t j = 0; j < c; j++) {
                    yo[j] = -FLT_MAX;
                    ao[j] = 0;
                }
                for (int64_t hh = h0; hh < h1; hh++)
                    for (int64_t ww = w0; ww < w1; ww++) {
                        const float *xi = x + ((i * h + hh) * w + ww) * c;
                        uint8_t pos = (uint8_t)((hh - h0) * kw + (ww - w0));
#pragma omp simd
                        for (int64_t j = 0; j < c; j++) {
                            int more = xi[j] > yo[j];
                            yo[j] = more ? xi[j] : yo[j];
                            ao[j] = more ? pos : ao[j];
                        }
                    }
            }
        }
}

/* Its backward: every input element gets dy of its window where it was the maximum, else 0
 * (inputs outside every window, possible only in floor mode, get 0). */
void mcl_max_pool_backward(const float *dy, const uint8_t *arg, int64_t n, int64_t h, int64_t w, int64_t c,
                           int64_t kh, int64_t kw, int64_t oh, int64_t ow, float *dx)
{
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t i = 0; i < n; i++)
        for (int64_t hh = 0; hh < h; hh++) {
            int64_t p = hh / kh;
            for (int64_t ww = 0; ww < w; ww++) {
                int64_t q = ww / kw;
                float *out = dx + ((i * h + hh) * w + ww) * c;
                if (p >= oh || q >= ow) {
                    memset(out, 0, (size_t)c * sizeof(float));
                    continue;
                }
                uint8_t pos = (uint8_t)((hh - p * kh) * kw + (ww - q * kw));
                const float *d = dy + ((i * oh + p) * ow + q) * c;
                const uint8_t *a = arg + ((i * oh + p) * ow + q) * c;
#pragma omp simd
                for (int64_t j = 0; j < c; j++)
                    out[j] = a[j] == pos ? d[j] : 0.0f;
            }
        }
}

/* ---- The same kernels on NCHW maps: n images of c planes of hw contiguous values. ---------------- */

/* Per channel: sum of x and of x*x over its n planes, in double. */
void mcl_bn_stats_nchw(const float *x, int64_t n, int64_t c, int64_t hw, double *sum, double *sumsq)
{
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t j = 0; j < c; j++) {
        double s = 0.0, q = 0.0;
        for (int64_t i = 0; i < n; i++) {
            const float *p = x + (i * c + j) * hw;
#pragma omp simd reduction(+ : s, q)
            for (int64_t k = 0; k < hw; k++) {
                double v = p[k];
                s += v;
                q += v * v;
            }
        }
        sum[j] = s;
        sumsq[j] = q;
    }
}

void mcl_bn_apply_nchw(const float *x, int64_t n, int64_t c, int64_t hw, const float *mean, const float *a,
                       const float *b, int relu, float *y)
{
#pragma omp parallel for schedule(static)
    for (int64_t ij = 0; ij < n * c; ij++) {
        int64_t j = ij % c;
        const float *p = x + ij * hw;
        float *o = y + ij * hw;
        float mj = mean[j], aj = a[j], bj = b[j];
        if (relu) {
#pragma omp simd
            for (int64_t k = 0; k < hw; k++)
                o[k] = chain_value(p[k], mj, aj, bj, 1);
        } else {
#pragma omp simd
            for (int64_t k = 0; k < hw; k++)
                o[k] = chain_value(p[k], mj, aj, bj, 0);
        }
    }
}

/* dy: n*c planes of hw values (rep 1), or one value per plane (rep hw, a global pooling's gradient). */
void mcl_bn_backward_sums_nchw(const float *dy, int64_t rep, const float *x, int64_t n, int64_t c, int64_t hw,
                               const float *mean, const float *a, const float *b, int relu, double *s1,
                               double *s2)
{
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t j = 0; j < c; j++) {
        double u = 0.0, v = 0.0;
        float mj = mean[j], aj = a[j], bj = b[j];
        for (int64_t i = 0; i < n; i++) {
            const float *p = x + (i * c + j) * hw;
            if (rep == 1) {
                const float *d = dy + (i * c + j) * hw;
#pragma omp simd reduction(+ : u, v)
                for (int64_t k = 0; k < hw; k++) {
                    float xc = p[k] - mj;
                    float g = relu ? masked(d[k], fmaf(xc, aj, bj) > 0.0f) : d[k];
                    u += (double)g;
                    v += (double)g * (double)xc;
                }
            } else {
                float d = dy[i * c + j];
#pragma omp simd reduction(+ : u, v)
                for (int64_t k = 0; k < hw; k++) {
                    float xc = p[k] - mj;
                    float g = relu ? masked(d, fmaf(xc, aj, bj) > 0.0f) : d;
                    u += (double)g;
                    v += (double)g * (double)xc;
                }
            }
        }
        s1[j] = u;
        s2[j] = v;
    }
}

void mcl_bn_backward_input_nchw(const float *dy, int64_t rep, const float *x, int64_t n, int64_t c, int64_t hw,
                                const float *mean, const float *a, const float *b, int relu, const float *ka,
                                const float *kb, const float *kc, float *dx)
{
#pragma omp parallel for schedule(static)
    for (int64_t ij = 0; ij < n * c; ij++) {
        int64_t j = ij % c;
        const float *p = x + ij * hw;
        float *o = dx + ij * hw;
        float mj = mean[j], aj = a[j], bj = b[j], kaj = ka[j], kbj = kb[j], kcj = kc[j];
        if (rep == 1) {
            const float *d = dy + ij * hw;
#pragma omp simd
            for (int64_t k = 0; k < hw; k++) {
                float xc = p[k] - mj;
                float g = relu ? masked(d[k], fmaf(xc, aj, bj) > 0.0f) : d[k];
                o[k] = fmaf(kaj, g, fmaf(kbj, xc, kcj));
            }
        } else {
            float d = dy[ij];
#pragma omp simd
            for (int64_t k = 0; k < hw; k++) {
                float xc = p[k] - mj;
                float g = relu ? masked(d, fmaf(xc, aj, bj) > 0.0f) : d;
                o[k] = fmaf(kaj, g, fmaf(kbj, xc, kcj));
            }
        }
    }
}

/* One output row of a 2 x 2 pooling over full windows (columns 0 .. 2 * n - 1 of rows a and b): the
 * first maximum in row-major order, as selects so that the loop vectorizes. */
ALWAYS_INLINE void pool2_row(const float *a, const float *b, int64_t n, float *y, uint8_t *arg)
{
#pragma omp simd
    for (int64_t r = 0; r < n; r++) {
        float v0 = a[2 * r], v1 = a[2 * r + 1], v2 = b[2 * r], v3 = b[2 * r + 1];
        float best = fmaxf(fmaxf(v0, v1), fmaxf(v2, v3));
        int n0 = v0 != best, n1 = v1 != best, n2 = v2 != best;
        y[r] = best;
        arg[r] = (uint8_t)(n0 * (1 + n1 * (1 + n2)));  /* the first position holding the maximum */
    }
}

/* MAX pooling on NCHW planes (as mcl_max_pool): y, arg: planes of oh x ow. */
void mcl_max_pool_nchw(const float *x, int64_t planes, int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t oh,
                       int64_t ow, float *y, uint8_t *arg)
{
#pragma omp parallel for schedule(static)
    for (int64_t ij = 0; ij < planes; ij++) {
        const float *p = x + ij * h * w;
        for (int64_t q = 0; q < oh; q++) {
            int64_t h0 = q * kh, h1 = h0 + kh < h ? h0 + kh : h;
            int64_t r0 = 0;
            if (kh == 2 && kw == 2 && h1 == h0 + 2) {  /* the full windows of the row, vectorized */
                r0 = w / 2 < ow ? w / 2 : ow;
                pool2_row(p + h0 * w, p + (h0 + 1) * w, r0, y + (ij * oh + q) * ow, arg + (ij * oh + q) * ow);
            }
            for (int64_t r = r0; r < ow; r++) {
                int64_t w0 = r * kw, w1 = w0 + kw < w ? w0 + kw : w;
                float best = -FLT_MAX;
                uint8_t at = 0;
                for (int64_t hh = h0; hh < h1; hh++)
                    for (int64_t ww = w0; ww < w1; ww++) {
                        float v = p[hh * w + ww];
                        if (v > best) {
                            best = v;
                            at = (uint8_t)((hh - h0) * kw + (ww - w0));
                        }
                    }
                y[(ij * oh + q) * ow + r] = best;
                arg[(ij * oh + q) * ow + r] = at;
            }
        }
    }
}

void mcl_max_pool_backward_nchw(const float *dy, const uint8_t *arg, int64_t planes, int64_t h, int64_t w,
                                int64_t kh, int64_t kw, int64_t oh, int64_t ow, float *dx)
{
#pragma omp parallel for schedule(static)
    for (int64_t ij = 0; ij < planes; ij++) {
        float *o = dx + ij * h * w;
        for (int64_t hh = 0; hh < h; hh++) {
            int64_t q = hh / kh;
            int64_t w0 = 0;
            if (kh == 2 && kw == 2 && q < oh) {  /* the full windows of the row, vectorized */
                int64_t n = w / 2 < ow ? w / 2 : ow;
                const float *d = dy + (ij * oh + q) * ow;
                const uint8_t *a = arg + (ij * oh + q) * ow;
                float *out = o + hh * w;
                uint8_t pos = (uint8_t)((hh - q * 2) * 2);
#pragma omp simd
                for (int64_t r = 0; r < n; r++) {
                    out[2 * r] = masked(d[r], a[r] == pos);
                    out[2 * r + 1] = masked(d[r], a[r] == pos + 1);
                }
                w0 = 2 * n;
            }
            for (int64_t ww = w0; ww < w; ww++) {
                int64_t r = ww / kw;
                if (q >= oh || r >= ow) {
                    o[hh * w + ww] = 0.0f;
                    continue;
                }
                int64_t at = (ij * oh + q) * ow + r;
                o[hh * w + ww] = arg[at] == (uint8_t)((hh - q * kh) * kw + (ww - r * kw)) ? dy[at] : 0.0f;
            }
        }
    }
}
