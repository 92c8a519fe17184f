//! The process's heap policy for frame-sized buffers.
//!
//! glibc's malloc hands memory freed at the top of its heap back to the kernel (trimming), and
//! serves blocks above a sliding threshold from fresh mappings. A model run allocates and frees
//! the same activation buffers every frame, so each frame faulted the same pages in again, zeroed
//! by the kernel: 68 thousand page faults per OWLv2 frame at 960 px (some 270 MB), 16 thousand
//! per OWL-ViT B/16 frame. Keeping freed memory in the heap lets every frame reuse the pages of
//! the frame before; the peak resident memory is unchanged, since every frame reaches it anyway.

/// glibc's largest mmap threshold on 64-bit targets (`HEAP_MAX_SIZE / 2`): blocks up to it come
/// from the heap, where freed ones are reused.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;

/// Free memory at the top of the heap kept rather than returned to the kernel: all of it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = libc::c_int::MAX;

/// Keeps freed heap memory in the process for reuse, where the allocator is glibc's; returns
/// whether it did. Process-wide: the front ends (node, CLI, benchmark) call it once at start-up,
/// before loading a model.
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // Setting either threshold also stops glibc from moving the mmap threshold by itself.
        // SAFETY: `mallopt` only changes the allocator's parameters.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Returns the heap's free pages to the kernel, where the allocator is glibc's; returns whether
/// it did. The pipelines call it once a model is loaded: loading frees as much as it keeps (each
/// tensor is read, then transposed or concatenated into its kernel layout), and with
/// [`keep_freed_memory`] those pages would stay resident beside the weights for the life of the
/// process (26 MiB for OWLv2). Frames then grow the heap again to their own working set, which
/// stays.
pub fn release_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `malloc_trim` only returns unused pages of the allocator's heaps.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_takes_the_parameters() {
        let applied = keep_freed_memory();
        assert_eq!(applied, cfg!(all(target_os = "linux", target_env = "gnu")));
        // a frame-sized buffer still allocates and frees as before
        let buffer = vec![1f32; 8 << 20];
        assert_eq!(buffer.iter().sum::<f32>(), (8 << 20) as f32);
    }

    #[test]
    fn freed_pages_go_back_after_loading() {
        keep_freed_memory();
        // a loader's garbage: many blocks, every other one freed
        let mut blocks: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 1 << 20]).collect();
        let kept: Vec<Vec<u8>> = blocks.drain(..).step_by(2).collect();
        // the freed megabytes lie between kept ones, where only a trim returns them: glibc
        // reports that it released pages; other allocators are left alone
        let released = release_freed_memory();
        assert_eq!(released, cfg!(all(target_os = "linux", target_env = "gnu")));
        assert!(kept.iter().enumerate().all(|(i, b)| b[0] == (2 * i) as u8));
    }
}
