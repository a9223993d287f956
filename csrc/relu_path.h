// Kernels for Integrated Gradients along a straight path through "conv -> ReLU -> conv" (the
// opening layers of most CNNs), without running those layers once per path point.
//
// On the path x(a) = b + a (x - b) the first layer's output is affine in a: z(a) = z0 + a dz, with
// z0 = L1(b) and dz = L1(x) - L1(b). Each ReLU unit is therefore active on one interval of the
// (ascending) path points, [lo, hi). The second layer's pre-activation at step s is
//     z2[s] = bias + C2(z0 * m_s) + a_s C2(dz * m_s),
// and m_s changes only where a unit switches on or off: a few events along the whole path, each
// touching one column of C2. Going back, the gradient reaching unit e summed over its active steps
// is (C2^T (W[hi] - W[lo]))[e], where W[t] = sum_{s<t} w_s g2[s] are prefix sums of the weighted
// gradients at z2: one row of the transposed convolution per switching unit.
//
// The first layer's output is flattened to e = (c * H1 + i) * W1 + j; the second layer is a 2-D
// convolution (groups 1, dilation 1, zero padding) with weight (C2, C1, KH, KW).
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>

namespace xaisdk {
namespace relu_path {

struct ConvGeometry {
    std::int64_t c_in, h_in, w_in;     // first layer's output = second layer's input
    std::int64_t c_out, h_out, w_out;  // second layer's output
    std::int64_t kh, kw, sh, sw, ph, pw;
    std::int64_t in_size() const { return c_in * h_in * w_in; }
    std::int64_t out_size() const { return c_out * h_out * w_out; }
};

// lo[n, e], hi[n, e]: the steps s (alphas ascending) with z0[n, e] + alphas[s] * dz[n, e] > 0 are
// exactly lo <= s < hi (lo = hi = 0 when there are none). z0, dz: (N, E); alphas: (S,).
void active_ranges(const float* z0, const float* dz, const float* alphas, std::int64_t N, std::int64_t E, std::int64_t S,
                   std::int64_t* lo, std::int64_t* hi);

// z2 (N, S, F) = bias[o] + base_p[n] + alphas[s] * base_q[n] + (the changes of C2(z0 * m_s) and
// C2(dz * m_s) since step 0), where base_p = C2(z0 * m_0) and base_q = C2(dz * m_0) without bias.
void conv_forward(const float* z0, const float* dz, const std::int64_t* lo, const std::int64_t* hi, const float* alphas,
                  const float* weight, const float* bias, const float* base_p, const float* base_q, const ConvGeometry& g,
                  std::int64_t N, std::int64_t S, float* z2);

// total (N, F) = W[S], where W[t] = sum_{s < t} w[s] * g2[n, s] (float64 inside), and
// partial (N, E) = (C2^T (W[hi] - W[lo]))[e] for each active unit, leaving out the W[S] term of units
// active up to the last step (hi = S): the caller adds the dense (C2^T total)[e] for those.
void conv_backward(const std::int64_t* lo, const std::int64_t* hi, const float* g2, const float* w, const float* weight,
                   const ConvGeometry& g, std::int64_t N, std::int64_t S, float* partial, float* total);

// The gradient at z2 (N, S, F) of the score u[n] . relu(W3 relu(z2) + b3) + const, at every step,
// given z3 = W3 relu(z2) + b3 (N, S, H): g2 = [z2 > 0] * W3^T ([z3 > 0] * u), kept as a running sum
// that changes only where a hidden unit switches between consecutive steps. w3: (H, F).
void dense_backward(const float* z2, const float* z3, const float* u, const float* w3, std::int64_t N, std::int64_t S,
                    std::int64_t F, std::int64_t H, float* g2);

// Occlusion through the same opening layers. Window position (r, c) replaces rows
// [row_lo[r], row_hi[r]) x columns [col_lo[c], col_hi[c]) of x (all channels) by the baseline's
// pixels; only the first-layer units whose window overlaps it change, and z2 changes by the second
// layer's columns of those units. first: geometry of the first layer (x -> z1, weight w1);
// second: z1 -> z2 (weight w2). z1x: first layer's output at x (N, E); z2x: second layer's output
// at x (N, F), bias included. Writes z2 (N, R * Cc, F) for every window position; or, given the
// next dense layer z3 = W3 relu(z2) + b3 as w3t = W3^T (F, H) and z3x = its output at x (N, H),
// writes z3 (N, R * Cc, H), moved by W3's columns of the z2 entries whose ReLU output changed.
void occlusion_forward(const float* x, const float* baseline, const std::int64_t* row_lo, const std::int64_t* row_hi,
                       std::int64_t R, const std::int64_t* col_lo, const std::int64_t* col_hi, std::int64_t Cc, const float* w1,
                       const ConvGeometry& first, const float* z1x, const float* w2, const ConvGeometry& second,
                       const float* z2x, const float* w3t, std::int64_t H, const float* z3x, std::int64_t N, float* out_rows);

// Perturbation rows through the same opening layers: row (n, j) is base[n] with the pixels
// order[n, lo[n, j]:hi[n, j]] (all channels) taken from substrate[n], as in perturb.h. A row that
// extends the previous row of its sample (same lo, larger or equal hi) is reached from that row by
// the newly replaced pixels; any other row from the base. A replaced pixel moves the first-layer
// units over it, and z2 by the second layer's columns of the units whose ReLU output changed.
// z1_base (N, E) and z2_base (N, F) are the two layers' outputs at base (bias included).
// Writes z2 (N, J, F). Work is split over samples and slices of the second layer's channels.
void perturbed_forward(const float* base, const float* substrate, const std::int64_t* order, const std::int64_t* lo,
                       const std::int64_t* hi, std::int64_t N, std::int64_t J, const float* w1, const ConvGeometry& first,
                       const float* z1_base, const float* w2, const ConvGeometry& second, const float* z2_base, float* z2);

}  // namespace relu_path

// Adds relu_active_ranges, relu_conv_forward, relu_conv_backward, relu_dense_backward,
// relu_occlusion_forward and relu_perturbed_forward to `m`.
void register_relu_path(pybind11::module_& m);

}  // namespace xaisdk
