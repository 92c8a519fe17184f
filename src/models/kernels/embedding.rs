//! [`TokenEmbedding`]: a vocabulary's embedding table (`nn.Embedding`), kept in bf16 on the
//! bf16-weights path ([`KernelPath::NativeBf16`]).
//!
//! A text tower's table is its largest single weight (CLIP's 49408 x 512, 97 MiB in f32; BERT's
//! 30522 x 768 in ViLT, 89 MiB) and is read a few rows per query: kept in bf16 it takes half the
//! memory, and the rows looked up are widened back to the model's dtype, so everything after the
//! lookup runs as before. The rounding is the weights' own (to nearest even, as the linear
//! layers' weights are rounded at load), never the activations'.

use candle_core::{DType, Result, Tensor};

use super::KernelPath;
use crate::models::ModelVars;

/// `nn.Embedding(vocab, d)`: ids of any shape -> that shape plus `d`.
#[derive(Debug, Clone)]
pub struct TokenEmbedding {
    /// (vocab, d), bf16 on [`KernelPath::NativeBf16`], else as loaded
    table: Tensor,
    /// the dtype the rows are returned in (the model's)
    dtype: DType,
}

impl TokenEmbedding {
    /// The table `(vocab, d)` at `vb`'s `name`.
    pub fn new(vb: &ModelVars, vocab: usize, d: usize, name: &str) -> Result<Self> {
        let table = vb.get((vocab, d), name)?;
        let dtype = table.dtype();
        let table = if vb.kernels() == KernelPath::NativeBf16 && dtype == DType::F32 {
            table.to_dtype(DType::BF16)?
        } else {
            table
        };
        Ok(Self { table, dtype })
    }

    /// The rows of `ids`, in the model's dtype.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut dims = ids.dims().to_vec();
        dims.push(self.table.dim(1)?);
        self.table
            .index_select(&ids.flatten_all()?, 0)?
            .to_dtype(self.dtype)?
            .reshape(dims)
    }

    /// The table as stored (bf16 on [`KernelPath::NativeBf16`]).
    pub fn table(&self) -> &Tensor {
        &self.table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::kernels::tests::{max_abs, max_diff, randn};
    use candle_core::Device;
    use candle_nn::VarBuilder;
    use std::collections::HashMap;

    fn embedding(kernels: KernelPath, table: &Tensor) -> TokenEmbedding {
        let vars = HashMap::from([("t".to_string(), table.clone())]);
        let vb = VarBuilder::from_tensors(vars, DType::F32, &Device::Cpu);
        TokenEmbedding::new(&ModelVars::new(vb, kernels), 10, 6, "t").unwrap()
    }

    #[test]
    fn looks_up_rows_and_keeps_bf16_on_the_bf16_path() {
        let table = randn(&[10, 6]);
        let ids = Tensor::new(&[[3u32, 0, 9], [3, 3, 1]], &Device::Cpu).unwrap();
        let want = table
            .index_select(&ids.flatten_all().unwrap(), 0)
            .unwrap()
            .reshape((2, 3, 6))
            .unwrap();
        let f32_rows = embedding(KernelPath::Native, &table).forward(&ids).unwrap();
        assert_eq!(f32_rows.dims(), &[2, 3, 6]);
        assert_eq!(max_diff(&f32_rows, &want), 0.0);

        let bf16 = embedding(KernelPath::NativeBf16, &table);
        assert_eq!(bf16.table().dtype(), DType::BF16);
        let rows = bf16.forward(&ids).unwrap();
        assert_eq!(
            (rows.dtype(), rows.dims()),
            (DType::F32, &[2usize, 3, 6][..])
        );
        // bf16 keeps 8 significant bits: each value within 2^-9 of itself, relative
        let (d, scale) = (max_diff(&rows, &want), max_abs(&table));
        assert!(d > 0.0 && d <= scale / 512.0, "{d} of {scale}");
    }
}
