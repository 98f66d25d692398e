//! The diffusion planner's scene arrays on generated scenarios, and the driving demo data set
//! written and read back.

use rudder_policy::driving::dataset::{load, read_meta};
use rudder_policy::driving::scene::{resample, LANE_FEATURES, NEIGHBOUR_FEATURES, STATIC_FEATURES};
use rudder_policy::driving::{
    build_scene, future_target, DrivingDemoWriter, DrivingSample, EgoFrame, SceneConfig,
    SceneHistory,
};
use rudder_robot::driving::{EgoState, P2};
use rudder_sim::driving::generator;
use rudder_sim::driving::scenario::{Scenario, HISTORY_STEPS};

fn scene_at(s: &Scenario, cfg: &SceneConfig, k: usize) -> rudder_policy::driving::Scene {
    let i = HISTORY_STEPS + k;
    let mut h = SceneHistory::new(cfg.history);
    for j in i + 1 - cfg.history..=i {
        h.push(&s.objects_at_sample(j));
    }
    let e = s.expert[i];
    let ego = EgoState::from_pose(0.0, e.x, e.y, e.heading, e.speed, e.acceleration);
    build_scene(cfg, &ego, &h, s.lights_at(k), s.map.as_ref(), &s.route)
}

#[test]
fn lead_vehicle_lanes_and_future_in_the_ego_frame() {
    let cfg = SceneConfig::default();
    let s = generator::generate(7, 0);
    assert_eq!(s.scenario_type, "following_lane_with_lead");
    let scene = scene_at(&s, &cfg, 30);
    // The nearest agent is the lead, ahead in our lane and aligned with us: now (the last
    // history frame) and 2 s ago (the first), when it was further back along the same lane.
    let now = &scene.neighbours[(cfg.history - 1) * NEIGHBOUR_FEATURES..][..NEIGHBOUR_FEATURES];
    let then = &scene.neighbours[..NEIGHBOUR_FEATURES];
    assert!(now[0] > 3.0 && now[1].abs() < 1.0, "lead now {now:?}");
    assert!((now[2] - 1.0).abs() < 1e-3 && now[3].abs() < 0.05);
    assert_eq!(&now[8..], &[1.0, 0.0, 0.0], "a vehicle");
    assert!(then[0] < now[0] && then[0] != 0.0, "history {then:?}");
    assert!(now[4] > 0.0, "moving forward: vx {}", now[4]);
    // Our lane is among the nearest lanes: some lane has a point within 0.5 m beside us.
    let lanes = cfg.lanes;
    let near_here = (0..lanes * cfg.lane_points).any(|p| {
        let r = &scene.lanes[p * LANE_FEATURES..][..LANE_FEATURES];
        r[0].abs() < 5.0 && r[1].abs() < 0.5 && r[2] > 0.0
    });
    assert!(near_here);
    assert!(scene
        .lane_limits
        .chunks(2)
        .any(|l| l[1] == 1.0 && l[0] > 0.0));
    assert!(
        scene.route_lanes.iter().any(|v| *v != 0.0),
        "route lanes filled"
    );
    // Boundaries: left offsets point left (+y), right ones right.
    let r0 = &scene.route_lanes[..LANE_FEATURES];
    assert!(r0[5] > 1.0 && r0[7] < -1.0, "{r0:?}");
    // No static objects in this type.
    assert!(scene.static_objects.iter().all(|v| *v == 0.0));
    // The logged future: forward along x at the logged speed.
    let i = HISTORY_STEPS + 30;
    let (fut, mask) = future_target(&cfg, &s.expert[i], &s.expert[i + 1..]);
    let v = s.expert[i].speed as f32;
    assert!(
        (fut[0] - v * 0.1).abs() < 0.05 * v.max(1.0),
        "{} vs {}",
        fut[0],
        v * 0.1
    );
    assert!(fut[1].abs() < 0.05 && (fut[2] - 1.0).abs() < 1e-3);
    assert_eq!(mask.iter().filter(|m| **m == 1.0).count(), cfg.future);
    // Near the end the log runs out: the mask says so.
    let late = HISTORY_STEPS + 140;
    let (_, mask) = future_target(&cfg, &s.expert[late], &s.expert[late + 1..]);
    assert_eq!(mask.iter().filter(|m| **m == 1.0).count(), 10);
}

