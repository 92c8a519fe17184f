//! Debug overlays: labelled boxes and tinted masks drawn onto an RGB image. Only the front ends
//! draw (the CLI's `--overlay`, the node's optional `~/overlay`); the models never do.

use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage};
use imageproc::{drawing, rect::Rect};

use super::boxes::BBox;

/// Label glyphs are font8x8's 8x8 cells scaled by this factor.
const LABEL_SCALE: u32 = 2;
const GLYPH: u32 = 8;
const BOX_THICKNESS: i32 = 2;

/// A small categorical palette (the first colours of matplotlib's tab10), one per query.
pub const PALETTE: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

pub fn palette_color(index: usize) -> Rgb<u8> {
    Rgb(PALETTE[index % PALETTE.len()])
}

/// Draws `bbox` with a filled label tab above its top-left corner.
pub fn draw_labelled_box(img: &mut RgbImage, bbox: &BBox, label: &str, color: Rgb<u8>) {
    let (w, h) = (img.width() as f32, img.height() as f32);
    let x0 = bbox.x_min.clamp(0.0, w - 1.0) as i32;
    let y0 = bbox.y_min.clamp(0.0, h - 1.0) as i32;
    let x1 = bbox.x_max.clamp(0.0, w - 1.0) as i32;
    let y1 = bbox.y_max.clamp(0.0, h - 1.0) as i32;
    for t in 0..BOX_THICKNESS {
        let bw = (x1 - x0 - 2 * t).max(1) as u32;
        let bh = (y1 - y0 - 2 * t).max(1) as u32;
        drawing::draw_hollow_rect_mut(img, Rect::at(x0 + t, y0 + t).of_size(bw, bh), color);
    }
    let cell = GLYPH * LABEL_SCALE;
    let tab_w = (label.chars().count() as u32 * cell + 4).min(img.width());
    let tab_y = (y0 - cell as i32 - 4).max(0);
    drawing::draw_filled_rect_mut(
        img,
        Rect::at(x0, tab_y).of_size(tab_w.max(1), cell + 4),
        color,
    );
    draw_text(img, x0 + 2, tab_y + 2, label, Rgb([255, 255, 255]));
}

/// Writes `text` with font8x8 glyphs (ASCII and Latin-1; others become '?').
pub fn draw_text(img: &mut RgbImage, x: i32, y: i32, text: &str, color: Rgb<u8>) {
    let cell = (GLYPH * LABEL_SCALE) as i32;
    for (i, ch) in text.chars().enumerate() {
        let glyph = font8x8::BASIC_FONTS
            .get(ch)
            .or_else(|| font8x8::LATIN_FONTS.get(ch))
            .or_else(|| font8x8::BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        let gx = x + i as i32 * cell;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..GLYPH as i32 {
                if bits & (1 << col) == 0 {
                    continue;
                }
                for dy in 0..LABEL_SCALE as i32 {
                    for dx in 0..LABEL_SCALE as i32 {
                        let px = gx + col * LABEL_SCALE as i32 + dx;
                        let py = y + row as i32 * LABEL_SCALE as i32 + dy;
                        if px >= 0
                            && py >= 0
                            && (px as u32) < img.width()
                            && (py as u32) < img.height()
                        {
                            img.put_pixel(px as u32, py as u32, color);
                        }
                    }
                }
            }
        }
    }
}

/// Blends `color` over the pixels where `mask` (row-major, same size as `img`) is set.
pub fn tint_mask(img: &mut RgbImage, mask: &[bool], color: Rgb<u8>, alpha: f32) {
    for (px, &on) in img.pixels_mut().zip(mask) {
        if on {
            for c in 0..3 {
                px[c] =
                    (f32::from(px[c]) * (1.0 - alpha) + f32::from(color[c]) * alpha).round() as u8;
            }
        }
    }
}
