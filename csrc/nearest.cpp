#include "nearest.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define XAISDK_NEAREST_X86 1
#include <immintrin.h>
#endif

namespace xaisdk {
namespace nearest {

using i64 = std::int64_t;
using i32 = std::int32_t;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// One micro-tile call: MR packed query rows times NR packed reference rows over kc features.
struct Tile {
    const float* a;  // (kc, MR): a[k * MR + r] = query r, feature k
    const float* b;  // (kc, NR): b[k * NR + l] = reference l, feature k
    float* c;        // (MR, NR) partial products carried from one feature block to the next
    i64 kc;
    bool first;      // start from zero instead of c
    bool last;       // last feature block: turn products into distances and update the minimum
    const float* qn;  // (MR,) squared norms of the query rows
    const float* rn;  // (NR,) squared norms of the reference rows; +inf on padding lanes
    i32 ref0;         // reference index of lane 0
    float* best;      // (MR, NR) lane-wise running minimum distance
    i32* best_idx;    // (MR, NR) reference index of that minimum (-1: none yet)
};

using TileFn = void (*)(const Tile&);

struct Kernel {
    int mr;
    int nr;
    i64 kc;  // feature block: a (kc, NR) slice of a reference panel stays in L1 while the query slivers stream by
    TileFn fn;
};

// Portable micro-kernel; the compiler vectorizes the lane loops for whatever the baseline ISA is. Used
// as 4 x 8: its 8 accumulator vectors stay in the 16 SSE2 registers (4 x 16 spills and runs 3x slower).
template <int MR, int NR>
void tile_portable(const Tile& t) {
    float acc[MR][NR];
    if (t.first) {
        for (int r = 0; r < MR; ++r)
            for (int l = 0; l < NR; ++l) acc[r][l] = 0.0f;
    } else {
        std::memcpy(acc, t.c, sizeof(acc));
    }
    const float* a = t.a;
    const float* b = t.b;
    for (i64 k = 0; k < t.kc; ++k, a += MR, b += NR) {
        for (int r = 0; r < MR; ++r) {
            const float ar = a[r];
            for (int l = 0; l < NR; ++l) acc[r][l] += ar * b[l];
        }
    }
    if (!t.last) {
        std::memcpy(t.c, acc, sizeof(acc));
        return;
    }
    for (int r = 0; r < MR; ++r) {
        float* best = t.best + r * NR;
        i32* idx = t.best_idx + r * NR;
        for (int l = 0; l < NR; ++l) {
            float d = (t.qn[r] + t.rn[l]) - 2.0f * acc[r][l];
            d = d > 0.0f ? d : 0.0f;
            if (d < best[l]) {
                best[l] = d;
                idx[l] = t.ref0 + l;
            }
        }
    }
}

#ifdef XAISDK_NEAREST_X86

// 6 x 16 tile: 12 ymm accumulators, two reference vectors and one broadcast query value (15 of the
// 16 ymm registers).
__attribute__((target("avx2,fma"))) void tile_avx2(const Tile& t) {
    constexpr int MR = 6, NR = 16;
    __m256 c[MR][2];
    if (t.first) {
#pragma GCC unroll 6
        for (int r = 0; r < MR; ++r) c[r][0] = c[r][1] = _mm256_setzero_ps();
    } else {
#pragma GCC unroll 6
        for (int r = 0; r < MR; ++r) {
            c[r][0] = _mm256_loadu_ps(t.c + r * NR);
            c[r][1] = _mm256_loadu_ps(t.c + r * NR + 8);
        }
    }
    const float* a = t.a;
    const float* b = t.b;
#pragma GCC unroll 4
    for (i64 k = 0; k < t.kc; ++k) {
        const __m256 b0 = _mm256_loadu_ps(b);
        const __m256 b1 = _mm256_loadu_ps(b + 8);
#pragma GCC unroll 6
        for (int r = 0; r < MR; ++r) {
            const __m256 ar = _mm256_broadcast_ss(a + r);
            c[r][0] = _mm256_fmadd_ps(ar, b0, c[r][0]);
            c[r][1] = _mm256_fmadd_ps(ar, b1, c[r][1]);
        }
        a += MR;
        b += NR;
    }
    if (!t.last) {
#pragma GCC unroll 6
        for (int r = 0; r < MR; ++r) {
            _mm256_storeu_ps(t.c + r * NR, c[r][0]);
            _mm256_storeu_ps(t.c + r * NR + 8, c[r][1]);
        }
        return;
    }
    const __m256 rn0 = _mm256_loadu_ps(t.rn);
    const __m256 rn1 = _mm256_loadu_ps(t.rn + 8);
    const __m256 minus2 = _mm256_set1_ps(-2.0f);
    const __m256 zero = _mm256_setzero_ps();
    const __m256i base = _mm256_set1_epi32(t.ref0);
    const __m256 idx0 = _mm256_castsi256_ps(_mm256_add_epi32(base, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
    const __m256 idx1 = _mm256_castsi256_ps(_mm256_add_epi32(base, _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15)));
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
        const __m256 qn = _mm256_set1_ps(t.qn[r]);
        const __m256 d0 = _mm256_max_ps(_mm256_fmadd_ps(minus2, c[r][0], _mm256_add_ps(qn, rn0)), zero);
        const __m256 d1 = _mm256_max_ps(_mm256_fmadd_ps(minus2, c[r][1], _mm256_add_ps(qn, rn1)), zero);
        float* best = t.best + r * NR;
        float* idx = reinterpret_cast<float*>(t.best_idx + r * NR);
        const __m256 v0 = _mm256_loadu_ps(best), v1 = _mm256_loadu_ps(best + 8);
        const __m256 m0 = _mm256_cmp_ps(d0, v0, _CMP_LT_OQ), m1 = _mm256_cmp_ps(d1, v1, _CMP_LT_OQ);
        _mm256_storeu_ps(best, _mm256_blendv_ps(v0, d0, m0));
        _mm256_storeu_ps(best + 8, _mm256_blendv_ps(v1, d1, m1));
        _mm256_storeu_ps(idx, _mm256_blendv_ps(_mm256_loadu_ps(idx), idx0, m0));
        _mm256_storeu_ps(idx + 8, _mm256_blendv_ps(_mm256_loadu_ps(idx + 8), idx1, m1));
    }
}

// GCC 12's _mm512_max_ps starts from _mm512_undefined_ps(), which -Wmaybe-uninitialized flags.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
// 12 x 32 tile: 24 zmm accumulators, two reference vectors, one broadcast (27 of 32 zmm registers).
__attribute__((target("avx512f"))) void tile_avx512(const Tile& t) {
    constexpr int MR = 12, NR = 32;
    __m512 c[MR][2];
    if (t.first) {
#pragma GCC unroll 12
        for (int r = 0; r < MR; ++r) c[r][0] = c[r][1] = _mm512_setzero_ps();
    } else {
#pragma GCC unroll 12
        for (int r = 0; r < MR; ++r) {
            c[r][0] = _mm512_loadu_ps(t.c + r * NR);
            c[r][1] = _mm512_loadu_ps(t.c + r * NR + 16);
        }
    }
    const float* a = t.a;
    const float* b = t.b;
#pragma GCC unroll 2
    for (i64 k = 0; k < t.kc; ++k) {
        const __m512 b0 = _mm512_loadu_ps(b);
        const __m512 b1 = _mm512_loadu_ps(b + 16);
#pragma GCC unroll 12
        for (int r = 0; r < MR; ++r) {
            const __m512 ar = _mm512_set1_ps(a[r]);
            c[r][0] = _mm512_fmadd_ps(ar, b0, c[r][0]);
            c[r][1] = _mm512_fmadd_ps(ar, b1, c[r][1]);
        }
        a += MR;
        b += NR;
    }
    if (!t.last) {
#pragma GCC unroll 12
        for (int r = 0; r < MR; ++r) {
            _mm512_storeu_ps(t.c + r * NR, c[r][0]);
            _mm512_storeu_ps(t.c + r * NR + 16, c[r][1]);
        }
        return;
    }
    const __m512 rn0 = _mm512_loadu_ps(t.rn);
    const __m512 rn1 = _mm512_loadu_ps(t.rn + 16);
    const __m512 minus2 = _mm512_set1_ps(-2.0f);
    const __m512 zero = _mm512_setzero_ps();
    const __m512i base = _mm512_set1_epi32(t.ref0);
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i idx0 = _mm512_add_epi32(base, lanes);
    const __m512i idx1 = _mm512_add_epi32(idx0, _mm512_set1_epi32(16));
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
        const __m512 qn = _mm512_set1_ps(t.qn[r]);
        const __m512 d0 = _mm512_max_ps(_mm512_fmadd_ps(minus2, c[r][0], _mm512_add_ps(qn, rn0)), zero);
        const __m512 d1 = _mm512_max_ps(_mm512_fmadd_ps(minus2, c[r][1], _mm512_add_ps(qn, rn1)), zero);
        float* best = t.best + r * NR;
        i32* idx = t.best_idx + r * NR;
        const __m512 v0 = _mm512_loadu_ps(best), v1 = _mm512_loadu_ps(best + 16);
        const __mmask16 m0 = _mm512_cmp_ps_mask(d0, v0, _CMP_LT_OQ);
        const __mmask16 m1 = _mm512_cmp_ps_mask(d1, v1, _CMP_LT_OQ);
        _mm512_storeu_ps(best, _mm512_mask_mov_ps(v0, m0, d0));
        _mm512_storeu_ps(best + 16, _mm512_mask_mov_ps(v1, m1, d1));
        _mm512_storeu_si512(idx, _mm512_mask_mov_epi32(_mm512_loadu_si512(idx), m0, idx0));
        _mm512_storeu_si512(idx + 16, _mm512_mask_mov_epi32(_mm512_loadu_si512(idx + 16), m1, idx1));
    }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#endif  // XAISDK_NEAREST_X86

Kernel kernel_for(Isa isa) {
    switch (isa) {
#ifdef XAISDK_NEAREST_X86
        case Isa::kAvx512:
            return {12, 32, 256, &tile_avx512};
        case Isa::kAvx2:
            return {6, 16, 256, &tile_avx2};
#endif
        default:
            return {4, 8, 256, &tile_portable<4, 8>};
    }
}

// Float storage whose data() starts on a 64-byte boundary (one cache line).
class AlignedFloats {
public:
    explicit AlignedFloats(i64 n) : store_(static_cast<std::size_t>(n) + 16) {
        const auto p = reinterpret_cast<std::uintptr_t>(store_.data());
        data_ = store_.data() + ((64 - p % 64) % 64) / sizeof(float);
    }
    float* data() { return data_; }

private:
    std::vector<float> store_;
    float* data_;
};

i64 ceil_div(i64 a, i64 b) { return (a + b - 1) / b; }

int thread_id() {
#ifdef XAISDK_HAVE_OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

// Packs references r0 .. r0 + count - 1 (count <= NR) into a (D, NR) panel, zero-padded, and their
// norms into (NR,), +inf-padded so padding lanes never win.
void pack_ref_panel(const float* refs, const float* rn, i64 D, i64 r0, i64 count, int NR, float* panel, float* panel_rn) {
    for (int l = 0; l < NR; ++l) panel_rn[l] = l < count ? rn[r0 + l] : kInf;
    if (count < NR) std::fill(panel, panel + D * NR, 0.0f);
    for (i64 l = 0; l < count; ++l) {
        const float* row = refs + (r0 + l) * D;
        for (i64 k = 0; k < D; ++k) panel[k * NR + l] = row[k];
    }
}

// Packs queries q0 .. q0 + count - 1 into slivers of MR rows (zero-padded) laid out feature block
// by feature block: block p holds, sliver after sliver, (kc_p, MR) slices.
void pack_queries(const float* queries, i64 D, i64 q0, i64 count, int MR, i64 KC, i64 slivers, float* out) {
    for (i64 p0 = 0; p0 < D; p0 += KC) {
        const i64 kc = std::min(KC, D - p0);
        float* block = out + p0 * slivers * MR;
        for (i64 s = 0; s < slivers; ++s) {
            float* sliver = block + s * kc * MR;
            for (int r = 0; r < MR; ++r) {
                const i64 q = s * MR + r;
                if (q < count) {
                    const float* row = queries + (q0 + q) * D + p0;
                    for (i64 k = 0; k < kc; ++k) sliver[k * MR + r] = row[k];
                } else {
                    for (i64 k = 0; k < kc; ++k) sliver[k * MR + r] = 0.0f;
                }
            }
        }
    }
}

}  // namespace

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::kAvx512:
            return "avx512";
        case Isa::kAvx2:
            return "avx2";
        default:
            return "scalar";
    }
}

