//! vlm_perception: open-vocabulary perception for robots.
//!
//! Layers, each knowing little of the others:
//! - [`models`]: pure candle ports of the transformers models (configs, modules, forward).
//! - [`vision`]: image pre/post-processing (resize, normalize, boxes, NMS, masks, drawing).
//! - [`pipeline`]: the library API used by the front ends: checkpoint resolution, tokenizers,
//!   caches, device and dtype, and one task object per model ([`pipeline::Detector`], ...).
//! - [`transforms`], [`tracking`], [`objects`]: plain-Rust robotics around the models (a tf2-style
//!   transform buffer, ByteTrack, the memory of the objects seen).
//! - [`geometry`]: per-object point clouds and grasp / place poses from an aligned depth image.
//!
//! The CLI (`src/cli`) and the ROS 2 node (`src/node`, feature `ros`) are thin front ends
//! over [`pipeline`].

pub mod error;
pub mod geometry;
pub mod models;
pub mod objects;
pub mod pipeline;
pub mod tracking;
pub mod transforms;
pub mod vision;

pub use error::{Error, Result};
