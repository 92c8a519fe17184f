//! The parameters' validation, defaults and round trips.

use super::*;

fn map(entries: &[(&str, Value)]) -> BTreeMap<String, Value> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

#[test]
fn defaults_when_empty() {
    let p = NodeParams::from_map(&BTreeMap::new()).unwrap();
    assert_eq!(p.device, "cpu");
    assert_eq!(p.rate, defaults::RATE);
    assert_eq!(p.camera.transport, Transport::Raw);
    assert_eq!(p.owlvit.queries.len(), defaults::OWLVIT_QUERIES.len());
    assert!(p.clipseg.prompts.is_empty());
    assert!(!p.overlay);
    assert_eq!(p.service_timeout, Duration::from_secs(10));
    assert!(!p.depth.enabled);
    assert_eq!(p.depth.topic, defaults::DEPTH_TOPIC);
    assert_eq!(p.depth.slop, Duration::from_millis(50));
}

#[test]
fn to_map_round_trips_and_changes_are_validated() {
    let p = NodeParams::from_map(&map(&[("rate", Value::Integer(3))])).unwrap();
    let again = NodeParams::from_map(&p.to_map()).unwrap();
    assert_eq!(again.to_map(), p.to_map());
    assert_eq!(p.to_map().len(), DESCRIPTIONS.len());
    for (name, _, _) in DESCRIPTIONS {
        assert!(KNOWN.contains(name), "{name}");
    }
    let q = p
        .with_change("owlvit.score_threshold", Value::Double(0.3))
        .unwrap();
    assert_eq!(q.owlvit.score_threshold, 0.3);
    let e = p
        .with_change("owlvit.score_threshold", Value::Double(3.0))
        .unwrap_err();
    assert!(e.contains("[0, 1]"), "{e}");
    let e = p
        .with_change("device", Value::String("cuda".into()))
        .unwrap_err();
    assert!(e.contains("read-only"), "{e}");
    let e = p.with_change("nope", Value::Bool(true)).unwrap_err();
    assert!(e.contains("unknown"), "{e}");
}

#[test]
fn target_frame_and_tf_timeout() {
    let p = NodeParams::from_map(&BTreeMap::new()).unwrap();
    assert_eq!(p.tf.target_frame, "");
    assert_eq!(p.tf.timeout, Duration::from_millis(100));
    let q = p
        .with_change("target_frame", Value::String(" base_link ".into()))
        .unwrap();
    assert_eq!(q.tf.target_frame, "base_link");
    let e = p
        .with_change("target_frame", Value::String("base link".into()))
        .unwrap_err();
    assert!(e.contains("whitespace"), "{e}");
    let q = p.with_change("tf.timeout", Value::Double(0.0)).unwrap();
    assert_eq!(q.tf.timeout, Duration::ZERO);
    let e = p
        .with_change("tf.timeout", Value::Double(-1.0))
        .unwrap_err();
    assert!(e.contains("[0, 10]"), "{e}");
}

#[test]
fn depth_ranges_are_checked() {
    let bad = map(&[
        ("depth.min_range", Value::Double(2.0)),
        ("depth.max_range", Value::Double(1.0)),
    ]);
    let e = NodeParams::from_map(&bad).unwrap_err();
    assert_eq!(e.name, "depth.max_range");
    let e = NodeParams::from_map(&map(&[("depth.slop", Value::Double(-1.0))])).unwrap_err();
    assert_eq!(e.name, "depth.slop");
    let ok = map(&[
        ("depth.enabled", Value::Bool(true)),
        ("depth.max_range", Value::Integer(4)),
    ]);
    let p = NodeParams::from_map(&ok).unwrap();
    assert!(p.depth.enabled && p.depth.sampling.max_depth == 4.0);
}

#[test]
fn reads_values_and_accepts_integers_for_floats() {
    let p = NodeParams::from_map(&map(&[
        ("rate", Value::Integer(2)),
        ("owlvit.score_threshold", Value::Double(0.25)),
        (
            "owlvit.queries",
            Value::StringArray(vec!["a cat".into(), " a dog ".into()]),
        ),
        ("clipseg.prompts", Value::String("a cup, , a plate".into())),
        ("camera.transport", Value::String("both".into())),
    ]))
    .unwrap();
    assert_eq!(p.rate, 2.0);
    assert_eq!(p.owlvit.score_threshold, 0.25);
    assert_eq!(p.owlvit.queries, vec!["a cat", "a dog"]);
    assert_eq!(p.clipseg.prompts, vec!["a cup", "a plate"]);
    assert!(p.camera.transport.raw() && p.camera.transport.compressed());
}

#[test]
fn empty_list_is_explicitly_empty() {
    let p = NodeParams::from_map(&map(&[("owlvit.queries", Value::NotSet)])).unwrap();
    assert!(p.owlvit.queries.is_empty());
}

#[test]
fn errors_name_the_parameter() {
    let cases = [
        ("owlvit.score_threshold", Value::Double(1.5)),
        ("owlvit.score_threshold", Value::String("high".into())),
        ("rate", Value::Double(-1.0)),
        ("camera.transport", Value::String("theora".into())),
        ("camera.depth", Value::Integer(0)),
        ("vilt.top_k", Value::Integer(0)),
        ("services.timeout", Value::Double(0.0)),
        ("owlvit.nms_iou", Value::Double(0.0)),
        ("owlvit.model", Value::String("  ".into())),
        ("owlvit.enabled", Value::Integer(1)),
        (
            "owlvit.queries",
            Value::StringArray(vec!["a cup".into(), "".into()]),
        ),
        ("clipseg.prompts", Value::OtherArray("integer array")),
    ];
    for (name, value) in cases {
        let err = NodeParams::from_map(&map(&[(name, value.clone())]))
            .expect_err(&format!("{name} = {value:?} accepted"));
        assert_eq!(err.name, name);
        assert!(err.to_string().contains(name), "{err}");
    }
}

#[test]
fn reports_unknown_names() {
    let m = map(&[
        ("owlvit.score_treshold", Value::Double(0.2)),
        ("rate", Value::Double(1.0)),
    ]);
    assert_eq!(NodeParams::unknown(&m), vec!["owlvit.score_treshold"]);
}

#[test]
fn splits_comma_separated() {
    assert_eq!(split_texts(" a, b ,,c "), vec!["a", "b", "c"]);
    assert!(split_texts(" , ").is_empty());
}
