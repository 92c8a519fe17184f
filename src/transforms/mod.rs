//! A transform buffer in the manner of tf2's `BufferCore`, on plain Rust types: frames are
//! strings, stamps are nanoseconds, transforms are nalgebra [`Isometry3`](nalgebra::Isometry3)s.
//! The ROS node feeds it from `/tf` and `/tf_static` and asks it where the camera was at an
//! image's stamp; nothing here knows about ROS messages.
//!
//! Mirrors ros2/geometry2 `tf2/src/buffer_core.cpp` (lookups through the common ancestor, the
//! latest common time), `tf2/src/cache.cpp` (`TimeCache`: the time-sorted samples, pruning and
//! interpolation), `tf2/src/static_cache.cpp` and `tf2/include/tf2/exceptions.h` (the error
//! kinds), as of geometry2 0.39.
//!
//! Conventions, as tf2's:
//! - An edge `parent -> child` is one `geometry_msgs/TransformStamped` (`header.frame_id` is the
//!   parent, `child_frame_id` the child). Its transform maps points expressed in the child frame
//!   into the parent frame (`parent_T_child`).
//! - [`TransformBuffer::lookup_transform`]`(target, source, t)` returns `target_T_source`: it maps
//!   points expressed in `source` into `target`.
//! - Each frame has at most one parent, so the frames form a forest; a lookup walks both frames up
//!   to their closest common ancestor.
//!
//! Where this buffer differs from tf2, and why:
//! - **Leading `/`**: stripped from every frame id, in transforms and in lookups alike. tf2 strips
//!   it from incoming transforms but rejects it in lookups; since the stored frame has the name
//!   without it, `/base_link` can only mean `base_link` (a ROS 1 habit in a parameter).
//! - **One parent per child**: tf2 keeps the parent of each sample, so a frame may change parent
//!   over time. Here the latest parent wins: a transform with a new parent replaces the child's
//!   edge and drops its samples under the old parent. A transform that would close a loop is
//!   rejected when it arrives (tf2 accepts it and fails every lookup through the loop later), so
//!   the tree that was there keeps answering.
//! - **Same stamp twice**: a sample at a stamp the edge already has replaces it (a republished
//!   correction); tf2 keeps both unless they are bit-identical and then answers with either.
//! - **Pruning** happens after the new sample is in, so the cache never holds more than
//!   `cache_time` behind its newest sample (tf2 prunes before inserting, relative to the previous
//!   newest). The bound is inclusive, as tf2's: a sample exactly `cache_time` old stays.
//! - **Empty frame ids** are rejected in lookups too; tf2 answers `lookupTransform("", "")` with
//!   the identity.
//! - **Errors** name the edge and the lookup, and print times in seconds with all nine decimals
//!   (tf2 prints six), since the node publishes these words as the reason a frame got no 3D.

mod buffer;
mod cache;
#[cfg(test)]
mod tests;

use std::fmt;

pub use buffer::{TransformBuffer, DEFAULT_CACHE_TIME};
pub use cache::TimeDirection;

pub type Result<T> = std::result::Result<T, TransformError>;

const NANOS_PER_SEC: i64 = 1_000_000_000;

/// A point in time, in nanoseconds since the epoch (the clock of the stamps fed in: ROS time, or
/// sim time). As a lookup time, [`Stamp::ZERO`] means "the latest time the chain has in common",
/// as tf2's `TimePointZero`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Stamp(i64);

impl Stamp {
    /// As a lookup time: the latest common time of the chain (tf2's `TimePointZero`).
    pub const ZERO: Stamp = Stamp(0);

    pub const fn from_nanos(nanos: i64) -> Self {
        Self(nanos)
    }

    /// From `builtin_interfaces/Time` (`sec`, `nanosec`). `nanosec` is not checked to be below
    /// 1e9; it adds, as in tf2's conversion.
    pub const fn from_ros(sec: i32, nanosec: u32) -> Self {
        Self(sec as i64 * NANOS_PER_SEC + nanosec as i64)
    }

    /// From seconds, rounded to the nearest nanosecond (saturating outside i64's ±292 years).
    pub fn from_secs_f64(secs: f64) -> Self {
        Self((secs * NANOS_PER_SEC as f64).round() as i64)
    }

    pub const fn nanos(self) -> i64 {
        self.0
    }

    pub fn secs_f64(self) -> f64 {
        self.0 as f64 / NANOS_PER_SEC as f64
    }

    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl From<(i32, u32)> for Stamp {
    fn from((sec, nanosec): (i32, u32)) -> Self {
        Self::from_ros(sec, nanosec)
    }
}

/// Seconds with all nine decimals, exact (no float rounding): `12.050000000`.
impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&secs(i128::from(self.0)))
    }
}

