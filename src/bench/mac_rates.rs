//! `vlm-bench mac-rates`: the sustained multiply-accumulate rate of one core for each
//! AVX-512 instruction a reduced-precision matmul could be built on, against f32 FMA: what a
//! bf16 or f16 CPU path can gain on this machine before any code is written for it.
//!
//! Each instruction runs back to back on 12 independent accumulators (more than its latency
//! times its issue width on current cores), so the loop measures throughput alone.

use std::time::Instant;

use anyhow::Result;

/// One 512-bit instruction of each kind: (name, multiply-accumulates it does, CPU feature).
const KINDS: [(&str, usize, &str); 3] = [
    // 16 f32 lanes
    ("f32_fma", 16, "avx512f"),
    // 16 f32 lanes, each the dot product of a pair of bf16
    ("bf16_dot", 32, "avx512bf16"),
    // 32 f16 lanes, f16 accumulation
    ("f16_fma", 32, "avx512fp16"),
];

/// Loop trips per timing: 12 instructions each.
const TRIPS: usize = 20_000_000;

pub fn mac_rates(rounds: usize) -> Result<serde_json::Value> {
    anyhow::ensure!(rounds > 0, "--rounds must be positive");
    let mut results = serde_json::Map::new();
    let mut f32_rate = None;
    for (name, macs, feature) in KINDS {
        let Some(run) = runner(name) else {
            results.insert(
                name.into(),
                serde_json::json!({"available": false, "needs": feature}),
            );
            continue;
        };
        let best = (0..rounds)
            .map(|_| {
                let t = Instant::now();
                run(TRIPS);
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        let instructions = (TRIPS * 12) as f64;
        let gmacs = instructions * macs as f64 / best / 1e9;
        let f32_gmacs = *f32_rate.get_or_insert(gmacs);
        results.insert(
            name.into(),
            serde_json::json!({
                "available": true,
                "ginstr_per_s": instructions / best / 1e9,
                "gmacs_per_s": gmacs,
                "vs_f32_fma": gmacs / f32_gmacs,
            }),
        );
    }
    Ok(serde_json::json!({
        "impl": "vlm_perception",
        "task": "mac-rates",
        "threads": 1,
        "rounds": rounds,
        "rates": results,
    }))
}

/// The timing loop for `name`, where this CPU has its instruction.
fn runner(name: &str) -> Option<fn(usize)> {
    #[cfg(target_arch = "x86_64")]
    {
        let has = |f: &str| match f {
            "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
            "avx512bf16" => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bf16")
            }
            "avx512fp16" => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512fp16")
            }
            _ => false,
        };
        // SAFETY (each closure): the CPU has the instruction the loop runs (checked first).
        match name {
            "f32_fma" if has("avx512f") => Some(|n| unsafe { x86::f32_fma(n) }),
            "bf16_dot" if has("avx512bf16") => Some(|n| unsafe { x86::bf16_dot(n) }),
            "f16_fma" if has("avx512fp16") => Some(|n| unsafe { x86::f16_fma(n) }),
            _ => None,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = name;
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    /// `trips` x 12 independent `$op zmm_acc, zmm0, zmm1` on zeroed sources (no subnormals,
    /// no exceptions).
    macro_rules! throughput_loop {
        ($name:ident, $op:literal) => {
            /// # Safety
            /// The CPU must have the instruction.
            #[target_feature(enable = "avx512f")]
            pub unsafe fn $name(trips: usize) {
                // SAFETY: register-only arithmetic; the caller checked the instruction.
                unsafe {
                    std::arch::asm!(
                        "vpxord zmm0, zmm0, zmm0",
                        "vpxord zmm1, zmm1, zmm1",
                        "2:",
                        throughput_loop!(@accumulate $op, 2 3 4 5 6 7 8 9 10 11 12 13),
                        "dec rcx",
                        "jnz 2b",
                        inout("rcx") trips.max(1) => _,
                        clobber_abi("C"),
                        options(nomem, nostack),
                    );
                }
            }
        };
        // one instruction per accumulator register zmm2..zmm13
        (@accumulate $op:literal, $($acc:literal)+) => {
            concat!($($op, " zmm", $acc, ", zmm0, zmm1\n"),+)
        };
    }

    throughput_loop!(f32_fma, "vfmadd231ps");
    throughput_loop!(bf16_dot, "vdpbf16ps");
    throughput_loop!(f16_fma, "vfmadd231ph");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_instruction_is_reported_available_or_not() {
        let out = mac_rates(1).unwrap();
        let rates = out["rates"].as_object().unwrap();
        assert_eq!(rates.len(), KINDS.len());
        for (name, macs, feature) in KINDS {
            let rate = &rates[name];
            if rate["available"].as_bool().unwrap() {
                let gmacs = rate["gmacs_per_s"].as_f64().unwrap();
                let ginstr = rate["ginstr_per_s"].as_f64().unwrap();
                assert!(gmacs > 0.0 && (gmacs / ginstr - macs as f64).abs() < 1e-9);
            } else {
                assert_eq!(rate["needs"], feature);
            }
        }
        if rates["f32_fma"]["available"].as_bool().unwrap() {
            assert_eq!(rates["f32_fma"]["vs_f32_fma"], 1.0);
        }
        assert!(mac_rates(0).is_err());
    }
}
