//! Tolerances of meshcast's numerical comparisons (benchmark verification against the
//! reference format) and the elementwise check that applies them.

use crate::model::MixedPrecision;

/// Tolerances of the verification against the reference format (f32): relative, and
/// absolute as a fraction of the largest reference output (`ATOL` x max |output|), since
/// formats that add the same terms in another order differ by rounding of the terms'
/// size, also where a sum cancels to near zero.
pub const RTOL: f64 = 1e-5;
pub const ATOL: f64 = 1e-5;

/// Verification tolerances against the f32 reference, `(rtol, atol)` with `atol` a
/// fraction of the largest reference output: f32 (and f64) cases must agree to f32 rounding, element
/// by element; low-precision cases within their mantissa's reach (bf16 8 bits, f16 11
/// bits) of the largest reference output.
pub fn tolerances(p: MixedPrecision) -> (f64, f64) {
    match p {
        MixedPrecision::Off | MixedPrecision::F64 => (RTOL, ATOL),
        MixedPrecision::Bf16 => (5e-2, 1e-6),
        MixedPrecision::F16 => (1e-2, 1e-6),
    }
}

/// Verification tolerances of f32 cases whose matmuls ran on TF32 tensor cores
/// (`--tf32`: inputs rounded to 10 mantissa bits, about f16's): f16's, normwise.
pub const TF32_TOLERANCES: (f64, f64) = (1e-2, 1e-6);

/// Elementwise `|a - r| <= atol + rtol |r|`: `(all within, max |a - r|)`; a NaN fails.
pub fn allclose(a: &[f32], reference: &[f32], rtol: f64, atol: f64) -> (bool, f64) {
    let mut ok = a.len() == reference.len();
    let mut max = 0.0f64;
    for (&x, &r) in a.iter().zip(reference) {
        let d = (x as f64 - r as f64).abs();
        // NaN differences fail too: `d > tol` alone would let them through.
        if d.is_nan() || d > atol + rtol * (r as f64).abs() {
            ok = false;
        }
        if d > max || d.is_nan() {
            max = if d.is_nan() { f64::INFINITY } else { d };
        }
    }
    (ok, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allclose_uses_both_tolerances() {
        assert!(allclose(&[1.0, 100.0], &[1.0000005, 100.0009], 1e-5, 1e-6).0);
        assert!(!allclose(&[1.0], &[1.01], 1e-5, 1e-6).0);
        assert!(!allclose(&[f32::NAN], &[1.0], 1e-5, 1e-6).0);
        assert_eq!(allclose(&[f32::NAN], &[1.0], 1e-5, 1e-6).1, f64::INFINITY);
    }
}
