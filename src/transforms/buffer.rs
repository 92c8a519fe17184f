//! [`TransformBuffer`]: tf2's `BufferCore` without ROS. It stores one edge per child frame and
//! answers lookups between any two frames of a tree by walking both up to their common ancestor.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use nalgebra::{Isometry3, UnitQuaternion};

use super::cache::{EdgeCache, TimeCache, TimeDirection};
use super::{Result, Stamp, TransformError};

/// How long a dynamic edge keeps its samples, behind its newest one: tf2's
/// `BUFFER_CORE_DEFAULT_CACHE_TIME` (`tf2/include/tf2/buffer_core.h`).
pub const DEFAULT_CACHE_TIME: Duration = Duration::from_secs(10);

/// How far from 1 a rotation quaternion's squared norm may be: tf2's
/// `QUATERNION_NORMALIZATION_TOLERANCE` (`10e-3` in `tf2/src/buffer_core.cpp`). Quaternions
/// within it are renormalised; one further off is a bug in its publisher, not rounding.
pub const QUATERNION_NORM_TOLERANCE: f64 = 0.01;

/// The edge from a child frame to its parent.
#[derive(Debug, Clone)]
struct Edge {
    parent: String,
    cache: EdgeCache,
}

/// The edges a lookup composes: each `(child, edge)`, from the source frame up to the common
/// ancestor and from the target frame up to it.
struct Chain<'a> {
    source_up: Vec<(&'a str, &'a Edge)>,
    target_up: Vec<(&'a str, &'a Edge)>,
}

impl Chain<'_> {
    /// The newest time every dynamic edge of the chain has reached; `None` when all its edges
    /// are static (valid at any time).
    fn latest_common_time(&self) -> Option<Stamp> {
        self.source_up
            .iter()
            .chain(&self.target_up)
            .filter_map(|(_, edge)| edge.cache.newest())
            .min()
    }
}

/// A tree (or forest) of frames with timed transforms between them; see the [module
/// docs](super) for the conventions and where it departs from tf2.
///
/// Not synchronised: share it behind a lock, as tf2 keeps `BufferCore`'s state behind its
/// `frame_mutex_`.
#[derive(Debug, Clone)]
pub struct TransformBuffer {
    cache_time: Duration,
    /// The edge of each child frame, by the child's id.
    edges: HashMap<String, Edge>,
    /// Every frame named by a transform since the last [`clear`](Self::clear), parents included.
    frames: BTreeSet<String>,
}

impl Default for TransformBuffer {
    fn default() -> Self {
        Self::new(DEFAULT_CACHE_TIME)
    }
}

/// A frame id as stored: one leading `/` stripped (tf2's `stripSlash`), and not empty.
fn frame_id<'a>(id: &'a str, role: &'static str) -> Result<&'a str> {
    let id = id.strip_prefix('/').unwrap_or(id);
    if id.is_empty() {
        return Err(TransformError::EmptyFrame { role });
    }
    Ok(id)
}

impl TransformBuffer {
    /// An empty buffer whose dynamic edges keep `cache_time` of samples behind their newest one.
    pub fn new(cache_time: Duration) -> Self {
        Self {
            cache_time,
            edges: HashMap::new(),
            frames: BTreeSet::new(),
        }
    }

    pub fn cache_time(&self) -> Duration {
        self.cache_time
    }

    /// Every frame the buffer knows (parents and children), sorted.
    pub fn frames(&self) -> Vec<String> {
        self.frames.iter().cloned().collect()
    }

    /// The parent of `frame`, `None` for a root or an unknown frame.
    pub fn parent(&self, frame: &str) -> Option<&str> {
        let frame = frame.strip_prefix('/').unwrap_or(frame);
        self.edges.get(frame).map(|edge| edge.parent.as_str())
    }

    /// Forgets the dynamic edges, as tf2's `BufferCore::clear` (which tf2_ros's `Buffer` calls
    /// when ROS time jumps back, e.g. a looping bag). Static edges stay, as tf2's `StaticCache`
    /// ignores `clear`: `/tf_static` is latched and will not be sent again.
    pub fn clear(&mut self) {
        self.edges
            .retain(|_, edge| matches!(edge.cache, EdgeCache::Static(_)));
        self.frames = self
            .edges
            .iter()
            .flat_map(|(child, edge)| [child.clone(), edge.parent.clone()])
            .collect();
    }