bool isa_supported(Isa isa) {
    switch (isa) {
        case Isa::kScalar:
            return true;
#ifdef XAISDK_NEAREST_X86
        case Isa::kAvx2:
            __builtin_cpu_init();
            return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        case Isa::kAvx512:
            __builtin_cpu_init();
            return __builtin_cpu_supports("avx512f");
#endif
        default:
            return false;
    }
}

Isa best_isa() {
    for (Isa isa : {Isa::kAvx512, Isa::kAvx2}) {
        if (isa_supported(isa)) return isa;
    }
    return Isa::kScalar;
}

std::vector<std::string> supported_isas() {
    std::vector<std::string> names;
    for (Isa isa : {Isa::kAvx512, Isa::kAvx2, Isa::kScalar}) {
        if (isa_supported(isa)) names.emplace_back(isa_name(isa));
    }
    return names;
}

bool squared_norms(const float* rows, i64 N, i64 D, float* out) {
    bool finite = true;
#ifdef XAISDK_HAVE_OPENMP
#pragma omp parallel for schedule(static) reduction(&& : finite) if (N * D >= kParallelMinWork)
#endif
    for (i64 i = 0; i < N; ++i) {
        const float* row = rows + i * D;
        double s = 0.0;
        for (i64 k = 0; k < D; ++k) s += static_cast<double>(row[k]) * row[k];
        out[i] = static_cast<float>(s);
        finite = finite && std::isfinite(s);
    }
    return finite;
}

