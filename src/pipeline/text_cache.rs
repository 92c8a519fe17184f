//! A single-slot cache of text embeddings, keyed by the text list they were computed from:
//! a camera stream asks for the same vocabulary every frame, and it changes rarely. Images
//! used as queries or prompts are keyed by [`image_key`].

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use image::RgbImage;

use crate::error::Result;

pub(crate) struct TextCache<T>(Mutex<Option<(Vec<String>, Arc<T>)>>);

impl<T> TextCache<T> {
    pub(crate) fn new() -> Self {
        Self(Mutex::new(None))
    }

    /// The cached value when `texts` equals the cached list, else `encode()`'s result, which
    /// replaces it.
    pub(crate) fn get_or_encode<S: AsRef<str>>(
        &self,
        texts: &[S],
        encode: impl FnOnce() -> Result<T>,
    ) -> Result<Arc<T>> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((key, cached)) = slot.as_ref() {
            if key.len() == texts.len() && key.iter().zip(texts).all(|(a, b)| a == b.as_ref()) {
                return Ok(Arc::clone(cached));
            }
        }
        let fresh = Arc::new(encode()?);
        let key = texts.iter().map(|t| t.as_ref().to_string()).collect();
        *slot = Some((key, Arc::clone(&fresh)));
        Ok(fresh)
    }
}

/// A cache key for one query or prompt image: its label, size and a 128-bit digest of its
/// pixels (two passes of std's `DefaultHasher` with different prefixes; the key lives only in
/// this process), so that an image changed under the same name is embedded again.
pub(crate) fn image_key(label: &str, image: &RgbImage) -> String {
    let digest = |seed: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        seed.hash(&mut h);
        image.dimensions().hash(&mut h);
        image.as_raw().hash(&mut h);
        h.finish()
    };
    format!(
        "{label}\u{0}{}x{}\u{0}{:016x}{:016x}",
        image.width(),
        image.height(),
        digest(0),
        digest(1)
    )
}

/// The [`image_key`]s of images named by `labels`, in order.
pub(crate) fn image_keys<S: AsRef<str>>(images: &[RgbImage], labels: &[S]) -> Vec<String> {
    images
        .iter()
        .zip(labels)
        .map(|(image, label)| image_key(label.as_ref(), image))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_keys_follow_label_and_pixels() {
        let a = RgbImage::new(4, 3);
        let mut b = a.clone();
        b.get_pixel_mut(3, 2).0[2] = 1;
        assert_eq!(image_key("x", &a), image_key("x", &a.clone()));
        assert_ne!(image_key("x", &a), image_key("y", &a));
        assert_ne!(image_key("x", &a), image_key("x", &b));
        assert_ne!(image_key("x", &a), image_key("x", &RgbImage::new(3, 4)));
    }

    #[test]
    fn encodes_only_when_the_list_changes() {
        let cache = TextCache::new();
        let calls = std::cell::Cell::new(0);
        let get = |texts: &[&str]| {
            cache
                .get_or_encode(texts, || {
                    calls.set(calls.get() + 1);
                    Ok(texts.len())
                })
                .unwrap()
        };
        let a = get(&["a", "b"]);
        let b = get(&["a", "b"]);
        assert!(Arc::ptr_eq(&a, &b));
        get(&["a"]);
        get(&["a", "b"]);
        assert_eq!(calls.get(), 3);
    }
}
