//! Device and dtype, chosen at load time from strings (`cpu`, `cuda:1`, `bf16`).

use candle_core::{DType, Device};

use crate::error::{Error, Result};
use crate::models::KernelPath;

/// Parses `cpu`, `cuda` or `cuda:N` into a candle device.
pub fn parse_device(spec: &str) -> Result<Device> {
    match spec.trim() {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(ordinal)) => cuda(ordinal),
            _ => Err(Error::Device(spec.to_string())),
        },
    }
}

fn cuda(ordinal: usize) -> Result<Device> {
    if !candle_core::utils::cuda_is_available() {
        return Err(Error::Unsupported {
            model: "device".into(),
            reason: format!(
                "`cuda:{ordinal}` requested but this build has no CUDA support (rebuild with \
                 `--features cuda`)"
            ),
        });
    }
    Ok(Device::new_cuda(ordinal)?)
}

/// Parses `f32`, `f16` or `bf16`.
pub fn parse_dtype(spec: &str) -> Result<DType> {
    match spec.trim() {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        _ => Err(Error::DType(spec.to_string())),
    }
}

/// Where and in which precision a model runs.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: DType,
    /// Which code the layers run: [`KernelPath::Native`] (the default),
    /// [`KernelPath::NativeBf16`] (`bf16` on the CPU: [`Self::parse`]) or, for the tests of the
    /// code a GPU runs, [`KernelPath::Generic`] on any device.
    pub kernels: KernelPath,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            kernels: KernelPath::Native,
        }
    }
}

impl LoadOptions {
    /// From the strings of the CLI and the node. `bf16` on the CPU is f32 tensors with the
    /// linear layers' weights in bf16 ([`KernelPath::NativeBf16`]; `dtype` stays f32), where
    /// the CPU has AVX512-BF16 (`avx512_bf16` in /proc/cpuinfo), refused elsewhere.
    pub fn parse(device: &str, dtype: &str) -> Result<Self> {
        let mut options = Self {
            device: parse_device(device)?,
            dtype: parse_dtype(dtype)?,
            kernels: KernelPath::Native,
        };
        if options.device.is_cpu() && options.dtype == DType::BF16 {
            options.cpu_bf16(crate::models::kernels::bf16_gemm::supported())?;
        }
        Ok(options)
    }

    /// `bf16` on the CPU: f32 tensors, bf16 weights in the linear layers, where `supported`
    /// (the CPU has AVX512-BF16).
    fn cpu_bf16(&mut self, supported: bool) -> Result<()> {
        if !supported {
            // candle's CPU backend would widen every bf16 matmul to f32 and back: slower than
            // f32, at bf16's precision.
            return Err(Error::Unsupported {
                model: "device".into(),
                reason: "bf16 on cpu needs the AVX512-BF16 instructions (`avx512_bf16` in \
                         /proc/cpuinfo: Intel Cooper Lake / Sapphire Rapids or later, AMD Zen 4 \
                         or later), which this CPU lacks; use f32 or f16 on this cpu, bf16 on cuda"
                    .into(),
            });
        }
        self.dtype = DType::F32;
        self.kernels = KernelPath::NativeBf16;
        Ok(())
    }

    /// Whether the linear layers' weights are bf16 on the CPU (`--dtype bf16` on a CPU).
    pub fn cpu_bf16_weights(&self) -> bool {
        self.kernels == KernelPath::NativeBf16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_dtypes() {
        assert!(matches!(parse_device("cpu"), Ok(Device::Cpu)));
        assert!(matches!(parse_device("gpu"), Err(Error::Device(_))));
        assert!(matches!(parse_device("cuda:x"), Err(Error::Device(_))));
        assert_eq!(parse_dtype("bf16").unwrap(), DType::BF16);
        assert!(matches!(parse_dtype("f64"), Err(Error::DType(_))));
    }

    #[test]
    fn bf16_on_cpu_is_f32_tensors_with_bf16_weights_or_a_named_refusal() {
        let mut options = LoadOptions::default();
        let err = options.cpu_bf16(false).unwrap_err().to_string();
        assert!(
            err.contains("avx512_bf16") && err.contains("AVX512-BF16"),
            "{err}"
        );
        assert_eq!(options.kernels, KernelPath::Native);
        options.cpu_bf16(true).unwrap();
        assert_eq!(
            (options.dtype, options.kernels),
            (DType::F32, KernelPath::NativeBf16)
        );
        assert!(options.cpu_bf16_weights());
        match LoadOptions::parse("cpu", "bf16") {
            Ok(o) => {
                assert!(crate::models::kernels::bf16_gemm::supported());
                assert_eq!((o.dtype, o.kernels), (DType::F32, KernelPath::NativeBf16));
            }
            Err(e) => assert!(e.to_string().contains("avx512_bf16"), "{e}"),
        }
        let f32 = LoadOptions::parse("cpu", "f32").unwrap();
        assert_eq!((f32.dtype, f32.kernels), (DType::F32, KernelPath::Native));
    }
}
