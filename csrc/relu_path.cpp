#include "relu_path.h"

#include <pybind11/numpy.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.h"

namespace xaisdk {
namespace relu_path {

using i64 = std::int64_t;

// The loops below are short runs of multiply-adds over channels; AVX2/FMA and AVX-512 clones of
// each kernel are picked at load time by the CPU's x86-64 feature level (GCC >= 12 on x86-64 Linux;
// "arch=<cpu model>" clones would dispatch on the CPU model and never run on AMD), the portable
// build elsewhere.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__) && defined(__linux__)
#define XAISDK_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define XAISDK_SIMD_CLONES
#endif

namespace {

// Rows p of the second layer's output whose window covers input row i: p*s - pad + k = i, 0 <= k < K.
inline void covering(i64 i, i64 kernel, i64 stride, i64 pad, i64 out, i64& first, i64& last) {
    const i64 top = i + pad;                                        // = p * stride + k
    first = top - kernel + 1 <= 0 ? 0 : (top - kernel + stride) / stride;  // ceil((top - K + 1) / stride)
    last = std::min(top / stride, out - 1);
}

// sum over the outputs that input unit e feeds of weight * values (values laid out like C2's output).
template <typename T>
inline double transposed_at(const T* values, const float* weight, const ConvGeometry& g, i64 e) {
    const i64 c = e / (g.h_in * g.w_in);
    const i64 i = (e / g.w_in) % g.h_in;
    const i64 j = e % g.w_in;
    i64 p0, p1, q0, q1;
    covering(i, g.kh, g.sh, g.ph, g.h_out, p0, p1);
    covering(j, g.kw, g.sw, g.pw, g.w_out, q0, q1);
    double total = 0.0;
    for (i64 o = 0; o < g.c_out; ++o) {
        const float* k = weight + (o * g.c_in + c) * g.kh * g.kw;
        const T* v = values + o * g.h_out * g.w_out;
        for (i64 p = p0; p <= p1; ++p) {
            const i64 ki = i + g.ph - p * g.sh;
            for (i64 q = q0; q <= q1; ++q) {
                const i64 kj = j + g.pw - q * g.sw;
                total += static_cast<double>(k[ki * g.kw + kj]) * static_cast<double>(v[p * g.w_out + q]);
            }
        }
    }
    return total;
}

struct Event {
    i64 unit;
    double sign;
};

}  // namespace

void active_ranges(const float* z0, const float* dz, const float* alphas, i64 N, i64 E, i64 S, i64* lo, i64* hi) {
    const i64 total = N * E;
#ifdef XAISDK_HAVE_OPENMP
#pragma omp parallel for schedule(static) if (total * 8 >= kParallelMinWork)
#endif
    for (i64 t = 0; t < total; ++t) {
        const float a0 = z0[t];
        const float d = dz[t];
        // active(s) = a0 + alphas[s] * d > 0 is monotone in s (alphas ascending, rounding monotone):
        // the first step where it turns true (d > 0) or false (d < 0) is found by bisection.
        auto active = [&](i64 s) { return a0 + alphas[s] * d > 0.0f; };
        i64 l = 0, h = 0;
        if (S > 0 && active(0) == active(S - 1)) {
            if (active(0)) h = S;
        } else if (S > 0) {
            const bool rising = !active(0);
            i64 a = 0, b = S - 1;  // active(a) != active(b); find the first s with active(s) == active(S - 1)
            while (b - a > 1) {
                const i64 mid = a + (b - a) / 2;
                (active(mid) == active(S - 1) ? b : a) = mid;
            }
            if (rising) {
                l = b;
                h = S;
            } else {
                h = b;
            }
        }
        lo[t] = l;
        hi[t] = h;
    }
}

XAISDK_SIMD_CLONES
void conv_forward(const float* z0, const float* dz, const i64* lo, const i64* hi, const float* alphas, const float* weight,
                  const float* bias, const float* base_p, const float* base_q, const ConvGeometry& g, i64 N, i64 S, float* z2) {
    const i64 E = g.in_size();
    const i64 F = g.out_size();
    const i64 plane = g.h_out * g.w_out;
    std::vector<i64> starts(static_cast<size_t>(S) + 1);
    std::vector<Event> events;
    for (i64 n = 0; n < N; ++n) {
        const i64* lo_n = lo + n * E;
        const i64* hi_n = hi + n * E;
        // Events bucketed by the step at which a unit switches on (+1) or off (-1).
        std::fill(starts.begin(), starts.end(), 0);
        for (i64 e = 0; e < E; ++e) {
            if (lo_n[e] >= hi_n[e]) continue;
            if (lo_n[e] > 0) ++starts[lo_n[e]];
            if (hi_n[e] < S) ++starts[hi_n[e]];
        }
        i64 running = 0;
        for (i64 s = 0; s <= S; ++s) {
            const i64 count = starts[s];
            starts[s] = running;
            running += count;
        }
        events.assign(static_cast<size_t>(running), Event{0, 0.0});
        std::vector<i64> cursor(starts.begin(), starts.end());
        for (i64 e = 0; e < E; ++e) {
            if (lo_n[e] >= hi_n[e]) continue;
            if (lo_n[e] > 0) events[cursor[lo_n[e]]++] = Event{e, 1.0};
            if (hi_n[e] < S) events[cursor[hi_n[e]]++] = Event{e, -1.0};
        }
        const float* z0_n = z0 + n * E;
        const float* dz_n = dz + n * E;
        const float* bp = base_p + n * F;
        const float* bq = base_q + n * F;
        float* out = z2 + n * S * F;
        // Each task owns one output channel: its running sums, its events' updates and its outputs.
#ifdef XAISDK_HAVE_OPENMP
#pragma omp parallel for schedule(static) if (S * F >= kParallelMinWork)
#endif
        for (i64 o = 0; o < g.c_out; ++o) {
            std::vector<double> cp(static_cast<size_t>(plane), 0.0), cq(static_cast<size_t>(plane), 0.0);
            for (i64 s = 0; s < S; ++s) {
                for (i64 v = starts[s]; v < starts[s + 1]; ++v) {
                    const i64 e = events[v].unit;
                    const double sp = events[v].sign * z0_n[e];
                    const double sq = events[v].sign * dz_n[e];
                    const i64 c = e / (g.h_in * g.w_in);
                    const i64 i = (e / g.w_in) % g.h_in;
                    const i64 j = e % g.w_in;
                    i64 p0, p1, q0, q1;
                    covering(i, g.kh, g.sh, g.ph, g.h_out, p0, p1);
                    covering(j, g.kw, g.sw, g.pw, g.w_out, q0, q1);
                    const float* k = weight + (o * g.c_in + c) * g.kh * g.kw;
                    for (i64 p = p0; p <= p1; ++p) {
                        const i64 ki = i + g.ph - p * g.sh;
                        for (i64 q = q0; q <= q1; ++q) {
                            const double kv = k[ki * g.kw + j + g.pw - q * g.sw];
                            cp[p * g.w_out + q] += sp * kv;
                            cq[p * g.w_out + q] += sq * kv;
                        }
                    }
                }
                const double a = alphas[s];
                const double b = bias == nullptr ? 0.0 : bias[o];
                float* row = out + s * F + o * plane;
                const float* bpo = bp + o * plane;
                const float* bqo = bq + o * plane;
                for (i64 f = 0; f < plane; ++f) {
                    row[f] = static_cast<float>(b + (bpo[f] + cp[f]) + a * (bqo[f] + cq[f]));
                }
            }
        }
    }
}

XAISDK_SIMD_CLONES
void conv_backward(const i64* lo, const i64* hi, const float* g2, const float* w, const float* weight, const ConvGeometry& g,
                   i64 N, i64 S, float* partial, float* total) {
    const i64 E = g.in_size();
    const i64 F = g.out_size();
    // One image per task: walk the steps once, keeping W[t] = sum_{s<t} w[s] g2[s] in float64 and
    // reading the transposed convolution at each unit when it switches.
#ifdef XAISDK_HAVE_OPENMP
#pragma omp parallel for schedule(dynamic, 1) if (N > 1)
#endif
    for (i64 n = 0; n < N; ++n) {
        const i64* lo_n = lo + n * E;
        const i64* hi_n = hi + n * E;
        float* part = partial + n * E;
        std::vector<i64> starts(static_cast<size_t>(S) + 2, 0);
        for (i64 e = 0; e < E; ++e) {
            part[e] = 0.0f;
            if (lo_n[e] >= hi_n[e]) continue;
            if (lo_n[e] > 0) ++starts[lo_n[e] + 1];
            if (hi_n[e] < S) ++starts[hi_n[e] + 1];
        }
        for (i64 t = 0; t <= S; ++t) starts[t + 1] += starts[t];
        std::vector<Event> events(static_cast<size_t>(starts[S + 1]));
        std::vector<i64> cursor(starts.begin(), starts.end());
        for (i64 e = 0; e < E; ++e) {
            if (lo_n[e] >= hi_n[e]) continue;
            if (lo_n[e] > 0) events[cursor[lo_n[e]]++] = Event{e, -1.0};
            if (hi_n[e] < S) events[cursor[hi_n[e]]++] = Event{e, 1.0};
        }
        std::vector<double> running(static_cast<size_t>(F), 0.0);
        std::vector<double> unit(static_cast<size_t>(E), 0.0);
        for (i64 t = 0; t <= S; ++t) {
            for (i64 v = starts[t]; v < starts[t + 1]; ++v) {
                unit[events[v].unit] += events[v].sign * transposed_at(running.data(), weight, g, events[v].unit);
            }
            if (t == S) break;
            const double wt = w[t];
            const float* gt = g2 + (n * S + t) * F;
            for (i64 f = 0; f < F; ++f) running[f] += wt * gt[f];
        }
        for (i64 e = 0; e < E; ++e) part[e] = static_cast<float>(unit[e]);
        float* tot = total + n * F;
        for (i64 f = 0; f < F; ++f) tot[f] = static_cast<float>(running[f]);
    }
}

XAISDK_SIMD_CLONES
void dense_backward(const float* z2, const float* z3, const float* u, const float* w3, i64 N, i64 S, i64 F, i64 H, float* g2) {
    const i64 block = column_block(N, F);
    const i64 blocks = (F + block - 1) / block;
#ifdef XAISDK_HAVE_OPENMP
#pragma omp parallel for schedule(static) if (N * S * F >= kParallelMinWork)
#endif
    for (i64 t = 0; t < N * blocks; ++t) {
        const i64 n = t / blocks;
        const i64 f0 = (t % blocks) * block;
        const i64 f1 = std::min(f0 + block, F);
        const float* un = u + n * H;
        std::vector<double> g(static_cast<size_t>(f1 - f0), 0.0);
        for (i64 s = 0; s < S; ++s) {
            const float* z3s = z3 + (n * S + s) * H;
            const float* z3p = s == 0 ? nullptr : z3s - H;
            for (i64 k = 0; k < H; ++k) {
                const bool on = z3s[k] > 0.0f;
                const bool was = z3p != nullptr && z3p[k] > 0.0f;
                if (on == was) continue;
                const double scale = (on ? 1.0 : -1.0) * un[k];
                const float* row = w3 + k * F;
                for (i64 f = f0; f < f1; ++f) g[f - f0] += scale * row[f];
            }
            const float* z2s = z2 + (n * S + s) * F;
            float* out = g2 + (n * S + s) * F;
            for (i64 f = f0; f < f1; ++f) out[f] = z2s[f] > 0.0f ? static_cast<float>(g[f - f0]) : 0.0f;
        }
    }
}

namespace {

// w2 as (C1, KH, KW, C2): a first-layer unit's weights into one output pixel are then C2
// contiguous floats, the inner loop of every scatter below.
std::vector<float> channels_last(const float* w2, const ConvGeometry& g) {
    const i64 kk = g.kh * g.kw;
    std::vector<float> out(static_cast<size_t>(g.c_in * kk * g.c_out));
    for (i64 o = 0; o < g.c_out; ++o)
        for (i64 c = 0; c < g.c_in; ++c)
            for (i64 k = 0; k < kk; ++k) out[(c * kk + k) * g.c_out + o] = w2[(o * g.c_in + c) * kk + k];
    return out;
}

}  // namespace

namespace {

// Consecutive window positions along one axis whose windows reach the same first-layer rows (or
// columns) [first, last]: they touch the same units and the same box of the second layer's output,
// so occlusion_forward handles them together and reads each weight once for all of them.
struct Run {
    i64 start, count, first, last;  // first > last: empty windows, nothing touched
};

std::vector<Run> position_runs(const i64* lo, const i64* hi, i64 positions, i64 kernel, i64 stride, i64 pad, i64 out, i64 most) {
    std::vector<Run> result;
    for (i64 r = 0; r < positions; ++r) {
        i64 first = 0, last = -1, unused;
        if (lo[r] < hi[r]) {
            covering(lo[r], kernel, stride, pad, out, first, unused);
            covering(hi[r] - 1, kernel, stride, pad, out, unused, last);
        }
        if (first > last) first = 0, last = -1;
        if (!result.empty() && result.back().first == first && result.back().last == last && result.back().count < most) {
            ++result.back().count;
        } else {
            result.push_back(Run{r, 1, first, last});
        }
    }
    return result;
}

constexpr i64 kRunLength = 4;

}  // namespace

XAISDK_SIMD_CLONES
void occlusion_forward(const float* x, const float* baseline, const i64* row_lo, const i64* row_hi, i64 R, const i64* col_lo,
                       const i64* col_hi, i64 Cc, const float* w1, const ConvGeometry& first, const float* z1x,
                       const float* w2, const ConvGeometry& second, const float* z2x, const float* w3t, i64 H, const float* z3x,
                       i64 N, float* out_rows) {
    const i64 D = first.in_size();
    const i64 E = first.out_size();
    const i64 F = second.out_size();
    const i64 plane = second.h_out * second.w_out;
    const i64 C2 = second.c_out;
    const i64 width = w3t != nullptr ? H : F;  // with w3t: the dense layer's pre-activations z3, else z2
    const std::vector<float> w2t = channels_last(w2, second);
    std::vector<float> z2x_last(static_cast<size_t>(N * F));  // z2x as (N, H2, W2, C2)
    for (i64 n = 0; n < N; ++n)
        for (i64 o = 0; o < C2; ++o)
            for (i64 f = 0; f < plane; ++f) z2x_last[n * F + f * C2 + o] = z2x[n * F + o * plane + f];
    const std::vector<Run> rows = position_runs(row_lo, row_hi, R, first.kh, first.sh, first.ph, first.h_out, kRunLength);
    const std::vector<Run> cols = position_runs(col_lo, col_hi, Cc, first.kw, first.sw, first.pw, first.w_out, kRunLength);
    const i64 row_runs = static_cast<i64>(rows.size()), col_runs = static_cast<i64>(cols.size());
    constexpr i64 kGroup = kRunLength * kRunLength;
#ifdef XAISDK_HAVE_OPENMP
#pragma omp parallel
#endif
    {
        std::vector<float> local(static_cast<size_t>(kGroup * F));  // per position: the touched box, (bh, bw, C2)
#ifdef XAISDK_HAVE_OPENMP
#pragma omp for schedule(dynamic, 2)
#endif
        for (i64 t = 0; t < N * row_runs * col_runs; ++t) {
            const i64 n = t / (row_runs * col_runs);
            const Run& rr = rows[(t / col_runs) % row_runs];
            const Run& cr = cols[t % col_runs];
            const i64 G = rr.count * cr.count;
            const float* xn = x + n * D;
            const float* bn = baseline + n * D;
            const float* z1n = z1x + n * E;
            float* out[kGroup];
            i64 r0[kGroup], r1[kGroup], c0[kGroup], c1[kGroup];
            for (i64 g = 0; g < G; ++g) {
                const i64 r = rr.start + g / cr.count, c = cr.start + g % cr.count;
                r0[g] = row_lo[r], r1[g] = row_hi[r], c0[g] = col_lo[c], c1[g] = col_hi[c];
                out[g] = out_rows + (n * R * Cc + r * Cc + c) * width;
                const float* init = w3t != nullptr ? z3x + n * H : z2x + n * F;
                std::copy(init, init + width, out[g]);
            }
            if (rr.first > rr.last || cr.first > cr.last) continue;  // empty windows change nothing
            i64 p_first, p_last, q_first, q_last, unused;
            covering(rr.first, second.kh, second.sh, second.ph, second.h_out, p_first, unused);
            covering(rr.last, second.kh, second.sh, second.ph, second.h_out, unused, p_last);
            covering(cr.first, second.kw, second.sw, second.pw, second.w_out, q_first, unused);
            covering(cr.last, second.kw, second.sw, second.pw, second.w_out, unused, q_last);
            const i64 bw = q_last - q_first + 1;
            const i64 box = (p_last - p_first + 1) * bw * C2;
            for (i64 g = 0; g < G; ++g)
                for (i64 p = p_first; p <= p_last; ++p) {
                    const float* src = z2x_last.data() + n * F + (p * second.w_out + q_first) * C2;
                    std::copy(src, src + bw * C2, local.data() + g * box + (p - p_first) * bw * C2);
                }
            float delta[kGroup];
            for (i64 i = rr.first; i <= rr.last; ++i) {
                i64 p0, p1;
                covering(i, second.kh, second.sh, second.ph, second.h_out, p0, p1);
                for (i64 j = cr.first; j <= cr.last; ++j) {
                    i64 q0, q1;
                    covering(j, second.kw, second.sw, second.pw, second.w_out, q0, q1);
                    for (i64 ch = 0; ch < first.c_out; ++ch) {
                        const float before = z1n[(ch * first.h_out + i) * first.w_out + j];
                        bool any = false;
                        for (i64 g = 0; g < G; ++g) {
                            const i64 u0 = std::max(r0[g], i * first.sh - first.ph), u1 = std::min(r1[g], i * first.sh - first.ph + first.kh);
                            const i64 v0 = std::max(c0[g], j * first.sw - first.pw), v1 = std::min(c1[g], j * first.sw - first.pw + first.kw);
                            float change = 0.0f;
                            for (i64 ci = 0; ci < first.c_in; ++ci) {
                                const float* k = w1 + (ch * first.c_in + ci) * first.kh * first.kw;
                                for (i64 u = u0; u < u1; ++u)
                                    for (i64 v = v0; v < v1; ++v) {
                                        const i64 d = (ci * first.h_in + u) * first.w_in + v;
                                        change += k[(u - i * first.sh + first.ph) * first.kw + v - j * first.sw + first.pw] * (bn[d] - xn[d]);
                                    }
                            }
                            delta[g] = std::max(before + change, 0.0f) - std::max(before, 0.0f);
                            any = any || delta[g] != 0.0f;
                        }
                        if (!any) continue;
                        for (i64 p = p0; p <= p1; ++p) {
                            const i64 ki = i + second.ph - p * second.sh;
                            for (i64 q = q0; q <= q1; ++q) {
                                const i64 kj = j + second.pw - q * second.sw;
                                const float* col = w2t.data() + ((ch * second.kh + ki) * second.kw + kj) * C2;
                                const i64 at = ((p - p_first) * bw + (q - q_first)) * C2;
                                for (i64 g = 0; g < G; ++g) {
                                    if (delta[g] == 0.0f) continue;
                                    float* dst = local.data() + g * box + at;
                                    const float dg = delta[g];
                                    for (i64 o = 0; o < C2; ++o) dst[o] += dg * col[o];
                                }
                            }
                        }
                    }
                }
            }
            for (i64 p = p_first; p <= p_last; ++p)
                for (i64 q = q_first; q <= q_last; ++q) {
                    const i64 at = ((p - p_first) * bw + (q - q_first)) * C2;
                    if (w3t == nullptr) {
                        for (i64 g = 0; g < G; ++g)
                            for (i64 o = 0; o < C2; ++o) out[g][o * plane + p * second.w_out + q] = local[g * box + at + o];
                        continue;
                    }
                    // z3 moves by W3's columns of the z2 entries whose ReLU output changed
                    const float* was = z2x_last.data() + n * F + (p * second.w_out + q) * C2;
                    for (i64 o = 0; o < C2; ++o) {
                        bool any = false;
                        for (i64 g = 0; g < G; ++g) {
                            delta[g] = std::max(local[g * box + at + o], 0.0f) - std::max(was[o], 0.0f);
                            any = any || delta[g] != 0.0f;
                        }
                        if (!any) continue;
                        const float* row = w3t + (o * plane + p * second.w_out + q) * H;
                        for (i64 g = 0; g < G; ++g) {
                            if (delta[g] == 0.0f) continue;
                            float* dst = out[g];
                            const float dg = delta[g];
                            for (i64 k = 0; k < H; ++k) dst[k] += dg * row[k];
                        }
                    }
                }
        }
    }
}

XAISDK_SIMD_CLONES
void perturbed_forward(const float* base, const float* substrate, const i64* order, const i64* lo, const i64* hi, i64 N,
                       i64 J, const float* w1, const ConvGeometry& first, const float* z1_base, const float* w2,
                       const ConvGeometry& second, const float* z2_base, float* z2) {
    const i64 D = first.in_size();
    const i64 P = first.h_in * first.w_in;
    const i64 E = first.out_size();
    const i64 F = second.out_size();
    const i64 plane = second.h_out * second.w_out;
    const i64 C2 = second.c_out;
    const i64 W2 = second.w_out;
    const std::vector<float> w2t = channels_last(w2, second);
    // One task per (sample, row p of the second layer's output): it keeps the first-layer units
    // that feed row p and its own (W2, C2) slice of z2, so tasks never wait for each other and the
    // innermost loop runs over all C2 channels.
#ifdef XAISDK_HAVE_OPENMP
#pragma omp parallel for schedule(dynamic, 1) if (N * J * F >= kParallelMinWork)
#endif
    for (i64 t = 0; t < N * second.h_out; ++t) {
        const i64 n = t / second.h_out;
        const i64 p = t % second.h_out;
        const float* bn = base + n * D;
        const float* sn = substrate + n * D;
        const i64* ord = order + n * P;
        // first-layer rows feeding output row p
        const i64 i_lo = std::max<i64>(0, p * second.sh - second.ph);
        const i64 i_hi = std::min(first.h_out, p * second.sh - second.ph + second.kh);
        std::vector<float> z1(static_cast<size_t>(E));
        std::vector<float> local(static_cast<size_t>(W2 * C2));  // (W2, C2)
        auto reset = [&]() {
            std::copy(z1_base + n * E, z1_base + (n + 1) * E, z1.begin());
            for (i64 o = 0; o < C2; ++o)
                for (i64 q = 0; q < W2; ++q) local[q * C2 + o] = z2_base[n * F + o * plane + p * W2 + q];
        };
        i64 cur_lo = -1, cur_hi = -1;
        for (i64 j = 0; j < J; ++j) {
            const i64 l = lo[n * J + j], h = hi[n * J + j];
            if (l != cur_lo || h < cur_hi) {
                reset();
                cur_lo = l;
                cur_hi = l;
            }
            for (i64 k = cur_hi; k < h; ++k) {
                const i64 pixel = ord[k];
                const i64 u = pixel / first.w_in, v = pixel % first.w_in;
                i64 i0, i1, j0, j1;
                covering(u, first.kh, first.sh, first.ph, first.h_out, i0, i1);
                covering(v, first.kw, first.sw, first.pw, first.w_out, j0, j1);
                i0 = std::max(i0, i_lo);
                i1 = std::min(i1, i_hi - 1);
                for (i64 i = i0; i <= i1; ++i) {
                    const i64 ki = u + first.ph - i * first.sh;
                    const i64 k2i = i + second.ph - p * second.sh;
                    for (i64 jj = j0; jj <= j1; ++jj) {
                        const i64 kj = v + first.pw - jj * first.sw;
                        i64 q0, q1;
                        covering(jj, second.kw, second.sw, second.pw, W2, q0, q1);
                        for (i64 ch = 0; ch < first.c_out; ++ch) {
                            float change = 0.0f;
                            for (i64 ci = 0; ci < first.c_in; ++ci) {
                                const i64 d = ci * P + pixel;
                                change += w1[((ch * first.c_in + ci) * first.kh + ki) * first.kw + kj] * (sn[d] - bn[d]);
                            }
                            const i64 e = (ch * first.h_out + i) * first.w_out + jj;
                            const float before = z1[e];
                            const float after = before + change;
                            z1[e] = after;
                            const float delta = std::max(after, 0.0f) - std::max(before, 0.0f);
                            if (delta == 0.0f) continue;
                            for (i64 q = q0; q <= q1; ++q) {
                                const i64 k2j = jj + second.pw - q * second.sw;
                                const float* col = w2t.data() + ((ch * second.kh + k2i) * second.kw + k2j) * C2;
                                float* dst = local.data() + q * C2;
                                for (i64 o = 0; o < C2; ++o) dst[o] += delta * col[o];
                            }
                        }
                    }
                }
            }
            cur_hi = h;
            float* out = z2 + (n * J + j) * F + p * W2;
            for (i64 o = 0; o < C2; ++o)
                for (i64 q = 0; q < W2; ++q) out[o * plane + q] = local[q * C2 + o];
        }
    }
}

}  // namespace relu_path

namespace {

namespace py = pybind11;
using i64 = std::int64_t;
using relu_path::ConvGeometry;

ConvGeometry geometry(const py::tuple& shape_in, const py::tuple& shape_out, const py::array& weight, const py::tuple& stride,
                      const py::tuple& padding, const char* fn) {
    if (shape_in.size() != 3 || shape_out.size() != 3 || stride.size() != 2 || padding.size() != 2) {
        throw std::invalid_argument(std::string(fn) + ": in_shape/out_shape are (C, H, W); stride/padding are (h, w)");
    }
    ConvGeometry g{};
    g.c_in = shape_in[0].cast<i64>();
    g.h_in = shape_in[1].cast<i64>();
    g.w_in = shape_in[2].cast<i64>();
    g.c_out = shape_out[0].cast<i64>();
    g.h_out = shape_out[1].cast<i64>();
    g.w_out = shape_out[2].cast<i64>();
    g.sh = stride[0].cast<i64>();
    g.sw = stride[1].cast<i64>();
    g.ph = padding[0].cast<i64>();
    g.pw = padding[1].cast<i64>();
    require_f32(weight, fn, "weight", 4);
    g.kh = weight.shape(2);
    g.kw = weight.shape(3);
    if (weight.shape(0) != g.c_out || weight.shape(1) != g.c_in) {
        throw std::invalid_argument(std::string(fn) + ": weight " + shape_str(weight) + " does not map " + std::to_string(g.c_in) +
                                    " channels to " + std::to_string(g.c_out));
    }
    const bool positive = g.c_in > 0 && g.h_in > 0 && g.w_in > 0 && g.c_out > 0 && g.h_out > 0 && g.w_out > 0 && g.sh > 0 &&
                          g.sw > 0 && g.kh > 0 && g.kw > 0 && g.ph >= 0 && g.pw >= 0;
    if (!positive || (g.h_in + 2 * g.ph - g.kh) / g.sh + 1 != g.h_out || (g.w_in + 2 * g.pw - g.kw) / g.sw + 1 != g.w_out) {
        throw std::invalid_argument(std::string(fn) + ": inconsistent convolution geometry");
    }
    return g;
}

void require_shape(const py::array& a, std::initializer_list<i64> shape, const char* fn, const char* name) {
    i64 d = 0;
    for (i64 expected : shape) {
        if (a.shape(d) != expected) {
            throw std::invalid_argument(std::string(fn) + ": " + name + " has shape " + shape_str(a) + ", which does not match");
        }
        ++d;
    }
}

void require_ranges(const py::array& lo, const py::array& hi, i64 N, i64 E, i64 S, const char* fn) {
    require_i64(lo, fn, "lo", 2);
    require_i64(hi, fn, "hi", 2);
    require_shape(lo, {N, E}, fn, "lo");
    require_shape(hi, {N, E}, fn, "hi");
    const auto* l = static_cast<const i64*>(lo.data());
    const auto* h = static_cast<const i64*>(hi.data());
    for (i64 t = 0; t < N * E; ++t) {
        if (l[t] < 0 || h[t] > S || l[t] > h[t]) throw std::invalid_argument(std::string(fn) + ": lo/hi must satisfy 0 <= lo <= hi <= S");
    }
}

void require_ascending(const py::array& alphas, const char* fn) {
    require_f32(alphas, fn, "alphas", 1);
    const auto* a = static_cast<const float*>(alphas.data());
    for (py::ssize_t s = 1; s < alphas.shape(0); ++s) {
        if (!(a[s - 1] <= a[s])) throw std::invalid_argument(std::string(fn) + ": alphas must be ascending (and not NaN)");
    }
}

py::tuple py_active_ranges(const py::array& z0, const py::array& dz, const py::array& alphas) {
    const char* fn = "relu_active_ranges";
    require_f32(z0, fn, "z0", 2);
    require_f32(dz, fn, "dz", 2);
    require_ascending(alphas, fn);
    const i64 N = z0.shape(0), E = z0.shape(1), S = alphas.shape(0);
    require_shape(dz, {N, E}, fn, "dz");
    py::array_t<i64> lo({N, E}), hi({N, E});
    {
        py::gil_scoped_release release;
        relu_path::active_ranges(static_cast<const float*>(z0.data()), static_cast<const float*>(dz.data()),
                                 static_cast<const float*>(alphas.data()), N, E, S, lo.mutable_data(), hi.mutable_data());
    }
    return py::make_tuple(lo, hi);
}

py::array py_conv_forward(const py::array& z0, const py::array& dz, const py::array& lo, const py::array& hi,
                          const py::array& alphas, const py::array& weight, const py::object& bias, const py::array& base_p,
                          const py::array& base_q, const py::tuple& in_shape, const py::tuple& out_shape, const py::tuple& stride,
                          const py::tuple& padding) {
    const char* fn = "relu_conv_forward";
    const ConvGeometry g = geometry(in_shape, out_shape, weight, stride, padding, fn);
    require_f32(z0, fn, "z0", 2);
    require_f32(dz, fn, "dz", 2);
    require_ascending(alphas, fn);
    const i64 N = z0.shape(0), E = g.in_size(), F = g.out_size(), S = alphas.shape(0);
    require_shape(z0, {N, E}, fn, "z0");
    require_shape(dz, {N, E}, fn, "dz");
    require_ranges(lo, hi, N, E, S, fn);
    require_f32(base_p, fn, "base_p", 2);
    require_f32(base_q, fn, "base_q", 2);
    require_shape(base_p, {N, F}, fn, "base_p");
    require_shape(base_q, {N, F}, fn, "base_q");
    const float* bias_ptr = nullptr;
    py::array bias_array;
    if (!bias.is_none()) {
        bias_array = bias.cast<py::array>();
        require_f32(bias_array, fn, "bias", 1);
        require_shape(bias_array, {g.c_out}, fn, "bias");
        bias_ptr = static_cast<const float*>(bias_array.data());
    }
    py::array_t<float> z2({N, S, F});
    {
        py::gil_scoped_release release;
        relu_path::conv_forward(static_cast<const float*>(z0.data()), static_cast<const float*>(dz.data()),
                                static_cast<const i64*>(lo.data()), static_cast<const i64*>(hi.data()),
                                static_cast<const float*>(alphas.data()), static_cast<const float*>(weight.data()), bias_ptr,
                                static_cast<const float*>(base_p.data()), static_cast<const float*>(base_q.data()), g, N, S,
                                z2.mutable_data());
    }
    return z2;
}

py::tuple py_conv_backward(const py::array& lo, const py::array& hi, const py::array& g2, const py::array& w,
                           const py::array& weight, const py::tuple& in_shape, const py::tuple& out_shape, const py::tuple& stride,
                           const py::tuple& padding) {
    const char* fn = "relu_conv_backward";
    const ConvGeometry g = geometry(in_shape, out_shape, weight, stride, padding, fn);
    require_f32(g2, fn, "g2", 3);
    require_f32(w, fn, "w", 1);
    const i64 N = g2.shape(0), S = g2.shape(1), E = g.in_size(), F = g.out_size();
    require_shape(g2, {N, S, F}, fn, "g2");
    require_shape(w, {S}, fn, "w");
    require_ranges(lo, hi, N, E, S, fn);
    py::array_t<float> partial({N, E}), total({N, F});
    {
        py::gil_scoped_release release;
        relu_path::conv_backward(static_cast<const i64*>(lo.data()), static_cast<const i64*>(hi.data()),
                                 static_cast<const float*>(g2.data()), static_cast<const float*>(w.data()),
                                 static_cast<const float*>(weight.data()), g, N, S, partial.mutable_data(), total.mutable_data());
    }
    return py::make_tuple(partial, total);
}

py::array py_dense_backward(const py::array& z2, const py::array& z3, const py::array& u, const py::array& w3) {
    const char* fn = "relu_dense_backward";
    require_f32(z2, fn, "z2", 3);
    require_f32(z3, fn, "z3", 3);
    require_f32(u, fn, "u", 2);
    require_f32(w3, fn, "w3", 2);
    const i64 N = z2.shape(0), S = z2.shape(1), F = z2.shape(2), H = w3.shape(0);
    require_shape(z3, {N, S, H}, fn, "z3");
    require_shape(u, {N, H}, fn, "u");
    require_shape(w3, {H, F}, fn, "w3");
    py::array_t<float> g2({N, S, F});
    {
        py::gil_scoped_release release;
        relu_path::dense_backward(static_cast<const float*>(z2.data()), static_cast<const float*>(z3.data()),
                                  static_cast<const float*>(u.data()), static_cast<const float*>(w3.data()), N, S, F, H,
                                  g2.mutable_data());
    }
    return g2;
}

void require_window_ranges(const py::array& lo, const py::array& hi, i64 size, const char* fn, const char* name) {
    require_i64(lo, fn, name, 1);
    require_i64(hi, fn, name, 1);
    require_shape(hi, {lo.shape(0)}, fn, name);
    const auto* l = static_cast<const i64*>(lo.data());
    const auto* h = static_cast<const i64*>(hi.data());
    for (py::ssize_t r = 0; r < lo.shape(0); ++r) {
        if (l[r] < 0 || h[r] > size || l[r] > h[r]) {
            throw std::invalid_argument(std::string(fn) + ": " + name + " windows must satisfy 0 <= lo <= hi <= " + std::to_string(size));
        }
    }
}

py::array py_occlusion_forward(const py::array& x, const py::array& baseline, const py::array& row_lo, const py::array& row_hi,
                               const py::array& col_lo, const py::array& col_hi, const py::array& w1, const py::tuple& x_shape,
                               const py::tuple& z1_shape, const py::tuple& stride1, const py::tuple& padding1, const py::array& z1x,
                               const py::array& w2, const py::tuple& z2_shape, const py::tuple& stride2, const py::tuple& padding2,
                               const py::array& z2x, const py::object& w3t, const py::object& z3x) {
    const char* fn = "relu_occlusion_forward";
    const ConvGeometry first = geometry(x_shape, z1_shape, w1, stride1, padding1, fn);
    const ConvGeometry second = geometry(z1_shape, z2_shape, w2, stride2, padding2, fn);
    require_f32(x, fn, "x", 2);
    require_f32(baseline, fn, "baseline", 2);
    require_f32(z1x, fn, "z1x", 2);
    require_f32(z2x, fn, "z2x", 2);
    const i64 N = x.shape(0);
    require_shape(x, {N, first.in_size()}, fn, "x");
    require_shape(baseline, {N, first.in_size()}, fn, "baseline");
    require_shape(z1x, {N, first.out_size()}, fn, "z1x");
    require_shape(z2x, {N, second.out_size()}, fn, "z2x");
    require_window_ranges(row_lo, row_hi, first.h_in, fn, "row");
    require_window_ranges(col_lo, col_hi, first.w_in, fn, "column");
    const i64 R = row_lo.shape(0), Cc = col_lo.shape(0);
    if (w3t.is_none() != z3x.is_none()) throw std::invalid_argument(std::string(fn) + ": pass both w3t and z3x, or neither");
    py::array w3t_array, z3x_array;
    i64 H = 0;
    if (!w3t.is_none()) {
        w3t_array = w3t.cast<py::array>();
        z3x_array = z3x.cast<py::array>();
        require_f32(w3t_array, fn, "w3t", 2);
        require_f32(z3x_array, fn, "z3x", 2);
        H = w3t_array.shape(1);
        require_shape(w3t_array, {second.out_size(), H}, fn, "w3t");
        require_shape(z3x_array, {N, H}, fn, "z3x");
    }
    py::array_t<float> z2({N, R * Cc, w3t.is_none() ? second.out_size() : H});
    {
        py::gil_scoped_release release;
        relu_path::occlusion_forward(static_cast<const float*>(x.data()), static_cast<const float*>(baseline.data()),
                                     static_cast<const i64*>(row_lo.data()), static_cast<const i64*>(row_hi.data()), R,
                                     static_cast<const i64*>(col_lo.data()), static_cast<const i64*>(col_hi.data()), Cc,
                                     static_cast<const float*>(w1.data()), first, static_cast<const float*>(z1x.data()),
                                     static_cast<const float*>(w2.data()), second, static_cast<const float*>(z2x.data()),
                                     w3t.is_none() ? nullptr : static_cast<const float*>(w3t_array.data()), H,
                                     z3x.is_none() ? nullptr : static_cast<const float*>(z3x_array.data()), N, z2.mutable_data());
    }
    return z2;
}

py::array py_perturbed_forward(const py::array& base, const py::array& substrate, const py::array& order, const py::array& lo,
                               const py::array& hi, const py::array& w1, const py::tuple& x_shape, const py::tuple& z1_shape,
                               const py::tuple& stride1, const py::tuple& padding1, const py::array& z1_base, const py::array& w2,
                               const py::tuple& z2_shape, const py::tuple& stride2, const py::tuple& padding2,
                               const py::array& z2_base) {
    const char* fn = "relu_perturbed_forward";
    const ConvGeometry first = geometry(x_shape, z1_shape, w1, stride1, padding1, fn);
    const ConvGeometry second = geometry(z1_shape, z2_shape, w2, stride2, padding2, fn);
    require_f32(base, fn, "base", 2);
    require_f32(substrate, fn, "substrate", 2);
    require_f32(z1_base, fn, "z1_base", 2);
    require_f32(z2_base, fn, "z2_base", 2);
    require_i64(order, fn, "order", 2);
    require_i64(lo, fn, "lo", 2);
    require_i64(hi, fn, "hi", 2);
    const i64 N = base.shape(0), J = lo.shape(1), P = first.h_in * first.w_in;
    require_shape(base, {N, first.in_size()}, fn, "base");
    require_shape(substrate, {N, first.in_size()}, fn, "substrate");
    require_shape(z1_base, {N, first.out_size()}, fn, "z1_base");
    require_shape(z2_base, {N, second.out_size()}, fn, "z2_base");
    require_shape(order, {N, P}, fn, "order");
    require_shape(lo, {N, J}, fn, "lo");
    require_shape(hi, {N, J}, fn, "hi");
    const auto* o = static_cast<const i64*>(order.data());
    for (i64 t = 0; t < N * P; ++t) {
        if (o[t] < 0 || o[t] >= P) throw std::invalid_argument(std::string(fn) + ": order holds a pixel index outside [0, H*W)");
    }
    const auto* l = static_cast<const i64*>(lo.data());
    const auto* h = static_cast<const i64*>(hi.data());
    for (i64 t = 0; t < N * J; ++t) {
        if (l[t] < 0 || h[t] > P || l[t] > h[t]) throw std::invalid_argument(std::string(fn) + ": lo/hi must satisfy 0 <= lo <= hi <= H*W");
    }
    py::array_t<float> z2({N, J, second.out_size()});
    {
        py::gil_scoped_release release;
        relu_path::perturbed_forward(static_cast<const float*>(base.data()), static_cast<const float*>(substrate.data()), o, l, h, N,
                                     J, static_cast<const float*>(w1.data()), first, static_cast<const float*>(z1_base.data()),
                                     static_cast<const float*>(w2.data()), second, static_cast<const float*>(z2_base.data()),
                                     z2.mutable_data());
    }
    return z2;
}

}  // namespace

void register_relu_path(py::module_& m) {
    m.def("relu_active_ranges", &py_active_ranges, py::arg("z0"), py::arg("dz"), py::arg("alphas"),
          "(lo, hi) int64 (N, E): the ascending steps s with z0 + alphas[s] * dz > 0 are lo <= s < hi.");
    m.def("relu_conv_forward", &py_conv_forward, py::arg("z0"), py::arg("dz"), py::arg("lo"), py::arg("hi"), py::arg("alphas"),
          py::arg("weight"), py::arg("bias"), py::arg("base_p"), py::arg("base_q"), py::arg("in_shape"), py::arg("out_shape"),
          py::arg("stride"), py::arg("padding"),
          "Second-layer pre-activations (N, S, F) along the path from the step-0 bases and the switching units.");
    m.def("relu_conv_backward", &py_conv_backward, py::arg("lo"), py::arg("hi"), py::arg("g2"), py::arg("w"), py::arg("weight"),
          py::arg("in_shape"), py::arg("out_shape"), py::arg("stride"), py::arg("padding"),
          "(partial (N, E), total (N, F)): total = sum_s w[s] g2[:, s]; partial[e] = (C2^T (W[hi] - W[lo]))[e] with the "
          "W[S] term left out (units active at the last step add (C2^T total)[e]).");
    m.def("relu_dense_backward", &py_dense_backward, py::arg("z2"), py::arg("z3"), py::arg("u"), py::arg("w3"),
          "Gradient (N, S, F) at z2 of u . relu(w3 relu(z2) + b3) per step, updating W3^T (u * [z3 > 0]) only where a "
          "hidden unit switches.");
    m.def("relu_occlusion_forward", &py_occlusion_forward, py::arg("x"), py::arg("baseline"), py::arg("row_lo"), py::arg("row_hi"),
          py::arg("col_lo"), py::arg("col_hi"), py::arg("w1"), py::arg("x_shape"), py::arg("z1_shape"), py::arg("stride1"),
          py::arg("padding1"), py::arg("z1x"), py::arg("w2"), py::arg("z2_shape"), py::arg("stride2"), py::arg("padding2"),
          py::arg("z2x"), py::arg("w3t") = py::none(), py::arg("z3x") = py::none(),
          "Second-layer outputs (N, R * Cc, F) with each occlusion window of x replaced by the baseline; with w3t (F, H) = the "
          "next dense layer's transposed weight and z3x (N, H) its output at x, that layer's outputs (N, R * Cc, H) instead.");
    m.def("relu_perturbed_forward", &py_perturbed_forward, py::arg("base"), py::arg("substrate"), py::arg("order"), py::arg("lo"),
          py::arg("hi"), py::arg("w1"), py::arg("x_shape"), py::arg("z1_shape"), py::arg("stride1"), py::arg("padding1"),
          py::arg("z1_base"), py::arg("w2"), py::arg("z2_shape"), py::arg("stride2"), py::arg("padding2"), py::arg("z2_base"),
          "Second-layer outputs (N, J, F) of the perturbation rows (base with order[lo:hi] from substrate).");
}

}  // namespace xaisdk