void nearest_l2(const float* queries, const float* refs, const float* qn, const float* rn, i64 Q, i64 R, i64 D,
                i64 block_q, i64 block_r, Isa isa, i64* index, float* distance) {
    if (Q <= 0) return;
    const Kernel kern = kernel_for(isa);
    const int MR = kern.mr, NR = kern.nr;
    const i64 KC = kern.kc;
    // Blocks are whole tiles; a block larger than the data shrinks to it (same answer, less padding).
    const i64 mc = std::min(ceil_div(block_q, MR), ceil_div(Q, MR)) * MR;
    const i64 nc = std::min(ceil_div(block_r, NR), ceil_div(R, NR)) * NR;
    const i64 q_blocks = ceil_div(Q, mc);
    const i64 r_blocks = ceil_div(R, nc);
    const int threads = std::max(1, max_threads());
    const bool parallel = static_cast<double>(Q) * static_cast<double>(R) * static_cast<double>(D) >= double(1 << 22);
    (void)parallel;  // unused without OpenMP

    // Shared: the packed panels of one reference block. Per thread: its packed query block, the
    // partial products carried across feature blocks, and the lane-wise minima of the block.
    AlignedFloats ref_pack(nc * D);
    AlignedFloats ref_pack_rn(nc);
    std::vector<AlignedFloats> query_pack, carry, lane_best;
    std::vector<std::vector<float>> query_norms;
    std::vector<std::vector<i32>> lane_idx;
    for (int t = 0; t < threads; ++t) {
        query_pack.emplace_back(mc * D);
        carry.emplace_back(mc * NR);
        lane_best.emplace_back(mc * NR);
        query_norms.emplace_back(mc, 0.0f);
        lane_idx.emplace_back(mc * NR);
    }
    // Each thread's best (distance, index) per query; merged at the end, ties to the lower index.
    std::vector<float> thread_best(static_cast<std::size_t>(threads * Q), kInf);
    std::vector<i64> thread_idx(static_cast<std::size_t>(threads * Q), -1);

#ifdef XAISDK_HAVE_OPENMP
#pragma omp parallel if (parallel)
#endif
    {
        const int tid = thread_id();
        float* a_pack = query_pack[tid].data();
        float* c_buf = carry[tid].data();
        float* l_best = lane_best[tid].data();
        float* a_norm = query_norms[tid].data();
        i32* l_idx = lane_idx[tid].data();
        float* t_best = thread_best.data() + tid * Q;
        i64* t_idx = thread_idx.data() + tid * Q;
        for (i64 rb = 0; rb < r_blocks; ++rb) {
            const i64 r_start = rb * nc;
            const i64 r_count = std::min(nc, R - r_start);
            const i64 panels = ceil_div(r_count, NR);
#ifdef XAISDK_HAVE_OPENMP
#pragma omp for schedule(static)
#endif
            for (i64 j = 0; j < panels; ++j) {
                const i64 r0 = r_start + j * NR;
                pack_ref_panel(refs, rn, D, r0, std::min<i64>(NR, R - r0), NR, ref_pack.data() + j * NR * D,
                               ref_pack_rn.data() + j * NR);
            }
            // With few query blocks, also split the panels of this reference block between threads.
            const i64 splits = std::min(panels, std::max<i64>(1, ceil_div(4 * static_cast<i64>(threads), q_blocks)));
            const i64 items = q_blocks * splits;
#ifdef XAISDK_HAVE_OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
            for (i64 item = 0; item < items; ++item) {
                const i64 qb = item / splits;
                const i64 split = item % splits;
                const i64 j0 = split * panels / splits;
                const i64 j1 = (split + 1) * panels / splits;
                const i64 q0 = qb * mc;
                const i64 q_count = std::min(mc, Q - q0);
                const i64 slivers = ceil_div(q_count, MR);
                pack_queries(queries, D, q0, q_count, MR, KC, slivers, a_pack);
                for (i64 q = 0; q < slivers * MR; ++q) a_norm[q] = q < q_count ? qn[q0 + q] : 0.0f;
                std::fill(l_best, l_best + slivers * MR * NR, kInf);
                std::fill(l_idx, l_idx + slivers * MR * NR, -1);
                for (i64 j = j0; j < j1; ++j) {
                    const float* panel = ref_pack.data() + j * NR * D;
                    Tile tile{};
                    tile.rn = ref_pack_rn.data() + j * NR;
                    tile.ref0 = static_cast<i32>(r_start + j * NR);
                    for (i64 p0 = 0; p0 < D; p0 += KC) {
                        tile.kc = std::min(KC, D - p0);
                        tile.first = p0 == 0;
                        tile.last = p0 + KC >= D;
                        tile.b = panel + p0 * NR;
                        const float* a_block = a_pack + p0 * slivers * MR;
                        for (i64 s = 0; s < slivers; ++s) {
                            tile.a = a_block + s * tile.kc * MR;
                            tile.c = c_buf + s * MR * NR;
                            tile.qn = a_norm + s * MR;
                            tile.best = l_best + s * MR * NR;
                            tile.best_idx = l_idx + s * MR * NR;
                            kern.fn(tile);
                        }
                    }
                }
                for (i64 q = 0; q < q_count; ++q) {
                    const float* lb = l_best + q * NR;
                    const i32* li = l_idx + q * NR;
                    float v = t_best[q0 + q];
                    i64 at = t_idx[q0 + q];
                    for (int l = 0; l < NR; ++l) {
                        if (li[l] >= 0 && (lb[l] < v || (lb[l] == v && (at < 0 || li[l] < at)))) {
                            v = lb[l];
                            at = li[l];
                        }
                    }
                    t_best[q0 + q] = v;
                    t_idx[q0 + q] = at;
                }
            }
        }
    }
    for (i64 q = 0; q < Q; ++q) {
        float v = kInf;
        i64 at = -1;
        for (int t = 0; t < threads; ++t) {
            const float tv = thread_best[t * Q + q];
            const i64 ti = thread_idx[t * Q + q];
            if (ti >= 0 && (at < 0 || tv < v || (tv == v && ti < at))) {
                v = tv;
                at = ti;
            }
        }
        index[q] = at;
        distance[q] = v;
    }
}

}  // namespace nearest

