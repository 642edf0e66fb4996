/* The forward passes of a Mamba direction on CPU, compiled on the machine that runs them, on first use
 * (compiled_kernel.py): the causal depthwise conv1d with its SiLU, and the selective scan
 *
 *     dt  = softplus(delta + delta_bias)          (bias and softplus optional; delta = W delta_low when the
 *                                                  time steps come as their low-rank projection, as in Mamba)
 *     h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t
 *     y_t = (<C_t, h_t> + D u_t) * silu(z_t)      (D and z optional)
 *
 * No gradients: they write their outputs and keep nothing. Both step through time for WIDTH channels at once, one
 * vector lane per channel, the scan's states in registers: no horizontal sums, and each step reads B_t and C_t once
 * for all of them.
 *
 * Sequences are (batch, L, channels) with any batch and time strides and a channel stride of 1, so that the
 * channels of a step are one vector load; B and C are (batch, groups, L, N) with any strides, A is (d_inner, N),
 * all float32. Step t of the sequence is the token at position
 * offset + (t / inner) * outer_stride + (t % inner) * inner_stride of the tensors (ScanOrder), so that one layout in
 * memory serves every direction of a ToM layer without reordering copies: raster order, its reverse, and depth
 * fastest. One call of the scan covers the channels [first, last) of every batch element, one call of the conv1d
 * the steps [first, last); the caller splits them between threads (calls on disjoint parts are independent). Each
 * returns 0, 1 for arguments it cannot take, or 2 where memory for its constants cannot be had.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define WIDTH 16 /* channels side by side: one AVX-512 vector of float32 */
#define MAX_STATE 64
#define MAX_KERNEL 16
#define MAX_RANK 64
#define LOG2E 1.4426950408889634f

typedef struct {
    int64_t batch, time; /* the channel stride is 1 */
} SequenceStrides;

typedef struct {
    int64_t batch, group, time, state;
} StateStrides;

typedef struct {
    SequenceStrides u, delta, z, y;
    StateStrides B, C;
} ScanStrides;

typedef struct {
    int64_t outer, inner, outer_stride, inner_stride, offset; /* L = outer * inner steps */
} ScanOrder;

static inline int64_t position(const ScanOrder *order, int64_t outer, int64_t inner) {
    return order->offset + outer * order->outer_stride + inner * order->inner_stride;
}

/* 2^x, inline so that the loops over channels stay vector loops (a call to the vector expf spills the states each
 * step). 2^x = 2^i 2^f, i = rint(x), |f| <= 1/2, 2^f by its Taylor series to degree 7: relative error below 1e-8,
 * under float32's rounding. x is clamped to [-126, 127]: 2^-126 is, to any state or gate, 0. */
static inline float exp2_clamped(float x) {
    x = x < -126.0f ? -126.0f : (x > 127.0f ? 127.0f : x);
    const float i = rintf(x), f = x - i;
    float p = 1.525273380405984e-5f;
    p = p * f + 1.540353039338161e-4f;
    p = p * f + 1.333355814642844e-3f;
    p = p * f + 9.618129107628477e-3f;
    p = p * f + 5.550410866482158e-2f;
    p = p * f + 2.402265069591007e-1f;
    p = p * f + 6.931471805599453e-1f;
    p = p * f + 1.0f;
    union { int32_t bits; float value; } scale = {.bits = ((int32_t)i + 127) << 23};
    return p * scale.value;
}

/* log(1 + exp(x)) = max(x, 0) + log1p(e), e = exp(-|x|) in (0, 1], log1p(e) = 2 atanh(s), s = e / (2 + e) in
 * (0, 1/3], by atanh's series to s^17 (relative error below 1e-9); inline, as exp2_clamped. Above 20, x, as torch. */
static inline float softplus(float x) {
    const float e = exp2_clamped(-fabsf(x) * LOG2E), s = e / (2.0f + e), s2 = s * s;
    float p = 1.0f / 17.0f;
    p = p * s2 + 1.0f / 15.0f;
    p = p * s2 + 1.0f / 13.0f;
    p = p * s2 + 1.0f / 11.0f;
    p = p * s2 + 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    return x > 20.0f ? x : fmaxf(x, 0.0f) + 2.0f * s * p;
}

static inline float silu(float x) {
    return x / (1.0f + exp2_clamped(-x * LOG2E));
}

