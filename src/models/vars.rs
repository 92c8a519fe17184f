//! [`ModelVars`]: what the modules are built from - candle's `VarBuilder` (a checkpoint's
//! tensors under a prefix, on a device, in a dtype) and the [`KernelPath`] of the layers built
//! from it, so that a model's layers all take the path its loader chose.

use std::ops::Deref;

use candle_nn::VarBuilder;

use super::kernels::KernelPath;

/// A `VarBuilder` with the kernel path of the layers read through it. It derefs to the
/// `VarBuilder` (`get`, `device`, `dtype`); [`ModelVars::pp`] keeps the path.
#[derive(Clone)]
pub struct ModelVars<'a> {
    vb: VarBuilder<'a>,
    kernels: KernelPath,
}

impl<'a> ModelVars<'a> {
    pub fn new(vb: VarBuilder<'a>, kernels: KernelPath) -> Self {
        Self { vb, kernels }
    }

    /// The variables under `name`, as `VarBuilder::pp`.
    pub fn pp(&self, name: impl ToString) -> Self {
        Self {
            vb: self.vb.pp(name),
            kernels: self.kernels,
        }
    }

    pub fn kernels(&self) -> KernelPath {
        self.kernels
    }

    /// The bare `VarBuilder`, for candle-nn's constructors (their modules are candle ops on
    /// every path).
    pub fn var_builder(&self) -> VarBuilder<'a> {
        self.vb.clone()
    }
}

impl<'a> Deref for ModelVars<'a> {
    type Target = VarBuilder<'a>;

    fn deref(&self) -> &Self::Target {
        &self.vb
    }
}

/// The native path, as every user loads.
impl<'a> From<VarBuilder<'a>> for ModelVars<'a> {
    fn from(vb: VarBuilder<'a>) -> Self {
        Self::new(vb, KernelPath::Native)
    }
}
