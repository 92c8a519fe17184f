//! `cameras`: the cameras one node serves with one copy of each model, and each named camera's
//! own vocabulary (`<name>.queries`, `<name>.prompts`), as Nav2 names its plugins: a list of
//! names, then a section per name.

use std::collections::BTreeMap;

use super::reader::Reader;
use super::{invalid, ParamError, Value};

/// Most cameras one node serves.
pub const MAX_CAMERAS: usize = 16;

/// Names a camera may not take: the parameter groups (a camera's section would be read as
/// theirs) and the node's own topic folders (`~/<name>/...` would collide with them).
const RESERVED: &[&str] = &[
    "camera",
    "cameras",
    "owlvit",
    "clipseg",
    "vilt",
    "clip",
    "blip",
    "caption",
    "depth",
    "tf",
    "tracking",
    "pointcloud",
    "grasp",
    "objects",
    "overlay",
    "services",
    "diagnostics",
    "qos_overrides",
    "lifecycle",
];

/// One camera of the node.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraSpec {
    /// Empty for the one unnamed camera of a node without `cameras` (today's topic names).
    pub name: String,
    /// Its own detection vocabulary (`<name>.queries`); `None`: the shared `owlvit.queries`.
    pub queries: Option<Vec<String>>,
    /// Its own segmentation prompts (`<name>.prompts`); `None`: the shared `clipseg.prompts`.
    pub prompts: Option<Vec<String>>,
}

impl CameraSpec {
    /// The unnamed camera of a single-camera node.
    pub fn unnamed() -> Self {
        Self {
            name: String::new(),
            queries: None,
            prompts: None,
        }
    }

    /// An input topic of this camera: `base` itself for the unnamed camera, else
    /// `<name>/<base>` (relative topics; absolute ones are left alone).
    pub fn input(&self, base: &str) -> String {
        if self.name.is_empty() || base.starts_with('/') {
            base.to_string()
        } else {
            format!("{}/{}", self.name, base)
        }
    }

    /// An output topic of this camera under the node: `~/<base>` for the unnamed camera, else
    /// `~/<name>/<base>`.
    pub fn output(&self, base: &str) -> String {
        if self.name.is_empty() {
            format!("~/{base}")
        } else {
            format!("~/{}/{base}", self.name)
        }
    }

    /// The camera as messages name it.
    pub fn label(&self) -> String {
        if self.name.is_empty() {
            "the camera".into()
        } else {
            format!("camera `{}`", self.name)
        }
    }
}

/// The `cameras` list and each camera's section; no list (or an empty one): one unnamed camera.
pub(super) fn read(r: &Reader<'_>) -> Result<Vec<CameraSpec>, ParamError> {
    let names = listed(r.map)?;
    if names.is_empty() {
        return Ok(vec![CameraSpec::unnamed()]);
    }
    if names.len() > MAX_CAMERAS {
        return Err(invalid(
            "cameras",
            format!("at most {MAX_CAMERAS} cameras, got {}", names.len()),
        ));
    }
    let mut cameras: Vec<CameraSpec> = Vec::with_capacity(names.len());
    for name in names {
        check_name(&name)?;
        if cameras.iter().any(|c| c.name == name) {
            return Err(invalid("cameras", format!("`{name}` is listed twice")));
        }
        let section = |key: &str, what: &str| -> Result<Option<Vec<String>>, ParamError> {
            let full = format!("{name}.{key}");
            match r.map.get(&full) {
                None => Ok(None),
                Some(_) => r.texts(&full, &[], what).map(Some),
            }
        };
        cameras.push(CameraSpec {
            queries: section("queries", "detection query")?,
            prompts: section("prompts", "segmentation prompt")?,
            name,
        });
    }
    Ok(cameras)
}

/// The names `cameras` lists: a string array, or one comma-separated string (none: empty).
fn listed(map: &BTreeMap<String, Value>) -> Result<Vec<String>, ParamError> {
    match map.get("cameras") {
        None | Some(Value::NotSet) => Ok(Vec::new()),
        Some(Value::StringArray(a)) => Ok(a.iter().map(|s| s.trim().to_string()).collect()),
        Some(Value::String(s)) => Ok(super::split_texts(s)),
        Some(v) => Err(invalid(
            "cameras",
            format!("expected a string array, got {}", v.type_name()),
        )),
    }
}

/// A camera name is one ROS name token (it becomes a topic folder and a parameter section).
fn check_name(name: &str) -> Result<(), ParamError> {
    let mut chars = name.chars();
    let token = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !token {
        return Err(invalid(
            "cameras",
            format!(
                "`{name}` is not a valid camera name (a letter, then letters, digits or `_`: it \
                 becomes a topic folder)"
            ),
        ));
    }
    if RESERVED.contains(&name) {
        return Err(invalid(
            "cameras",
            format!("`{name}` is reserved (a parameter group or a topic of the node)"),
        ));
    }
    Ok(())
}

