//! Requantization (`incept::int8::requantize`) against a float64 reference of the same formula: equal
//! wherever float32's two roundings (the sum converted, the product) cannot move the value across a
//! rounding boundary, and never more than one step away elsewhere.

use incept::int8::requantize;

/// `(acc + bias) · multiplier` in float64, rounded to nearest even, plus the zero point, clamped.
fn reference(acc: i32, bias: i32, multiplier: f32, zero_point: u8, floor: u8) -> (u8, f64) {
    let v = f64::from(acc.wrapping_add(bias)) * f64::from(multiplier);
    let q = (v.round_ties_even() + f64::from(zero_point)).clamp(f64::from(floor), 255.0);
    (q as u8, v)
}

#[test]
fn requantization_matches_float64_of_the_same_formula() {
    let mut rng = fastrand::Rng::with_seed(30);
    let (mut exact, mut near_boundary) = (0, 0);
    for i in 0..1_000_000 {
        // Sums of a few to many thousand products, multipliers that bring them to the byte range.
        let acc = rng.i32(-(1 << 26)..1 << 26) >> rng.u32(0..20);
        let bias = rng.i32(-(1 << 16)..1 << 16);
        let multiplier = (rng.f32() + 0.5) * 2f32.powi(-rng.i32(2..20));
        let zero_point = if i % 2 == 0 { 0 } else { rng.u8(..) };
        let floor = if i % 3 == 0 { zero_point } else { 0 };
        let found = requantize(acc, bias, multiplier, zero_point, floor);
        let (expected, v) = reference(acc, bias, multiplier, zero_point, floor);
        // float32 rounds the sum (above 2^24) and the product, each by at most half a unit in the last
        // place: the value moves by at most |v| · 2^-23.
        let slack = v.abs() * 2f64.powi(-23);
        let to_boundary = (v - v.floor() - 0.5).abs();
        // Values that clamp with room to spare clamp the same either way.
        let shifted = v + f64::from(zero_point);
        let clamped = shifted - slack > 256.0 || shifted + slack < f64::from(floor) - 1.0;
        if to_boundary > slack || clamped {
            assert_eq!(found, expected, "acc {acc} bias {bias} multiplier {multiplier:e}: {v}");
            exact += 1;
        } else {
            assert!(
                found.abs_diff(expected) <= 1,
                "acc {acc} bias {bias} multiplier {multiplier:e}: {found} against {expected} ({v})"
            );
            near_boundary += 1;
        }
    }
    println!("{exact} equal to float64, {near_boundary} within float32's rounding of a boundary");
    assert!(exact > 950_000, "the sharp case is the common one");
}

#[test]
fn requantization_rounds_half_to_even_and_clamps() {
    // Exact in float32: ties go to the even integer, as MLAS's conversion (round to nearest even) does.
    assert_eq!(requantize(5, 0, 0.5, 0, 0), 2);
    assert_eq!(requantize(7, 0, 0.5, 0, 0), 4);
    assert_eq!(requantize(-3, 0, 0.5, 10, 0), 8);
    // Clamped to the byte range, and to the floor of a fused ReLU.
    assert_eq!(requantize(1000, 0, 1.0, 0, 0), 255);
    assert_eq!(requantize(-1000, 0, 1.0, 128, 0), 0);
    assert_eq!(requantize(-5, 0, 1.0, 128, 128), 128);
    assert_eq!(requantize(-5, 0, 1.0, 128, 0), 123);
}
