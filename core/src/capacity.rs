//! Free-capacity math of lvmd and the capacity score of the scheduler extender.

/// Spare space lvmd keeps free in a thick device class when the config sets no `spare-gb`.
pub const DEFAULT_SPARE_GB: u64 = 10;

/// Highest score [`score_for_capacity`] gives.
pub const MAX_SCORE: i64 = 10;

/// Lowest score [`score_for_capacity`] gives a node with any free space.
pub const MIN_SCORE: i64 = 1;

/// Converts a `spare-gb` setting to bytes (GiB, as TopoLVM counts it); `None` on overflow.
pub fn spare_gb_to_bytes(spare_gb: u64) -> Option<u64> {
    spare_gb
        .checked_mul(1 << 30)
        .filter(|bytes| bytes >> 30 == spare_gb)
}

/// Bytes a thick device class can still give out: the volume group's free bytes less the
/// spare it must keep, and 0 when the spare is not even there.
pub fn thick_free_bytes(vg_free: u64, spare_bytes: u64) -> u64 {
    vg_free.saturating_sub(spare_bytes)
}

/// Bytes a thin device class can still promise: `floor(overprovision_ratio × pool_size)`
/// less the virtual sizes of the thin volumes already in the pool, and 0 when those already
/// exceed it (TopoLVM subtracts in unsigned arithmetic and wraps around to ~16 EiB there).
///
/// The product is computed exactly, without rounding `pool_size` to an `f64`: a ratio of 1.0
/// gives exactly `pool_size` for any size, and large pools do not lose bytes. A ratio that is
/// not a finite number ≥ 0 gives 0; lvmd's config refuses ratios below 1.0 anyway. A product
/// beyond `u64::MAX` saturates.
pub fn thin_free_bytes(pool_size: u64, overprovision_ratio: f64, sum_virtual_sizes: u64) -> u64 {
    scale_floor(pool_size, overprovision_ratio).saturating_sub(sum_virtual_sizes)
}