/// The cameras' parameters as a flat map (the inverse of [`read`]).
pub(super) fn to_map(cameras: &[CameraSpec], map: &mut BTreeMap<String, Value>) {
    let named: Vec<String> = cameras
        .iter()
        .filter(|c| !c.name.is_empty())
        .map(|c| c.name.clone())
        .collect();
    if named.is_empty() {
        return;
    }
    map.insert("cameras".into(), Value::StringArray(named));
    for c in cameras {
        if let Some(q) = &c.queries {
            map.insert(format!("{}.queries", c.name), Value::StringArray(q.clone()));
        }
        if let Some(p) = &c.prompts {
            map.insert(format!("{}.prompts", c.name), Value::StringArray(p.clone()));
        }
    }
}

/// Whether `key` is a camera section key of `map`'s `cameras` list.
pub(super) fn is_section_key(map: &BTreeMap<String, Value>, key: &str) -> bool {
    let Some((name, field)) = key.split_once('.') else {
        return false;
    };
    matches!(field, "queries" | "prompts")
        && listed(map).is_ok_and(|names| names.iter().any(|n| n == name))
}

/// What `ros2 param describe` shows for the camera parameters.
pub fn description(name: &str) -> Option<&'static str> {
    if name == "cameras" {
        return Some(
            "Names of the cameras this node serves with one copy of each model; each reads \
             <name>/<camera.topic> (and its depth) and publishes under ~/<name>/. Empty: one \
             camera, today's topics.",
        );
    }
    match name.rsplit_once('.')?.1 {
        "queries" => Some("This camera's own detection vocabulary (else owlvit.queries)."),
        "prompts" => Some("This camera's own segmentation prompts (else clipseg.prompts)."),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::NodeParams;

    fn map(entries: &[(&str, Value)]) -> BTreeMap<String, Value> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn names(list: &[&str]) -> Value {
        Value::StringArray(list.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn no_list_is_one_unnamed_camera_on_the_old_topics() {
        let p = NodeParams::from_map(&BTreeMap::new()).unwrap();
        assert_eq!(p.cameras, vec![CameraSpec::unnamed()]);
        let c = &p.cameras[0];
        assert_eq!(c.input("image"), "image");
        assert_eq!(c.output("detections"), "~/detections");
        assert!(!p.to_map().contains_key("cameras"));
        let p = NodeParams::from_map(&map(&[("cameras", Value::NotSet)])).unwrap();
        assert_eq!(p.cameras.len(), 1);
    }

    #[test]
    fn named_cameras_with_their_own_vocabularies_round_trip() {
        let m = map(&[
            ("cameras", names(&["head", "wrist"])),
            ("wrist.queries", names(&["a red block"])),
            ("wrist.prompts", Value::String("a bowl, a cup".into())),
        ]);
        let p = NodeParams::from_map(&m).unwrap();
        assert_eq!(p.cameras.len(), 2);
        assert_eq!(p.cameras[0].queries, None);
        assert_eq!(
            p.cameras[1].queries.as_deref(),
            Some(&["a red block".to_string()][..])
        );
        assert_eq!(p.cameras[1].prompts.as_ref().map(Vec::len), Some(2));
        assert_eq!(p.cameras[1].input("image"), "wrist/image");
        assert_eq!(p.cameras[1].input("/abs/image"), "/abs/image");
        assert_eq!(p.cameras[1].output("detections"), "~/wrist/detections");
        assert!(NodeParams::unknown(&m).is_empty());
        let again = NodeParams::from_map(&p.to_map()).unwrap();
        assert_eq!(again.cameras, p.cameras);
        // a section of a camera that is not listed is a typo
        let m = map(&[
            ("cameras", names(&["head"])),
            ("wrist.queries", names(&["x"])),
        ]);
        assert_eq!(NodeParams::unknown(&m), vec!["wrist.queries".to_string()]);
    }

    #[test]
    fn bad_lists_name_the_problem() {
        let err = |list: &[&str]| {
            NodeParams::from_map(&map(&[("cameras", names(list))]))
                .unwrap_err()
                .to_string()
        };
        assert!(err(&["a", "a"]).contains("`a` is listed twice"));
        assert!(err(&["depth"]).contains("`depth` is reserved"));
        assert!(err(&["2nd"]).contains("not a valid camera name"));
        assert!(err(&["a/b"]).contains("not a valid camera name"));
        let many: Vec<String> = (0..=MAX_CAMERAS).map(|i| format!("c{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(err(&many).contains("at most 16 cameras"));
        let e = NodeParams::from_map(&map(&[
            ("cameras", names(&["head"])),
            ("head.queries", names(&[" "])),
        ]))
        .unwrap_err();
        assert_eq!(e.name, "head.queries");
    }

    #[test]
    fn cameras_are_read_only_at_run_time() {
        let p = NodeParams::from_map(&map(&[
            ("cameras", names(&["head"])),
            ("head.queries", names(&["a cup"])),
        ]))
        .unwrap();
        for name in ["cameras", "head.queries"] {
            let e = p.with_change(name, names(&["x"])).unwrap_err();
            assert!(e.contains("read-only"), "{e}");
        }
    }
}
