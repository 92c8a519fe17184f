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
    /// Which code the layers run: [`KernelPath::Native`] (the default; no flag of the CLI or
    /// the node changes it) or, for the tests of the code a GPU runs, [`KernelPath::Generic`]
    /// on any device.
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
    pub fn parse(device: &str, dtype: &str) -> Result<Self> {
        let options = Self {
            device: parse_device(device)?,
            dtype: parse_dtype(dtype)?,
            kernels: KernelPath::Native,
        };
        if options.device.is_cpu() && options.dtype == DType::BF16 {
            // candle's CPU backend widens every bf16 matmul to f32 and back: slower than f32,
            // at bf16's precision. The library still runs it (the tests check that path); a
            // user asking for it is told what to use instead.
            return Err(Error::Unsupported {
                model: "device".into(),
                reason: "bf16 on cpu is slower than f32 (candle's CPU backend widens its \
                         matmuls to f32) at bf16's precision; use f32 or f16 on cpu, bf16 on cuda"
                    .into(),
            });
        }
        Ok(options)
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
}
