//! The worker's cache of text embeddings.

use std::sync::Arc;

/// Embeddings of the stream's vocabulary, plus one slot for a service call's own queries, so
/// that neither evicts the other.
pub(super) struct EmbedCache<E> {
    stream: Option<(Vec<String>, Arc<E>)>,
    adhoc: Option<(Vec<String>, Arc<E>)>,
}

impl<E> Default for EmbedCache<E> {
    fn default() -> Self {
        Self {
            stream: None,
            adhoc: None,
        }
    }
}

impl<E> EmbedCache<E> {
    /// The cached embeddings of `texts`, or `encode(texts)` (then `*encoded` is set).
    pub(super) fn get(
        &mut self,
        texts: &[String],
        for_stream: bool,
        encoded: &mut bool,
        encode: impl FnOnce(&[String]) -> Result<Arc<E>, String>,
    ) -> Result<Arc<E>, String> {
        for (t, e) in [&self.stream, &self.adhoc].into_iter().flatten() {
            if t.as_slice() == texts {
                return Ok(Arc::clone(e));
            }
        }
        let fresh = encode(texts)?;
        *encoded = true;
        let slot = if for_stream {
            &mut self.stream
        } else {
            &mut self.adhoc
        };
        *slot = Some((texts.to_vec(), Arc::clone(&fresh)));
        Ok(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embed_cache_keeps_stream_and_adhoc() {
        let mut c: EmbedCache<usize> = EmbedCache::default();
        let calls = std::cell::Cell::new(0);
        let mut enc = |t: &[String], stream: bool| {
            let mut e = false;
            let r = c
                .get(t, stream, &mut e, |t| {
                    calls.set(calls.get() + 1);
                    Ok(Arc::new(t.len()))
                })
                .unwrap();
            (*r, e)
        };
        let a = vec!["a".to_string()];
        let b = vec!["b".to_string(), "c".to_string()];
        assert_eq!(enc(&a, true), (1, true));
        assert_eq!(enc(&a, true), (1, false));
        assert_eq!(enc(&b, false), (2, true));
        // the service's vocabulary did not evict the stream's
        assert_eq!(enc(&a, true), (1, false));
        assert_eq!(enc(&b, false), (2, false));
        assert_eq!(calls.get(), 2);
    }
}