/// `nanos` as seconds with nine decimals; i128 so that differences of any two stamps fit.
fn secs(nanos: i128) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let abs = nanos.unsigned_abs();
    let per_sec = NANOS_PER_SEC as u128;
    format!("{sign}{}.{:09}", abs / per_sec, abs % per_sec)
}

/// How far `later` is after `earlier`, in seconds.
fn gap(earlier: Stamp, later: Stamp) -> String {
    secs(i128::from(later.0) - i128::from(earlier.0))
}

/// How far `requested` is outside an edge's samples, for an extrapolation message.
fn outside(into: TimeDirection, requested: Stamp, oldest: Stamp, newest: Stamp) -> String {
    match into {
        TimeDirection::Past => format!("{} s before the earliest", gap(requested, oldest)),
        TimeDirection::Future => format!("{} s after the latest", gap(newest, requested)),
    }
}

/// The samples an edge has, for an extrapolation message.
fn available(oldest: Stamp, newest: Stamp) -> String {
    if oldest == newest {
        format!(
            "it has a single transform, at {oldest} s, which is valid at that stamp only \
             (interpolation needs two)"
        )
    } else {
        format!("it has transforms from {oldest} s to {newest} s")
    }
}

fn frame_list(frames: &[String]) -> String {
    if frames.is_empty() {
        return "none, no transform has been received yet".into();
    }
    frames
        .iter()
        .map(|f| format!("`{f}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn root_of(frame: &str, root: &str) -> String {
    if frame == root {
        format!("`{frame}` is a root")
    } else {
        format!("`{frame}` is under root `{root}`")
    }
}

/// What went wrong in a [`TransformBuffer`] call, in words a robotics engineer can act on. The
/// lookup errors are tf2's: `LookupException` ([`UnknownFrame`](Self::UnknownFrame)),
/// `ConnectivityException` ([`NotConnected`](Self::NotConnected)) and the backward and forward
/// `ExtrapolationException`s ([`Extrapolation`](Self::Extrapolation)); the others reject a
/// transform on the way in, where tf2 logs and drops it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TransformError {
    #[error("the {role} frame id is empty")]
    EmptyFrame { role: &'static str },

    #[error("transform from `{frame}` to itself: the parent and child frame are the same")]
    SelfTransform { frame: String },

    #[error(
        "transform `{parent}` -> `{child}` has a NaN or infinite value: translation \
         {translation:?}, rotation (x, y, z, w) {rotation:?}"
    )]
    NonFinite {
        parent: String,
        child: String,
        translation: [f64; 3],
        rotation: [f64; 4],
    },

    #[error(
        "transform `{parent}` -> `{child}` has a rotation quaternion of norm {norm:.6}, not a unit \
         quaternion (x, y, z, w) {rotation:?}"
    )]
    NotNormalized {
        parent: String,
        child: String,
        norm: f64,
        rotation: [f64; 4],
    },

    #[error(
        "transform `{parent}` -> `{child}` would close a loop: `{child}` is already above \
         `{parent}` ({})",
        .path.join(" -> ")
    )]
    Loop {
        parent: String,
        child: String,
        /// From `parent` up to `child`, as the tree has it now.
        path: Vec<String>,
    },

    #[error(
        "transform `{parent}` -> `{child}` at {stamp} s is older than the buffer keeps: the \
         edge's latest transform is at {newest} s and the buffer keeps {} s behind it (back to \
         {kept_from} s)",
        gap(*.kept_from, *.newest)
    )]
    TooOld {
        parent: String,
        child: String,
        stamp: Stamp,
        newest: Stamp,
        kept_from: Stamp,
    },

    #[error(
        "frame `{frame}` does not exist in the transform buffer; known frames: {}",
        frame_list(.known)
    )]
    UnknownFrame {
        frame: String,
        /// Every frame the buffer knows, sorted.
        known: Vec<String>,
    },

    #[error(
        "cannot transform from `{source_frame}` to `{target_frame}`: the frames are not \
         connected, they are in two separate trees ({}, {})",
        root_of(.source_frame, .source_root),
        root_of(.target_frame, .target_root)
    )]
    NotConnected {
        target_frame: String,
        target_root: String,
        source_frame: String,
        source_root: String,
    },

    /// tf2's backward or forward `ExtrapolationException`: the time is outside the samples of
    /// the edge `parent -> child`. Into the future, waiting may help; into the past, not.
    #[error(
        "lookup from `{source_frame}` to `{target_frame}` would require extrapolation into the \
         {into}: requested time {requested} s is {} transform `{parent}` -> `{child}`; {}",
        outside(*.into, *.requested, *.oldest, *.newest),
        available(*.oldest, *.newest)
    )]
    Extrapolation {
        into: TimeDirection,
        target_frame: String,
        source_frame: String,
        parent: String,
        child: String,
        requested: Stamp,
        oldest: Stamp,
        newest: Stamp,
    },
}
