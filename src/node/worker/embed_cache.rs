//! The worker's cache of text embeddings.

use std::sync::Arc;

/// Stream vocabularies kept: the shared one and one per camera at most.
const STREAM_SLOTS: usize = crate::params::cameras::MAX_CAMERAS + 1;

/// Embeddings of the stream's vocabularies (the shared one and the cameras' own, least
/// recently used dropped first), plus one slot for a service call's own queries, so that
/// neither evicts the other.
pub(super) struct EmbedCache<E> {
    stream: Vec<(Vec<String>, Arc<E>)>,
    adhoc: Option<(Vec<String>, Arc<E>)>,
}

impl<E> Default for EmbedCache<E> {
    fn default() -> Self {
        Self {
            stream: Vec::new(),
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
        if let Some(i) = self.stream.iter().position(|(t, _)| t.as_slice() == texts) {
            let hit = self.stream.remove(i);
            let e = Arc::clone(&hit.1);
            self.stream.push(hit);
            return Ok(e);
        }
        if let Some((t, e)) = &self.adhoc {
            if t.as_slice() == texts {
                return Ok(Arc::clone(e));
            }
        }
        let fresh = encode(texts)?;
        *encoded = true;
        let entry = (texts.to_vec(), Arc::clone(&fresh));
        if for_stream {
            if self.stream.len() == STREAM_SLOTS {
                self.stream.remove(0);
            }
            self.stream.push(entry);
        } else {
            self.adhoc = Some(entry);
        }
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
        // several stream vocabularies (cameras of their own) stay side by side
        let d = vec!["d".to_string()];
        assert_eq!(enc(&d, true), (1, true));
        assert_eq!(enc(&a, true), (1, false));
        assert_eq!(enc(&d, true), (1, false));
        assert_eq!(calls.get(), 3);
    }
}