#[test]
fn static_objects_and_frames() {
    let cfg = SceneConfig::default();
    let s = (0..12)
        .map(|i| generator::generate(7, i))
        .find(|s| s.scenario_type == "near_trafficcone_on_driveable")
        .unwrap();
    let scene = scene_at(&s, &cfg, 0);
    let cone = &scene.static_objects[..STATIC_FEATURES];
    assert_eq!(cone[6], 1.0, "a traffic cone first: {cone:?}");
    assert!(cone[4] > 0.0 && cone[5] > 0.0, "its size");
    // The frame maps back.
    let f = EgoFrame::new(P2::new(3.0, -2.0), 0.7);
    let (x, y) = f.point(P2::new(10.0, 5.0));
    let p = f.to_map(x, y);
    assert!((p.x - 10.0).abs() < 1e-12 && (p.y - 5.0).abs() < 1e-12);
    // Resampling keeps the ends and spaces points evenly.
    let r = resample(
        &[P2::new(0.0, 0.0), P2::new(10.0, 0.0), P2::new(10.0, 10.0)],
        5,
    );
    assert_eq!(r.len(), 5);
    assert!((r[2].x - 10.0).abs() < 1e-12 && r[2].y.abs() < 1e-12);
    assert!((r[4].y - 10.0).abs() < 1e-12);
}

#[test]
fn data_set_round_trip_and_bad_input() {
    let cfg = SceneConfig {
        lanes: 8,
        route_lanes: 4,
        neighbours: 6,
        ..SceneConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("d");
    let mut w = DrivingDemoWriter::create(&out, cfg, "test").unwrap();
    let s = generator::generate(1, 0);
    let mut kept = Vec::new();
    for k in [0, 20, 40] {
        let scene = scene_at(&s, &cfg, k);
        let i = HISTORY_STEPS + k;
        let (future, future_mask) = future_target(&cfg, &s.expert[i], &s.expert[i + 1..]);
        kept.push((scene.clone(), future.clone()));
        w.push(DrivingSample {
            scene,
            future,
            future_mask,
            scenario_type: s.scenario_type.clone(),
        })
        .unwrap();
    }
    // A sample of another config is refused, naming the array.
    let mut bad = kept[0].0.clone();
    bad.lanes.pop();
    let e = w
        .push(DrivingSample {
            scene: bad,
            future: kept[0].1.clone(),
            future_mask: vec![1.0; cfg.future],
            scenario_type: "x".into(),
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("`lanes`"), "{e}");
    let meta = w.finish().unwrap();
    assert_eq!(meta.samples, 3);
    let (m2, t) = load(&out).unwrap();
    assert_eq!(m2, meta);
    assert_eq!(t["lanes"].dims(), &[3, 8, cfg.lane_points, LANE_FEATURES]);
    let lanes: Vec<f32> = t["lanes"]
        .get(1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(lanes, kept[1].0.lanes);
    let fut: Vec<f32> = t["future"]
        .get(2)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(fut, kept[2].1);
    // The folder now holds a data set: a second writer is refused.
    assert!(DrivingDemoWriter::create(&out, cfg, "again").is_err());
    // Another format version is an error that says which.
    let meta_path = out.join("meta.json");
    let text = std::fs::read_to_string(&meta_path).unwrap();
    std::fs::write(
        &meta_path,
        text.replace("\"format_version\": 1", "\"format_version\": 9"),
    )
    .unwrap();
    let e = read_meta(&out).unwrap_err().to_string();
    assert!(e.contains("format_version 9"), "{e}");
}