namespace {

using i64 = std::int64_t;

nearest::Isa parse_isa(const std::string& name, const char* fn) {
    if (name == "auto") return nearest::best_isa();
    for (nearest::Isa isa : {nearest::Isa::kAvx512, nearest::Isa::kAvx2, nearest::Isa::kScalar}) {
        if (name == nearest::isa_name(isa)) {
            if (!nearest::isa_supported(isa)) {
                throw std::invalid_argument(std::string(fn) + ": isa '" + name + "' is not supported by this CPU or build");
            }
            return isa;
        }
    }
    throw std::invalid_argument(std::string(fn) + ": isa must be 'auto', 'avx512', 'avx2' or 'scalar', got '" + name + "'");
}

py::tuple py_nearest_l2(const py::array& queries, const py::array& refs, i64 block_q, i64 block_r, const std::string& isa_name) {
    const char* fn = "nearest_l2";
    const std::string f(fn);
    require_f32(queries, fn, "queries", 2);
    require_f32(refs, fn, "refs", 2);
    const i64 Q = queries.shape(0), D = queries.shape(1), R = refs.shape(0);
    if (refs.shape(1) != D) {
        throw std::invalid_argument(f + ": queries " + shape_str(queries) + " and refs " + shape_str(refs) +
                                    " differ in the number of features");
    }
    if (R == 0) throw std::invalid_argument(f + ": refs is empty (no reference to be nearest to)");
    if (D == 0) throw std::invalid_argument(f + ": rows have no features (D = 0)");
    if (R > std::numeric_limits<std::int32_t>::max() - 64) {
        throw std::invalid_argument(f + ": more than 2**31 - 65 references");
    }
    if (block_q < 1 || block_r < 1) {
        throw std::invalid_argument(f + ": block_q and block_r must be >= 1, got " + std::to_string(block_q) + " and " +
                                    std::to_string(block_r));
    }
    const nearest::Isa isa = parse_isa(isa_name, fn);

    py::array_t<i64> index(Q);
    py::array_t<float> distance(Q);
    std::vector<float> qn(static_cast<std::size_t>(Q)), rn(static_cast<std::size_t>(R));
    const auto* pq = static_cast<const float*>(queries.data());
    const auto* pr = static_cast<const float*>(refs.data());
    i64* pi = index.mutable_data();
    float* pd = distance.mutable_data();
    bool q_finite = true, r_finite = true;
    float limit = 0.0f;
    {
        py::gil_scoped_release release;
        q_finite = nearest::squared_norms(pq, Q, D, qn.data());
        r_finite = nearest::squared_norms(pr, R, D, rn.data());
        if (q_finite && r_finite) {
            const float q_max = Q > 0 ? *std::max_element(qn.begin(), qn.end()) : 0.0f;
            const float r_max = *std::max_element(rn.begin(), rn.end());
            limit = q_max + r_max;
            // |d| <= 2 (||q||^2 + ||r||^2) bounds every intermediate of the float32 distance.
            if (std::isfinite(limit) && limit <= FLT_MAX / 4) {
                nearest::nearest_l2(pq, pr, qn.data(), rn.data(), Q, R, D, block_q, block_r, isa, pi, pd);
            }
        }
    }
    if (!q_finite) throw std::invalid_argument(f + ": queries contain NaN or infinity");
    if (!r_finite) throw std::invalid_argument(f + ": refs contain NaN or infinity");
    if (!(std::isfinite(limit) && limit <= FLT_MAX / 4)) {
        throw std::invalid_argument(f + ": values too large: squared norms would overflow float32 distances");
    }
    return py::make_tuple(index, distance);
}

}  // namespace

