//! Image pre- and post-processing shared by the models: loading, PIL-compatible resizing,
//! normalization, boxes and NMS, drawing. Nothing here knows about a particular model.

pub mod boxes;
pub mod camera;
pub mod depth;
pub mod draw;
pub mod image_io;
pub mod masks;
pub mod owlv2_preprocess;
pub mod peak;
pub mod preprocess;
pub mod resample;
