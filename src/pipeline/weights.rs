//! Safetensors weights read tensor by tensor with positioned reads.
//!
//! candle's memory-mapped reader copies every tensor out of the mapping, and the pages it
//! touched stay resident until the mapping goes: loading a model then peaks at twice its
//! weights. Reading each tensor straight into its own buffer holds the weights once (plus one
//! tensor in flight when a dtype conversion is asked for).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Result, Shape, Tensor, WithDType};
use candle_nn::var_builder::SimpleBackend;
use safetensors::tensor::Metadata;
use safetensors::Dtype;

/// The 8-byte little-endian header length that opens a safetensors file.
const HEADER_LEN_BYTES: u64 = 8;
/// The safetensors format's own bound on the JSON header (`safetensors`' `MAX_HEADER_SIZE`).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Where one tensor lies in the file and how it is stored.
#[derive(Debug, Clone)]
struct TensorInfo {
    stored: Stored,
    shape: Vec<usize>,
    /// Absolute byte offset in the file.
    offset: u64,
}

/// Storage types, with the candle dtype each loads as (candle has no u16/bool).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    Native(DType),
    U16,
    Bool,
}

impl Stored {
    /// The storage types candle's own safetensors loader reads too.
    fn from_dtype(dtype: Dtype) -> Option<Self> {
        Some(match dtype {
            Dtype::F64 => Self::Native(DType::F64),
            Dtype::F32 => Self::Native(DType::F32),
            Dtype::F16 => Self::Native(DType::F16),
            Dtype::BF16 => Self::Native(DType::BF16),
            Dtype::I64 => Self::Native(DType::I64),
            Dtype::I32 => Self::Native(DType::I32),
            Dtype::I16 => Self::Native(DType::I16),
            Dtype::U32 => Self::Native(DType::U32),
            Dtype::U8 => Self::Native(DType::U8),
            Dtype::U16 => Self::U16,
            Dtype::BOOL => Self::Bool,
            _ => return None,
        })
    }

    fn size_in_bytes(self) -> usize {
        match self {
            Self::Native(d) => d.size_in_bytes(),
            Self::U16 => 2,
            Self::Bool => 1,
        }
    }
}

/// A safetensors file opened for tensor-by-tensor reads: a [`SimpleBackend`] for candle's
/// `VarBuilder`.
pub struct SafetensorsFile {
    path: PathBuf,
    file: Mutex<File>,
    tensors: HashMap<String, TensorInfo>,
}

fn format_error(path: &Path, reason: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "`{}` is not a safetensors file: {reason}",
        path.display()
    ))
}

impl SafetensorsFile {
    /// Opens `path` and reads its header; checks that every tensor lies inside the file and
    /// has the byte length its dtype and shape imply.
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |reason: String| format_error(path, reason);
        let mut file = File::open(path).map_err(|e| bad(e.to_string()))?;
        let file_len = file.metadata().map_err(|e| bad(e.to_string()))?.len();
        let mut len_bytes = [0u8; HEADER_LEN_BYTES as usize];
        file.read_exact(&mut len_bytes)
            .map_err(|_| bad(format!("{file_len} bytes, too short for a header")))?;
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER_BYTES || HEADER_LEN_BYTES + header_len > file_len {
            return Err(bad(format!(
                "header of {header_len} bytes in a file of {file_len}"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header)
            .map_err(|e| bad(e.to_string()))?;
        // The header's JSON (dtypes, shapes, offsets, `__metadata__`) as the safetensors crate
        // parses it; where the bytes lie is checked here, against the file.
        let metadata: Metadata =
            serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
        let data_start = HEADER_LEN_BYTES + header_len;
        let data_len = file_len - data_start;
        let entries = metadata.tensors();
        let mut tensors = HashMap::with_capacity(entries.len());
        for (name, info) in entries {
            let stored = Stored::from_dtype(info.dtype).ok_or_else(|| {
                bad(format!(
                    "tensor `{name}` has unsupported dtype {:?}",
                    info.dtype
                ))
            })?;
            let (start, end) = (info.data_offsets.0 as u64, info.data_offsets.1 as u64);
            let expected = info.shape.iter().product::<usize>() * stored.size_in_bytes();
            if start > end || end > data_len || end - start != expected as u64 {
                return Err(bad(format!(
                    "tensor `{name}` ({:?} {:?}) spans bytes {start}..{end} of {data_len}",
                    info.dtype, info.shape
                )));
            }
            tensors.insert(
                name,
                TensorInfo {
                    stored,
                    shape: info.shape.clone(),
                    offset: data_start + start,
                },
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            tensors,
        })
    }

    /// Reads `n` values of `T` at `offset` into a fresh, correctly aligned buffer.
    fn read_values<T: WithDType>(&self, offset: u64, n: usize) -> Result<Vec<T>> {
        let mut values = vec![T::from_f64(0.0); n];
        // SAFETY: `values` is an initialised buffer of plain numeric values (every WithDType
        // is an integer or float type without invalid bit patterns), viewed as its bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(
                values.as_mut_ptr().cast::<u8>(),
                std::mem::size_of_val(values.as_slice()),
            )
        };
        let mut file = self
            .file
            .lock()
            .map_err(|_| candle_core::Error::Msg("weights file lock poisoned".into()))?;
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(bytes))
            .map_err(|e| format_error(&self.path, e))?;
        // safetensors stores little-endian values; so does every target this crate runs on.
        const _: () = assert!(cfg!(target_endian = "little"));
        Ok(values)
    }

    /// Loads tensor `name` as stored, on the CPU.
    fn load_cpu(&self, name: &str) -> Result<Tensor> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            })?;
        let n = info.shape.iter().product();
        let shape = info.shape.as_slice();
        let cpu = &Device::Cpu;
        match info.stored {
            Stored::Native(DType::F64) => {
                Tensor::from_vec(self.read_values::<f64>(info.offset, n)?, shape, cpu)
            }
            Stored::Native(DType::F32) => {
                Tensor::from_vec(self.read_values::<f32>(info.offset, n)?, shape, cpu)
            }
            Stored::Native(DType::F16) => {
                Tensor::from_vec(self.read_values::<half::f16>(info.offset, n)?, shape, cpu)
            }
            Stored::Native(DType::BF16) => {
                Tensor::from_vec(self.read_values::<half::bf16>(info.offset, n)?, shape, cpu)
            }
            Stored::Native(DType::I64) => {
                Tensor::from_vec(self.read_values::<i64>(info.offset, n)?, shape, cpu)
            }
            Stored::Native(DType::I32) => {
                Tensor::from_vec(self.read_values::<i32>(info.offset, n)?, shape, cpu)
            }
            Stored::Native(DType::I16) => {
                Tensor::from_vec(self.read_values::<i16>(info.offset, n)?, shape, cpu)
            }
            Stored::Native(DType::U32) => {
                Tensor::from_vec(self.read_values::<u32>(info.offset, n)?, shape, cpu)
            }
            Stored::Native(DType::U8) | Stored::Bool => {
                Tensor::from_vec(self.read_values::<u8>(info.offset, n)?, shape, cpu)
            }
            Stored::U16 => {
                // candle has no u16: widen to u32 as its own safetensors loader does.
                let raw = self.read_values::<u8>(info.offset, 2 * n)?;
                let wide: Vec<u32> = raw
                    .chunks_exact(2)
                    .map(|b| u32::from(u16::from_le_bytes([b[0], b[1]])))
                    .collect();
                Tensor::from_vec(wide, shape, cpu)
            }
            Stored::Native(other) => Err(candle_core::Error::Msg(format!(
                "tensor `{name}`: dtype {other:?} is not read from safetensors"
            ))),
        }
    }
}

