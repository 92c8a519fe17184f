//! Decoding images into RGB, as transformers' `convert_to_rgb` sees them.

use std::path::Path;

use image::{DynamicImage, RgbImage};

use crate::error::{Error, Result};

/// Largest side accepted, in pixels: beyond this an image is far from anything a camera sends
/// and decoding it risks exhausting memory.
pub const MAX_IMAGE_SIDE: u32 = 16_384;

/// Reads and decodes an image file (format guessed from the content) into RGB.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::Image {
        name: name.clone(),
        reason: e.to_string(),
    })?;
    decode_rgb(&bytes, &name)
}

/// Decodes encoded image bytes (PNG, JPEG, WebP, GIF - first frame -, BMP, TIFF: what Pillow
/// reads for transformers) into RGB; `name` is used in errors.
pub fn decode_rgb(bytes: &[u8], name: &str) -> Result<RgbImage> {
    let err = |reason: String| Error::Image {
        name: name.to_string(),
        reason,
    };
    if bytes.is_empty() {
        return Err(err("empty file".into()));
    }
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| err(e.to_string()))
    };
    // The header alone says how large the image is: refuse absurd sizes before decoding.
    let (width, height) = reader()?
        .into_dimensions()
        .map_err(|e| err(e.to_string()))?;
    check_size(width, height, name)?;
    let mut reader = reader()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    reader.limits(limits);
    let decoded = reader.decode().map_err(|e| err(e.to_string()))?;
    let rgb = to_rgb(decoded);
    check_size(rgb.width(), rgb.height(), name)?;
    Ok(rgb)
}

/// Rejects images with a zero or absurd side.
pub fn check_size(width: u32, height: u32, name: &str) -> Result<()> {
    if width == 0 || height == 0 || width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(Error::Image {
            name: name.to_string(),
            reason: format!(
                "size {width}x{height} is outside 1..={MAX_IMAGE_SIDE} pixels per side"
            ),
        });
    }
    Ok(())
}

/// Converts to RGB like transformers' `convert_to_rgb`: images with alpha are composited onto
/// a white background, grey is replicated.
pub fn to_rgb(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (dst, src) in out.pixels_mut().zip(rgba.pixels()) {
        let a = u32::from(src[3]);
        for c in 0..3 {
            // PIL's alpha_composite onto opaque white, in integer arithmetic.
            let v = (u32::from(src[c]) * a + 255 * (255 - a) + 127) / 255;
            dst[c] = v as u8;
        }
    }
    out
}