/* u_t = silu(bias + sum_j weight[j] x_{t - k + 1 + j}), x before the first step taken as 0; weight (d_inner, k).
 * Token by token, each over all channels at once: the k input rows a step reads are the rows the steps before it
 * read, still in cache. The steps are independent (the inputs are given), so one call covers the steps
 * [first, last) of the order, and the caller splits them between threads. */
int causal_conv1d_silu_forward(const float *x, const SequenceStrides *x_strides_, const float *weight,
                               const float *bias, int64_t kernel, float *u, const SequenceStrides *u_strides_,
                               const ScanOrder *order, int64_t batch, int64_t channels, int64_t first, int64_t last) {
    const int64_t length = order->outer * order->inner;
    if (kernel < 1 || kernel > MAX_KERNEL || first < 0 || last > length || channels < 1) return 1;
    const SequenceStrides x_strides = *x_strides_, u_strides = *u_strides_;
    float *taps = malloc(sizeof(float) * (kernel + 1) * channels);
    if (!taps) return 2;
    float *w[MAX_KERNEL], *shift = taps + kernel * channels; /* w[j]: the tap on step t - j, for every channel */
    for (int64_t j = 0; j < kernel; ++j) w[j] = taps + j * channels;
    for (int64_t c = 0; c < channels; ++c) {
        for (int64_t j = 0; j < kernel; ++j) w[j][c] = weight[c * kernel + kernel - 1 - j];
        shift[c] = bias ? bias[c] : 0.0f;
    }
    for (int64_t b = 0; b < batch; ++b) {
        const float *x_b = x + b * x_strides.batch;
        float *u_b = u + b * u_strides.batch;
        const float *rows[MAX_KERNEL]; /* rows[j]: the input row of step t - j, NULL before the first step */
        for (int64_t j = 1; j < kernel; ++j) {
            const int64_t step = first - j;
            rows[j - 1] = step < 0 ? 0 : x_b + position(order, step / order->inner, step % order->inner) *
                                                   x_strides.time;
        }
        for (int64_t t = first, t1 = first / order->inner, t2 = first % order->inner; t < last; ++t) {
            const int64_t p = position(order, t1, t2);
            if (++t2 == order->inner) {
                t2 = 0;
                ++t1;
            }
            for (int64_t j = kernel - 1; j > 0; --j) rows[j] = rows[j - 1];
            rows[0] = x_b + p * x_strides.time;
            float *ut = u_b + p * u_strides.time;
#pragma omp simd
            for (int64_t c = 0; c < channels; ++c) ut[c] = shift[c] + w[0][c] * rows[0][c];
            for (int64_t j = 1; j < kernel && rows[j]; ++j) {
                const float *row = rows[j], *tap = w[j];
#pragma omp simd
                for (int64_t c = 0; c < channels; ++c) ut[c] += tap[c] * row[c];
            }
#pragma omp simd
            for (int64_t c = 0; c < channels; ++c) ut[c] = silu(ut[c]);
        }
    }
    free(taps);
    return 0;
}

/* delta_weight (d_inner, delta_rank), or NULL: then delta holds the time steps of every channel, else their
 * low-rank form, (batch, L, delta_rank), projected here (the d_inner-wide time steps are never stored). */