/// `floor(value × ratio)`, exact.
///
/// A finite f64 is exactly `mantissa × 2^exponent` with a 53-bit mantissa, so the product is
/// `value × mantissa` (at most 117 bits, fits u128) shifted by `exponent`.
fn scale_floor(value: u64, ratio: f64) -> u64 {
    if !ratio.is_finite() || ratio <= 0.0 {
        return 0;
    }
    let (mantissa, exponent) = decompose(ratio);
    let product = u128::from(value) * u128::from(mantissa);
    let scaled = if exponent >= 0 {
        product
            .checked_shl(exponent.unsigned_abs())
            .filter(|shifted| shifted >> exponent.unsigned_abs() == product)
            .unwrap_or(u128::MAX)
    } else {
        product.checked_shr(exponent.unsigned_abs()).unwrap_or(0)
    };
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

/// Splits a finite, positive f64 into `(mantissa, exponent)` with `x = mantissa × 2^exponent`.
fn decompose(x: f64) -> (u64, i32) {
    const MANTISSA_BITS: u32 = 52;
    const EXPONENT_BIAS: i32 = 1023;
    let bits = x.to_bits();
    let biased_exponent = ((bits >> MANTISSA_BITS) & 0x7ff) as i32;
    let fraction = bits & ((1 << MANTISSA_BITS) - 1);
    if biased_exponent == 0 {
        // Subnormal: no implicit leading 1.
        (fraction, 1 - EXPONENT_BIAS - MANTISSA_BITS as i32)
    } else {
        (
            fraction | (1 << MANTISSA_BITS),
            biased_exponent - EXPONENT_BIAS - MANTISSA_BITS as i32,
        )
    }
}

/// Scheduler extender score of a node for one device class, from the class's free bytes.
///
/// Scores go from 0 to 10 on a log scale of whole GiB: with `gb = capacity >> 30`,
/// - `gb == 0`: 1 when there is any free byte (the scale cannot tell sub-GiB amounts apart,
///   but some space beats none), else 0;
/// - otherwise `trunc(log2(gb / divisor))` clamped to 1..=10, so below 2 × divisor GiB a node
///   scores 1, and from 1024 × divisor GiB up it scores 10.
///
/// `divisor` (the extender's `default-divisor` or per-class `divisors`, > 0) shifts the scale
/// so classes of very different sizes score comparably.
///
/// The logarithm's integer part is read from the f64's binary exponent, so it is exact at
/// powers of two instead of depending on how a libm rounds. A divisor that makes the quotient
/// infinite or NaN (0, negative or NaN; the config forbids them) scores 1, which is what
/// TopoLVM's Go code yields on amd64.
pub fn score_for_capacity(capacity_bytes: u64, divisor: f64) -> i64 {
    let gb = capacity_bytes >> 30;
    if gb == 0 {
        return i64::from(capacity_bytes > 0);
    }
    // gb < 2^34, so the conversion is exact.
    let quotient = gb as f64 / divisor;
    if !quotient.is_finite() || quotient < 1.0 {
        // log2 of a quotient below 1 is negative (or undefined); the clamp lifts it to 1.
        return MIN_SCORE;
    }
    let (mantissa, exponent) = decompose(quotient);
    // For a normal x ≥ 1, floor(log2(x)) = exponent + index of the mantissa's top bit.
    let floor_log2 = i64::from(exponent) + i64::from(63 - mantissa.leading_zeros());
    floor_log2.clamp(MIN_SCORE, MAX_SCORE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GIB: u64 = 1 << 30;
    const TIB: u64 = 1 << 40;

    #[test]
    fn spare_gb_conversion() {
        assert_eq!(spare_gb_to_bytes(0), Some(0));
        assert_eq!(spare_gb_to_bytes(DEFAULT_SPARE_GB), Some(10 * GIB));
        assert_eq!(spare_gb_to_bytes(1 << 33), Some(1 << 63));
        assert_eq!(spare_gb_to_bytes(1 << 34), None);
        assert_eq!(spare_gb_to_bytes(u64::MAX), None);
    }

    #[test]
    fn thick_free_subtracts_spare_and_saturates() {
        assert_eq!(thick_free_bytes(100 * GIB, 10 * GIB), 90 * GIB);
        assert_eq!(thick_free_bytes(10 * GIB, 10 * GIB), 0);
        assert_eq!(thick_free_bytes(5 * GIB, 10 * GIB), 0);
        assert_eq!(thick_free_bytes(0, 0), 0);
        assert_eq!(thick_free_bytes(u64::MAX, 0), u64::MAX);
        assert_eq!(thick_free_bytes(0, u64::MAX), 0);
    }

    #[test]
    fn thin_free_table() {
        let cases: &[(u64, f64, u64, u64)] = &[
            (100 * GIB, 1.0, 0, 100 * GIB),
            (100 * GIB, 1.0, 40 * GIB, 60 * GIB),
            (100 * GIB, 1.0, 100 * GIB, 0),
            (100 * GIB, 1.0, 150 * GIB, 0),
            (100 * GIB, 10.0, 150 * GIB, 850 * GIB),
            (100 * GIB, 1.5, 0, 150 * GIB),
            (100 * GIB, 2.5, 200 * GIB, 50 * GIB),
            (3, 1.5, 0, 4),   // 4.5 floors to 4
            (1, 1.1, 0, 1),   // 1.1 floors to 1
            (10, 1.1, 0, 11), // 1.1 is slightly above 11/10 in binary: 11.000000000000000888
            (7, 0.1, 0, 0),   // 0.7 floors to 0
            (0, 5.0, 0, 0),
            (0, 5.0, 1, 0),
            (u64::MAX, 1.0, 0, u64::MAX),
            (u64::MAX, 1.0, 1, u64::MAX - 1),
            (u64::MAX - 1, 1.0, 0, u64::MAX - 1),
            ((1 << 53) + 1, 1.0, 0, (1 << 53) + 1), // not representable as f64
            (u64::MAX, 2.0, 0, u64::MAX),           // saturates
            (u64::MAX / 2, 2.0, 0, u64::MAX - 1),
            (u64::MAX, 1e300, 5, u64::MAX - 5),
            (100, 0.0, 0, 0),
            (100, -1.0, 0, 0),
            (100, f64::NAN, 0, 0),
            (100, f64::INFINITY, 0, 0),
            (100, f64::MIN_POSITIVE, 0, 0),
            (u64::MAX, 5e-324, 0, 0), // smallest subnormal
        ];
        for &(pool, ratio, virtual_sum, expected) in cases {
            assert_eq!(
                thin_free_bytes(pool, ratio, virtual_sum),
                expected,
                "pool {pool} ratio {ratio} virtual {virtual_sum}"
            );
        }
    }

    #[test]
    fn decompose_is_exact() {
        for x in [
            1.0,
            1.5,
            0.1,
            10.0,
            1e300,
            5e-324,
            f64::MIN_POSITIVE,
            f64::MAX,
        ] {
            let (mantissa, exponent) = decompose(x);
            // Two steps, so neither power of two under- or overflows on its own.
            let half = exponent / 2;
            let rebuilt = mantissa as f64 * 2f64.powi(half) * 2f64.powi(exponent - half);
            assert_eq!(rebuilt, x, "{x}");
        }
    }

    #[test]
    fn score_table() {
        let cases: &[(u64, f64, i64)] = &[
            // Boundaries around zero and the first GiB.
            (0, 1.0, 0),
            (1, 1.0, 1),
            (GIB - 1, 1.0, 1),
            (GIB, 1.0, 1), // log2(1) = 0, clamped up to 1
            (2 * GIB - 1, 1.0, 1),
            (2 * GIB, 1.0, 1),
            (3 * GIB, 1.0, 1),
            (4 * GIB - 1, 1.0, 1),
            (4 * GIB, 1.0, 2),
            (7 * GIB, 1.0, 2),
            (8 * GIB, 1.0, 3),
            (128 * GIB, 1.0, 7),
            (511 * GIB, 1.0, 8),
            (512 * GIB, 1.0, 9),
            (1023 * GIB, 1.0, 9),
            (TIB, 1.0, 10),
            (2 * TIB, 1.0, 10),
            (u64::MAX, 1.0, 10),
            // Divisor 2: the scale moves one step down.
            (0, 2.0, 0),
            (1, 2.0, 1),
            (GIB, 2.0, 1),
            (4 * GIB, 2.0, 1),
            (8 * GIB, 2.0, 2),
            (128 * GIB, 2.0, 6),
            (TIB, 2.0, 9),
            (2 * TIB, 2.0, 10),
            // Divisor 0.5: one step up.
            (GIB, 0.5, 1),
            (2 * GIB, 0.5, 2),
            (3 * GIB, 0.5, 2),
            (4 * GIB, 0.5, 3),
            (128 * GIB, 0.5, 8),
            (512 * GIB, 0.5, 10),
            (1023 * GIB, 0.5, 10),
            // Divisor 10.
            (GIB, 10.0, 1),
            (19 * GIB, 10.0, 1),
            (20 * GIB, 10.0, 1),
            (39 * GIB, 10.0, 1),
            (40 * GIB, 10.0, 2),
            (TIB, 10.0, 6),
            (10 * TIB, 10.0, 10),
            (u64::MAX, 10.0, 10),
            // Divisor 4 (TopoLVM's own test uses 128 GiB with divisors 1, 2, 0.5).
            (128 * GIB, 4.0, 5),
            // Non-power-of-two divisor landing exactly on a power of two.
            (3 * GIB, 0.375, 3),
            // Invalid divisors: TopoLVM on amd64 gives 1 for any positive capacity.
            (TIB, 0.0, 1),
            (TIB, -1.0, 1),
            (TIB, f64::NAN, 1),
            (TIB, f64::INFINITY, 1),
            (0, 0.0, 0),
            (1, 0.0, 1),
            // Tiny but valid divisor.
            (GIB, 1e-300, 10),
        ];
        for &(capacity, divisor, expected) in cases {
            assert_eq!(
                score_for_capacity(capacity, divisor),
                expected,
                "capacity {capacity} ({} GiB) divisor {divisor}",
                capacity >> 30
            );
        }
    }

    proptest! {
        #[test]
        fn ratio_one_is_identity(pool in any::<u64>(), used in any::<u64>()) {
            prop_assert_eq!(thin_free_bytes(pool, 1.0, used), pool.saturating_sub(used));
        }

        #[test]
        fn integer_ratios_are_exact(pool in 0u64..(1 << 56), ratio in 1u64..=100) {
            let expected = pool.saturating_mul(ratio);
            prop_assert_eq!(thin_free_bytes(pool, ratio as f64, 0), expected);
        }

        #[test]
        fn thin_free_matches_float_math_for_small_pools(
            pool in 0u64..(1 << 40),
            ratio in 1.0f64..20.0,
        ) {
            // Below 2^53 the f64 product is within one unit of the exact one.
            let float = (ratio * pool as f64).floor() as u64;
            let exact = thin_free_bytes(pool, ratio, 0);
            prop_assert!(exact.abs_diff(float) <= 1, "exact {} float {}", exact, float);
        }

        #[test]
        fn score_matches_float_log2_away_from_powers_of_two(
            capacity in any::<u64>(),
            divisor in prop_oneof![Just(1.0f64), Just(2.0), Just(0.5), 0.1f64..100.0],
        ) {
            let gb = capacity >> 30;
            let score = score_for_capacity(capacity, divisor);
            prop_assert!((0..=10).contains(&score));
            if gb > 0 {
                let log = (gb as f64 / divisor).log2();
                // Only compare where libm rounding cannot move the integer part.
                if (log - log.round()).abs() > 1e-9 || log.fract() == 0.0 {
                    let reference = (log.trunc() as i64).clamp(1, 10);
                    prop_assert_eq!(score, reference);
                }
            } else {
                prop_assert_eq!(score, i64::from(capacity > 0));
            }
        }

        #[test]
        fn score_never_decreases_with_capacity(a in any::<u64>(), b in any::<u64>(), divisor in 0.1f64..100.0) {
            let (low, high) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(score_for_capacity(low, divisor) <= score_for_capacity(high, divisor));
        }
    }
}