    /// Adds the transform of the edge `parent -> child` at `stamp` (`header.frame_id`,
    /// `child_frame_id` and `header.stamp` of a `TransformStamped`): it maps points expressed in
    /// `child` into `parent`.
    ///
    /// A static transform (`/tf_static`) is valid at any time and replaces the edge's previous
    /// one; `stamp` is ignored. A dynamic one joins the edge's time-sorted samples, which keep
    /// [`cache_time`](Self::cache_time) behind the newest. A transform with another parent than
    /// the child's edge has, or a static one for a dynamic edge or the other way round, replaces
    /// the edge (the latest parent wins; tf2 also swaps the cache kind).
    ///
    /// The rotation may come from a message unchecked (`UnitQuaternion::new_unchecked`): it is
    /// checked against [`QUATERNION_NORM_TOLERANCE`] and renormalised here, as tf2 does.
    ///
    /// Errors: an empty frame id, `parent == child`, a NaN or infinite value, a quaternion that
    /// is not of unit norm, an edge that would close a loop, and a dynamic sample older than the
    /// edge keeps ([`TransformError::TooOld`], tf2's `TF_OLD_DATA`). The buffer is unchanged
    /// then.
    pub fn set_transform(
        &mut self,
        parent: &str,
        child: &str,
        stamp: Stamp,
        transform: Isometry3<f64>,
        is_static: bool,
    ) -> Result<()> {
        let parent = frame_id(parent, "parent")?;
        let child = frame_id(child, "child")?;
        if parent == child {
            return Err(TransformError::SelfTransform {
                frame: child.into(),
            });
        }
        let transform = self.checked(parent, child, transform)?;
        let above_parent = self.ancestors(parent);
        if let Some(i) = above_parent.iter().position(|&f| f == child) {
            return Err(TransformError::Loop {
                parent: parent.into(),
                child: child.into(),
                path: above_parent[..=i].iter().map(|&f| f.to_owned()).collect(),
            });
        }

        let cache_time = i64::try_from(self.cache_time.as_nanos()).unwrap_or(i64::MAX);
        match self.edges.get_mut(child) {
            Some(Edge {
                parent: p,
                cache: EdgeCache::Dynamic(cache),
            }) if p == parent && !is_static => {
                cache
                    .insert(stamp, transform, cache_time)
                    .map_err(|kept_from| TransformError::TooOld {
                        parent: parent.into(),
                        child: child.into(),
                        stamp,
                        newest: cache.newest(),
                        kept_from,
                    })?;
            }
            _ => {
                let cache = if is_static {
                    EdgeCache::Static(transform)
                } else {
                    EdgeCache::Dynamic(TimeCache::new(stamp, transform))
                };
                let edge = Edge {
                    parent: parent.into(),
                    cache,
                };
                self.edges.insert(child.into(), edge);
            }
        }
        self.frames.insert(parent.into());
        self.frames.insert(child.into());
        Ok(())
    }

    /// The transform that maps points expressed in `source_frame` into `target_frame` at `time`
    /// (tf2's `lookupTransform(target_frame, source_frame, time)`), composed through the frames'
    /// common ancestor. Dynamic edges are interpolated at `time` (translation linearly, rotation
    /// by slerp); [`Stamp::ZERO`] looks up at the chain's
    /// [`latest_common_time`](Self::latest_common_time). Equal frames give the identity even when
    /// the buffer does not know them, as in tf2.
    pub fn lookup_transform(
        &self,
        target_frame: &str,
        source_frame: &str,
        time: Stamp,
    ) -> Result<Isometry3<f64>> {
        let target = frame_id(target_frame, "target")?;
        let source = frame_id(source_frame, "source")?;
        if target == source {
            return Ok(Isometry3::identity());
        }
        let chain = self.chain(target, source)?;
        let time = if time.is_zero() {
            chain.latest_common_time().unwrap_or(Stamp::ZERO)
        } else {
            time
        };
        let to_common = |up: &[(&str, &Edge)]| -> Result<Isometry3<f64>> {
            let mut acc = Isometry3::identity();
            for &(child, edge) in up {
                let step = edge
                    .cache
                    .at(time)
                    .map_err(|miss| self.extrapolation(target, source, child, edge, time, miss))?;
                acc = step * acc;
            }
            Ok(acc)
        };
        let common_from_source = to_common(&chain.source_up)?;
        let common_from_target = to_common(&chain.target_up)?;
        Ok(common_from_target.inverse() * common_from_source)
    }