impl SimpleBackend for SafetensorsFile {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let tensor = self.get_unchecked(name, dtype, dev)?;
        if tensor.shape() != &s {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: tensor.shape().clone(),
            }
            .bt());
        }
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        // Same-dtype and same-device conversions are free (no copy).
        self.load_cpu(name)?.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, tensors: &[(&str, Tensor)]) {
        let map: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect();
        candle_core::safetensors::save(&map, path).unwrap();
    }

    #[test]
    fn reads_what_candle_writes_in_every_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let base = Tensor::arange(0f32, 24., &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 4))
            .unwrap();
        let dtypes = [
            DType::F32,
            DType::F16,
            DType::BF16,
            DType::F64,
            DType::U8,
            DType::U32,
            DType::I64,
        ];
        let tensors: Vec<(String, Tensor)> = dtypes
            .iter()
            .map(|d| (format!("t.{d:?}"), base.to_dtype(*d).unwrap()))
            .collect();
        let refs: Vec<(&str, Tensor)> = tensors
            .iter()
            .map(|(n, t)| (n.as_str(), t.clone()))
            .collect();
        write(&path, &refs);
        let file = SafetensorsFile::open(&path).unwrap();
        for (name, t) in &tensors {
            let got = file.get_unchecked(name, t.dtype(), &Device::Cpu).unwrap();
            assert_eq!(got.dtype(), t.dtype(), "{name}");
            let diff = (got.to_dtype(DType::F64).unwrap() - t.to_dtype(DType::F64).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert_eq!(diff, 0.0, "{name}");
            // and converted on load
            let f32_ = file
                .get(
                    base.shape().clone(),
                    name,
                    Default::default(),
                    DType::F32,
                    &Device::Cpu,
                )
                .unwrap();
            assert_eq!(f32_.dtype(), DType::F32);
        }
        assert!(file.contains_tensor("t.F32"));
        assert!(!file.contains_tensor("nope"));
        let err = file
            .get(
                (3, 2, 4).into(),
                "t.F32",
                Default::default(),
                DType::F32,
                &Device::Cpu,
            )
            .unwrap_err();
        assert!(err.to_string().contains("shape mismatch"), "{err}");
    }

    #[test]
    fn truncated_or_garbage_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.safetensors");
        write(
            &good,
            &[(
                "x",
                Tensor::ones((64, 64), DType::F32, &Device::Cpu).unwrap(),
            )],
        );
        let bytes = std::fs::read(&good).unwrap();
        let cases: [(&str, &[u8]); 3] = [
            ("empty", &[]),
            ("truncated", &bytes[..bytes.len() - 100]),
            ("garbage", b"this is not a safetensors file at all"),
        ];
        for (what, content) in cases {
            let p = dir.path().join(format!("{what}.safetensors"));
            std::fs::write(&p, content).unwrap();
            let err = SafetensorsFile::open(&p)
                .err()
                .unwrap_or_else(|| panic!("{what} opened"));
            assert!(
                err.to_string().contains(&format!("{what}.safetensors")),
                "{what}: {err}"
            );
        }
    }
}