void register_nearest(py::module_& m) {
    using namespace pybind11::literals;
    m.def("nearest_l2", &py_nearest_l2, "queries"_a, "refs"_a, "block_q"_a = 120, "block_r"_a = 4096, "isa"_a = "auto",
          R"doc(Nearest reference row of each query by squared L2 distance: ``(index, squared_distance)``.

queries: float32 (Q, D); refs: float32 (R, D), R >= 1; both C-contiguous and finite. Returns int64
(Q,) indices into refs and float32 (Q,) squared distances ``max(0, ||q||^2 + ||r||^2 - 2 q.r)``
(norms summed in float64, products in float32). Ties go to the lowest reference index.

The products run in an SGEMM-style micro-kernel fused with a running per-query minimum, so the
(Q, R) distance matrix never exists: memory is O(block_r * D + threads * block_q * D + threads * Q).
block_q queries x block_r references make one unit of work (rounded up to whole micro-tiles; the
answer does not depend on them). ``isa`` picks the micro-kernel: "auto" (fastest this CPU runs),
"avx512", "avx2" or "scalar" (see ``nearest_l2_isas()``). OpenMP over query blocks, GIL released.
Raises ValueError on wrong dtype/shape/layout, a feature-count mismatch, empty refs, D = 0, NaN or
infinity, values whose squared norms overflow float32, block sizes < 1 or an unsupported isa.)doc");
    m.def("nearest_l2_isas", [] {
              py::list names;
              for (const std::string& name : nearest::supported_isas()) names.append(name);
              return names;
          },
          "Micro-kernels of nearest_l2 this CPU and build support, fastest first (\"auto\" picks the first).");
}

}  // namespace xaisdk