    /// Whether [`lookup_transform`](Self::lookup_transform) would succeed.
    pub fn can_transform(&self, target_frame: &str, source_frame: &str, time: Stamp) -> bool {
        self.lookup_transform(target_frame, source_frame, time)
            .is_ok()
    }

    /// The latest time at which every dynamic edge between the two frames has data (tf2's
    /// `getLatestCommonTime`): the time a [`Stamp::ZERO`] lookup uses. A lookup at a later time
    /// extrapolates into the future, so the node waits while an image's stamp is past it.
    /// `None` when the chain has no dynamic edge (all static, or equal frames): any time works.
    pub fn latest_common_time(
        &self,
        target_frame: &str,
        source_frame: &str,
    ) -> Result<Option<Stamp>> {
        let target = frame_id(target_frame, "target")?;
        let source = frame_id(source_frame, "source")?;
        if target == source {
            return Ok(None);
        }
        Ok(self.chain(target, source)?.latest_common_time())
    }

    /// `frame` and its ancestors up to its root, `frame` first. Terminates since
    /// [`set_transform`](Self::set_transform) refuses loops.
    fn ancestors<'a>(&'a self, frame: &'a str) -> Vec<&'a str> {
        let mut up = vec![frame];
        let mut at = frame;
        while let Some(edge) = self.edges.get(at) {
            at = &edge.parent;
            up.push(at);
        }
        up
    }

    /// The edges between two known, distinct frames through their closest common ancestor.
    fn chain<'a>(&'a self, target: &'a str, source: &'a str) -> Result<Chain<'a>> {
        for frame in [target, source] {
            if !self.frames.contains(frame) {
                return Err(TransformError::UnknownFrame {
                    frame: frame.into(),
                    known: self.frames(),
                });
            }
        }
        let above_source = self.ancestors(source);
        let above_target = self.ancestors(target);
        let common = above_target
            .iter()
            .enumerate()
            .find_map(|(j, frame)| above_source.iter().position(|f| f == frame).map(|i| (i, j)));
        let Some((i, j)) = common else {
            let root = |up: &[&str]| up.last().map_or_else(String::new, |&r| r.to_owned());
            return Err(TransformError::NotConnected {
                target_frame: target.into(),
                target_root: root(&above_target),
                source_frame: source.into(),
                source_root: root(&above_source),
            });
        };
        let edges = |up: &[&'a str]| -> Vec<(&'a str, &'a Edge)> {
            up.iter()
                .filter_map(|&child| self.edges.get_key_value(child))
                .map(|(child, edge)| (child.as_str(), edge))
                .collect()
        };
        Ok(Chain {
            source_up: edges(&above_source[..i]),
            target_up: edges(&above_target[..j]),
        })
    }

    /// `transform` with a renormalised rotation, or why it cannot be stored.
    fn checked(
        &self,
        parent: &str,
        child: &str,
        transform: Isometry3<f64>,
    ) -> Result<Isometry3<f64>> {
        let t = transform.translation.vector;
        let q = transform.rotation.into_inner();
        let translation = [t.x, t.y, t.z];
        let rotation = [q.i, q.j, q.k, q.w];
        if !translation.iter().chain(&rotation).all(|v| v.is_finite()) {
            return Err(TransformError::NonFinite {
                parent: parent.into(),
                child: child.into(),
                translation,
                rotation,
            });
        }
        let norm_squared = q.norm_squared();
        if (norm_squared - 1.0).abs() >= QUATERNION_NORM_TOLERANCE {
            return Err(TransformError::NotNormalized {
                parent: parent.into(),
                child: child.into(),
                norm: norm_squared.sqrt(),
                rotation,
            });
        }
        Ok(Isometry3::from_parts(
            transform.translation,
            UnitQuaternion::new_normalize(q),
        ))
    }

    /// The extrapolation error of a lookup whose edge `edge.parent -> child` has no data at
    /// `time`.
    fn extrapolation(
        &self,
        target: &str,
        source: &str,
        child: &str,
        edge: &Edge,
        time: Stamp,
        miss: TimeDirection,
    ) -> TransformError {
        let (oldest, newest) = match &edge.cache {
            EdgeCache::Dynamic(cache) => (cache.oldest(), cache.newest()),
            // A static edge has data at any time; unreachable, but a total answer reads better
            // than a panic.
            EdgeCache::Static(_) => (time, time),
        };
        let (target_frame, source_frame) = (target.to_owned(), source.to_owned());
        let (parent, child) = (edge.parent.clone(), child.to_owned());
        TransformError::Extrapolation {
            into: miss,
            target_frame,
            source_frame,
            parent,
            child,
            requested: time,
            oldest,
            newest,
        }
    }
}

