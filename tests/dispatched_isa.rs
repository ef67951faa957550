//! Which instruction sets run: on x86-64 and aarch64 the vector builds of the microkernel and of the
//! element-wise kernels are the ones dispatched, not the scalar fallback, and `incept bench` names them.
//! (Under qemu on x86, `.ci/aarch64`, this is what shows that the NEON paths ran.)

use incept::kernels;
use incept::microkernel::Isa;
use std::process::Command;

/// The microkernel build this architecture's CPU should get: its fastest vector set.
fn expected_microkernel() -> Isa {
    if cfg!(target_arch = "aarch64") {
        return Isa::Neon;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Isa::Avx2;
        }
    }
    Isa::Scalar
}

#[test]
fn the_best_build_is_this_architectures_vector_set() {
    let expected = expected_microkernel();
    assert_eq!(Isa::best(), expected);
    let vector = Isa::ALL
        .into_iter()
        .filter(|&isa| isa != Isa::Scalar && isa.available())
        .collect::<Vec<_>>();
    if cfg!(target_arch = "aarch64") {
        assert_eq!(vector, [Isa::Neon], "aarch64 has NEON and no x86 set");
        assert_eq!(kernels::instruction_set(), "NEON");
    }
    if cfg!(target_arch = "x86_64") {
        assert!(!vector.contains(&Isa::Neon), "NEON on x86: {vector:?}");
    }
    if expected != Isa::Scalar {
        assert_ne!(kernels::instruction_set(), "baseline", "pulp found no vector set");
    }
}

#[test]
fn incept_bench_names_the_dispatched_instruction_sets() {
    let out = Command::new(env!("CARGO_BIN_EXE_incept"))
        .args(["--threads", "1", "bench", "--model", "googlenet-d2l", "--batch", "1"])
        .args(["--mode", "infer", "--warmup", "0", "--steps", "1", "--json"])
        .output()
        .expect("run incept bench");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON record");
    assert_eq!(record["isa"], format!("{:?}", expected_microkernel()));
    assert_eq!(record["simd"], kernels::instruction_set());
}

#[test]
fn incept_max_isa_caps_both_microkernels() {
    use incept::microkernel::Bf16Isa;
    // (cap, the float32 build and the bf16 build it leaves on this CPU)
    let capped = |f32_cap: Isa, bf16_cap: Bf16Isa| {
        let f32_build = Isa::ALL
            .into_iter()
            .rev()
            .find(|i| *i <= f32_cap && i.available())
            .unwrap();
        let bf16_build = Bf16Isa::ALL
            .into_iter()
            .rev()
            .find(|i| *i <= bf16_cap && i.available())
            .unwrap();
        (format!("{f32_build:?}"), bf16_build.name())
    };
    let best = expected_microkernel();
    for (cap, expected) in [
        ("scalar", capped(Isa::Scalar, Bf16Isa::Scalar)),
        ("avx512", capped(Isa::Avx512.min(best), Bf16Isa::Avx512)),
        ("avx512_bf16", capped(Isa::Avx512.min(best), Bf16Isa::Avx512Bf16)),
    ] {
        if cfg!(not(target_arch = "x86_64")) && cap != "scalar" {
            continue;
        }
        let out = Command::new(env!("CARGO_BIN_EXE_incept"))
            .env("INCEPT_MAX_ISA", cap)
            .args([
                "--threads",
                "1",
                "bench",
                "--model",
                "googlenet-d2l",
                "--batch",
                "1",
                "--precision",
                "bf16",
            ])
            .args(["--mode", "infer", "--warmup", "0", "--steps", "1", "--json"])
            .output()
            .expect("run incept bench");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let record: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON record");
        assert_eq!(
            (
                record["isa"].as_str().unwrap().to_string(),
                record["bf16_isa"].as_str().unwrap()
            ),
            (expected.0.clone(), expected.1),
            "INCEPT_MAX_ISA={cap}"
        );
        assert_eq!(record["precision"], "bf16");
    }
}
