//! Pure candle ports of the transformers models. Nothing here knows about ROS, files or
//! images: configs deserialize `config.json`, modules take tensors.

pub mod blip;
pub mod clip;
pub mod clipseg;
pub mod interpolate;
pub mod kernels;
pub mod owlv2;
pub mod owlvit;
mod vars;
pub mod vilt;

pub use kernels::KernelPath;
pub use vars::ModelVars;