#[cfg(test)]
mod tests {
    //! What `set_transform` keeps, replaces and refuses; the lookups are tested against
    //! closed-form answers in `transforms/tests.rs`.

    use nalgebra::Quaternion;

    use super::super::tests::{iso, s, set, set_static, yaw};
    use super::*;

    #[test]
    fn invalid_transforms_are_refused_with_the_reason() {
        let mut buf = TransformBuffer::default();
        let id = Isometry3::identity();
        let mut set_err = |parent: &str, child: &str, tf: Isometry3<f64>| {
            buf.set_transform(parent, child, s(1.0), tf, false)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(set_err("", "base_link", id), "the parent frame id is empty");
        assert_eq!(set_err("odom", "/", id), "the child frame id is empty");
        assert_eq!(
            set_err("odom", "/odom", id),
            "transform from `odom` to itself: the parent and child frame are the same"
        );
        let nan = iso([f64::NAN, 0.0, 0.0], yaw(0.0));
        let msg = set_err("odom", "base_link", nan);
        assert!(
            msg.starts_with(
                "transform `odom` -> `base_link` has a NaN or infinite value: translation \
                 [NaN, 0.0, 0.0]"
            ),
            "{msg}"
        );
        let inf_q = UnitQuaternion::new_unchecked(Quaternion::new(1.0, f64::INFINITY, 0.0, 0.0));
        let msg = set_err("odom", "base_link", iso([0.0; 3], inf_q));
        assert!(
            msg.contains("rotation (x, y, z, w) [inf, 0.0, 0.0, 1.0]"),
            "{msg}"
        );
        let long = UnitQuaternion::new_unchecked(Quaternion::new(2.0, 0.0, 0.0, 0.0));
        let msg = set_err("odom", "base_link", iso([0.0; 3], long));
        assert_eq!(
            msg,
            "transform `odom` -> `base_link` has a rotation quaternion of norm 2.000000, not a \
             unit quaternion (x, y, z, w) [0.0, 0.0, 0.0, 2.0]"
        );
        // Nothing was stored.
        assert!(buf.frames().is_empty());
        let err = buf.lookup_transform("", "odom", s(1.0)).unwrap_err();
        assert_eq!(err.to_string(), "the target frame id is empty");
    }

    #[test]
    fn quaternions_within_tolerance_are_renormalised() {
        let mut buf = TransformBuffer::default();
        let q = Quaternion::new(1.002, 0.0, 0.0, 0.0);
        let tf = iso([0.0; 3], UnitQuaternion::new_unchecked(q));
        buf.set_transform("a", "b", s(1.0), tf, true).unwrap();
        let got = buf.lookup_transform("a", "b", s(1.0)).unwrap();
        assert!((got.rotation.coords.norm() - 1.0).abs() < 1e-15);
    }

    #[test]
    fn a_loop_is_refused_and_the_tree_kept() {
        let mut buf = TransformBuffer::default();
        set_static(&mut buf, "map", "odom", Isometry3::identity());
        set_static(
            &mut buf,
            "odom",
            "base_link",
            Isometry3::translation(1.0, 0.0, 0.0),
        );
        let err = buf
            .set_transform("base_link", "map", s(1.0), Isometry3::identity(), true)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "transform `base_link` -> `map` would close a loop: `map` is already above `base_link` \
             (base_link -> odom -> map)"
        );
        assert_eq!(buf.parent("map"), None);
        assert!(buf.can_transform("map", "base_link", s(1.0)));
    }

