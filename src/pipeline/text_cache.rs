//! A single-slot cache of text embeddings, keyed by the text list they were computed from:
//! a camera stream asks for the same vocabulary every frame, and it changes rarely.

use std::sync::{Arc, Mutex};

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

#[cfg(test)]
mod tests {
    use super::*;

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