int selective_scan_forward(const float *u, const float *delta, const float *delta_weight, int64_t delta_rank,
                           const float *A, const float *B, const float *C,
                           const float *D, const float *z, const float *delta_bias, int delta_softplus, float *y,
                           int accumulate, float *last_state, const ScanStrides *strides, const ScanOrder *order,
                           int64_t batch, int64_t d_inner, int64_t d_state, int64_t groups, int64_t first,
                           int64_t last) {
    if (d_state < 1 || d_state > MAX_STATE || groups < 1 || d_inner % groups || first < 0 || last > d_inner ||
        (delta_weight && (delta_rank < 1 || delta_rank > MAX_RANK)))
        return 1;
    const int64_t per_group = d_inner / groups;
    const SequenceStrides u_strides = strides->u, delta_strides = strides->delta, z_strides = strides->z,
                          y_strides = strides->y;
    const StateStrides B_strides = strides->B, C_strides = strides->C;
    for (int64_t b = 0; b < batch; ++b) {
        for (int64_t c0 = first; c0 < last;) {
            const int64_t g = c0 / per_group, group_end = (g + 1) * per_group;
            const int64_t end = c0 + WIDTH < last ? c0 + WIDTH : last;
            const int64_t width = end < group_end ? end - c0 : group_end - c0;
            float h[MAX_STATE][WIDTH] = {{0.0f}}, a[MAX_STATE][WIDTH] = {{0.0f}};
            float bias[WIDTH] = {0.0f}, skip[WIDTH] = {0.0f}, w[MAX_RANK][WIDTH] = {{0.0f}};
            float dt[WIDTH] = {0.0f}, dtx[WIDTH] = {0.0f}, out[WIDTH] = {0.0f}; /* lanes past width stay 0 */
            for (int64_t k = 0; k < width; ++k) {
                for (int64_t n = 0; n < d_state; ++n) a[n][k] = A[(c0 + k) * d_state + n] * LOG2E;
                bias[k] = delta_bias ? delta_bias[c0 + k] : 0.0f;
                skip[k] = D ? D[c0 + k] : 0.0f;
                for (int64_t r = 0; delta_weight && r < delta_rank; ++r) w[r][k] = delta_weight[(c0 + k) * delta_rank + r];
            }
            const float *u_b = u + b * u_strides.batch + c0;
            const float *delta_b = delta + b * delta_strides.batch + (delta_weight ? 0 : c0);
            const float *z_b = z ? z + b * z_strides.batch + c0 : 0;
            float *y_b = y + b * y_strides.batch + c0;
            const float *B_b = B + b * B_strides.batch + g * B_strides.group;
            const float *C_b = C + b * C_strides.batch + g * C_strides.group;
            for (int64_t t1 = 0; t1 < order->outer; ++t1) {
                for (int64_t t2 = 0; t2 < order->inner; ++t2) {
                    const int64_t p = position(order, t1, t2);
                    const float *ut = u_b + p * u_strides.time, *dt_in = delta_b + p * delta_strides.time;
                    const float *Bt = B_b + p * B_strides.time, *Ct = C_b + p * C_strides.time;
                    if (delta_weight) {
                        float step[WIDTH];
#pragma omp simd
                        for (int64_t k = 0; k < WIDTH; ++k) step[k] = bias[k];
                        for (int64_t r = 0; r < delta_rank; ++r) {
                            const float low = dt_in[r];
#pragma omp simd
                            for (int64_t k = 0; k < WIDTH; ++k) step[k] += w[r][k] * low;
                        }
#pragma omp simd
                        for (int64_t k = 0; k < width; ++k) dt[k] = delta_softplus ? softplus(step[k]) : step[k];
                    } else {
#pragma omp simd
                        for (int64_t k = 0; k < width; ++k) {
                            const float step = dt_in[k] + bias[k];
                            dt[k] = delta_softplus ? softplus(step) : step;
                        }
                    }
#pragma omp simd
                    for (int64_t k = 0; k < width; ++k) {
                        dtx[k] = dt[k] * ut[k];
                        out[k] = skip[k] * ut[k];
                    }
                    for (int64_t n = 0; n < d_state; ++n) {
                        const float Bn = Bt[n * B_strides.state], Cn = Ct[n * C_strides.state];
                        float *hn = h[n];
                        const float *an = a[n];
#pragma omp simd
                        for (int64_t k = 0; k < WIDTH; ++k) {
                            hn[k] = exp2_clamped(dt[k] * an[k]) * hn[k] + dtx[k] * Bn;
                            out[k] += Cn * hn[k];
                        }
                    }
                    if (z_b) {
                        const float *zt = z_b + p * z_strides.time;
#pragma omp simd
                        for (int64_t k = 0; k < width; ++k) out[k] *= silu(zt[k]);
                    }
                    float *yt = y_b + p * y_strides.time;
                    if (accumulate) {
#pragma omp simd
                        for (int64_t k = 0; k < width; ++k) yt[k] += out[k];
                    } else {
#pragma omp simd
                        for (int64_t k = 0; k < width; ++k) yt[k] = out[k];
                    }
                }
            }
            if (last_state)
                for (int64_t k = 0; k < width; ++k)
                    for (int64_t n = 0; n < d_state; ++n)
                        last_state[(b * d_inner + c0 + k) * d_state + n] = h[n][k];
            c0 += width;
        }
    }
    return 0;
}