    #[test]
    fn the_latest_parent_wins() {
        let mut buf = TransformBuffer::default();
        set(&mut buf, "a", "c", 1.0, Isometry3::identity());
        set(&mut buf, "a", "c", 2.0, Isometry3::identity());
        set(
            &mut buf,
            "b",
            "c",
            3.0,
            Isometry3::translation(0.0, 1.0, 0.0),
        );
        assert_eq!(buf.parent("c"), Some("b"));
        assert_eq!(buf.parent("/c"), Some("b"));
        // The samples under `a` are gone with the old edge.
        assert!(matches!(
            buf.lookup_transform("a", "c", s(1.5)).unwrap_err(),
            TransformError::NotConnected { .. }
        ));
        assert_eq!(buf.latest_common_time("b", "c").unwrap(), Some(s(3.0)));
    }

    #[test]
    fn static_replaces_static_and_the_kind_of_an_edge_can_change() {
        let mut buf = TransformBuffer::default();
        set_static(
            &mut buf,
            "base_link",
            "cam",
            Isometry3::translation(1.0, 0.0, 0.0),
        );
        set_static(
            &mut buf,
            "base_link",
            "cam",
            Isometry3::translation(2.0, 0.0, 0.0),
        );
        let tf = buf.lookup_transform("base_link", "cam", s(123.0)).unwrap();
        assert_eq!(tf.translation.x, 2.0);
        // Now dynamic: valid at its sample's stamp only.
        set(
            &mut buf,
            "base_link",
            "cam",
            5.0,
            Isometry3::translation(3.0, 0.0, 0.0),
        );
        assert_eq!(
            buf.latest_common_time("base_link", "cam").unwrap(),
            Some(s(5.0))
        );
        assert!(!buf.can_transform("base_link", "cam", s(123.0)));
        // Static again: any time.
        set_static(
            &mut buf,
            "base_link",
            "cam",
            Isometry3::translation(4.0, 0.0, 0.0),
        );
        let tf = buf.lookup_transform("base_link", "cam", s(123.0)).unwrap();
        assert_eq!(tf.translation.x, 4.0);
    }

    #[test]
    fn a_leading_slash_is_stripped() {
        let mut buf = TransformBuffer::default();
        set(
            &mut buf,
            "/odom",
            "/base_link",
            1.0,
            Isometry3::translation(1.0, 0.0, 0.0),
        );
        assert_eq!(buf.frames(), ["base_link", "odom"]);
        let tf = buf.lookup_transform("/odom", "base_link", s(1.0)).unwrap();
        assert_eq!(tf.translation.x, 1.0);
        assert_eq!(
            buf.latest_common_time("odom", "/base_link").unwrap(),
            Some(s(1.0))
        );
    }

    #[test]
    fn clear_forgets_dynamic_edges_and_keeps_static_ones() {
        let mut buf = TransformBuffer::default();
        set(&mut buf, "odom", "base_link", 1.0, Isometry3::identity());
        set_static(
            &mut buf,
            "base_link",
            "cam",
            Isometry3::translation(0.0, 0.0, 1.0),
        );
        buf.clear();
        assert_eq!(buf.frames(), ["base_link", "cam"]);
        assert!(buf.can_transform("base_link", "cam", s(99.0)));
        assert!(matches!(
            buf.lookup_transform("odom", "cam", s(1.0)).unwrap_err(),
            TransformError::UnknownFrame { .. }
        ));
    }
}
