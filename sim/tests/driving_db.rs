//! nuPlan-schema SQLite logs: a DB built here from a generated scenario loads back to the same
//! scenario, scores like it, and every kind of bad input is a clear error.

use rudder_sim::driving::campaign::{run_one, Mode, PlannerKind};
use rudder_sim::driving::nuplan_db::{load_scenarios, map_path_for, write_db};
use rudder_sim::driving::{generator, run_campaign, DrivingError};
use rusqlite::Connection;
use std::path::{Path, PathBuf};

fn build(dir: &Path, index: usize) -> PathBuf {
    let db = dir.join("log.db");
    let s = generator::generate(3, index);
    write_db(&db, &s).expect("writes");
    db
}

#[test]
fn round_trip_matches_the_generated_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let s = generator::generate(3, 4); // unprotected cross turn: agents, map, route
    let db = dir.path().join("log.db");
    write_db(&db, &s).unwrap();
    let loaded = load_scenarios(&db, None).unwrap();
    assert_eq!(loaded.len(), 1);
    let l = &loaded[0];
    assert_eq!(l.scenario_type, "starting_unprotected_cross_turn");
    assert_eq!(l.expert.len(), s.expert.len());
    for (a, b) in l.expert.iter().zip(&s.expert) {
        assert!((a.x - b.x).abs() < 1e-9 && (a.y - b.y).abs() < 1e-9);
        assert!((a.heading - b.heading).abs() < 1e-9 && (a.speed - b.speed).abs() < 1e-9);
    }
    assert_eq!(l.tracks.len(), s.tracks.len());
    let (st, lt) = (&s.tracks[0], &l.tracks[0]);
    assert_eq!(lt.category, st.category);
    let (a, b) = (st.at(50).unwrap(), lt.at(50).unwrap());
    assert!((a.x - b.x).abs() < 1e-9 && (a.vx - b.vx).abs() < 1e-9);
    // The loader derives the route from the lanes the expert drove: a prefix of the generator's.
    assert!(
        !l.route.is_empty() && s.route.starts_with(&l.route),
        "{:?} vs {:?}",
        l.route,
        s.route
    );
    let (ms, _) = run_one(&s, PlannerKind::LogReplay, Mode::NonReactive).unwrap();
    let (ml, _) = run_one(l, PlannerKind::LogReplay, Mode::NonReactive).unwrap();
    assert!(
        (ms.score - ml.score).abs() < 1e-6,
        "{} vs {}",
        ms.score,
        ml.score
    );
    // And through the campaign API.
    let r = run_campaign(PlannerKind::Idm, 0, Mode::Reactive, 0, Some(&db)).unwrap();
    assert_eq!(r.scenarios, 1);
    assert!(r.per_type.contains_key("starting_unprotected_cross_turn"));
}

/// The timestamp of the frame a scenario tag points at (µs).
fn tag_timestamp(c: &Connection) -> i64 {
    c.query_row(
        "SELECT p.timestamp FROM scenario_tag t JOIN lidar_pc p ON p.token = t.lidar_pc_token",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

/// Moves the scenario tag to the frame at `ts` (µs).
fn move_tag(c: &Connection, ts: i64) {
    c.execute(
        "UPDATE scenario_tag SET lidar_pc_token = (SELECT token FROM lidar_pc WHERE timestamp = ?1)",
        [ts],
    )
    .unwrap();
}

#[test]
fn scenario_starts_3_s_before_its_tag() {
    // nuplan-devkit extracts (duration 15 s, offset -3 s) around every tag: the scenario's
    // first frame is the first at or after tag - 3 s.
    let dir = tempfile::tempdir().unwrap();
    let g = generator::generate(3, 5); // a turn: the pose changes every frame
    let db = dir.path().join("log.db");
    write_db(&db, &g).unwrap();
    let c = Connection::open(&db).unwrap();
    // The writer puts the tag 3 s after the initial frame (frames are 50 ms apart and the
    // initial frame follows 2 s of history), so the round trip starts where the generator did.
    assert_eq!(tag_timestamp(&c), (2_000_000 + 3_000_000) as i64);
    let s = &load_scenarios(&db, None).unwrap()[0];
    assert_eq!(s.ego_initial(), g.ego_initial());
    // A tag 5 s after the initial frame: the scenario starts 2 s in, i.e. at step 20 of the
    // generated one, and lasts to the log's end (15 s - 2 s left).
    move_tag(&c, 7_000_000);
    let s = &load_scenarios(&db, None).unwrap()[0];
    let e = s.ego_initial();
    let want = g.expert_at(20);
    assert!(
        want.x.hypot(want.y) > 0.0
            && (want.x - g.ego_initial().x).hypot(want.y - g.ego_initial().y) > 1.0
    );
    assert!(
        (e.x - want.x).abs() < 1e-9 && (e.y - want.y).abs() < 1e-9,
        "{e:?} vs {want:?}"
    );
    assert_eq!(s.num_steps(), 151 - 20);
    // Its history is the 2 s before that: the generated scenario's steps 0..20.
    assert!((s.expert[0].x - g.expert_at(0).x).abs() < 1e-9);
    // A tag 1 s into the log: tag - 3 s is before the log's first frame, so the scenario
    // starts at the first frame, with no history to repeat but that frame.
    move_tag(&c, 1_000_000);
    let s = &load_scenarios(&db, None).unwrap()[0];
    let (e, first) = (s.ego_initial(), g.expert[0]);
    assert!((e.x - first.x).abs() < 1e-9 && (e.y - first.y).abs() < 1e-9);
    assert!((s.expert[0].x - first.x).abs() < 1e-9);
}

#[test]
fn a_scenario_too_short_for_the_tag_offset_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = generator::generate(3, 0);
    g.expert.truncate(20 + 25); // 2.4 s after the start
    let err = write_db(&dir.path().join("short.db"), &g)
        .unwrap_err()
        .to_string();
    assert!(err.contains("3 s after the start"), "{err}");
}

#[test]
fn twenty_hz_is_subsampled() {
    let dir = tempfile::tempdir().unwrap();
    let db = build(dir.path(), 0);
    let c = Connection::open(&db).unwrap();
    let n: i64 = c
        .query_row("SELECT COUNT(*) FROM lidar_pc", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2 * 171 - 1);
    let blob: Vec<u8> = c
        .query_row("SELECT token FROM lidar_pc LIMIT 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(blob.len(), 16);
    let s = &load_scenarios(&db, None).unwrap()[0];
    assert_eq!(s.num_steps(), 151);
}

#[test]
fn corrupt_and_truncated_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let db = build(dir.path(), 1);
    let bytes = std::fs::read(&db).unwrap();
    let bad = dir.path().join("bad.db");
    std::fs::copy(map_path_for(&db), map_path_for(&bad)).unwrap();
    // Garbage where the header should be.
    let mut g = bytes.clone();
    g[..100].fill(0x5a);
    std::fs::write(&bad, &g).unwrap();
    let e = load_scenarios(&bad, None).unwrap_err();
    assert!(matches!(e, DrivingError::Db { .. }), "{e}");
    assert!(e.to_string().contains("bad.db"), "{e}");
    // Truncated to a third.
    std::fs::write(&bad, &bytes[..bytes.len() / 3]).unwrap();
    let e = load_scenarios(&bad, None).unwrap_err();
    assert!(matches!(e, DrivingError::Db { .. }), "{e}");
    // Missing file.
    let e = load_scenarios(&dir.path().join("nope.db"), None).unwrap_err();
    assert!(
        e.to_string().contains("no such file") || matches!(e, DrivingError::Map(_)),
        "{e}"
    );
}

#[test]
fn missing_table_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let db = build(dir.path(), 2);
    Connection::open(&db)
        .unwrap()
        .execute_batch("DROP TABLE traffic_light_status")
        .unwrap();
    let e = load_scenarios(&db, None).unwrap_err();
    match e {
        DrivingError::MissingTable { table, .. } => assert_eq!(table, "traffic_light_status"),
        other => panic!("{other}"),
    }
}

#[test]
fn dangling_tokens_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let db = build(dir.path(), 0);
    let c = Connection::open(&db).unwrap();
    c.execute_batch("DELETE FROM track WHERE rowid = 1")
        .unwrap();
    let e = load_scenarios(&db, None).unwrap_err();
    match &e {
        DrivingError::DanglingToken {
            table,
            column,
            target,
            ..
        } => {
            assert_eq!(
                (table.as_str(), column.as_str(), target.as_str()),
                ("lidar_box", "track_token", "track")
            )
        }
        other => panic!("{other}"),
    }
    let db2 = dir.path().join("b").join("log.db");
    std::fs::create_dir_all(db2.parent().unwrap()).unwrap();
    write_db(&db2, &generator::generate(3, 0)).unwrap();
    Connection::open(&db2)
        .unwrap()
        .execute_batch("DELETE FROM ego_pose WHERE rowid = 5")
        .unwrap();
    let e = load_scenarios(&db2, None).unwrap_err();
    assert!(
        matches!(&e, DrivingError::DanglingToken { column, .. } if column == "ego_pose_token"),
        "{e}"
    );
    // A token that is not 16 bytes.
    let db3 = dir.path().join("c").join("log.db");
    std::fs::create_dir_all(db3.parent().unwrap()).unwrap();
    write_db(&db3, &generator::generate(3, 0)).unwrap();
    Connection::open(&db3)
        .unwrap()
        .execute_batch("UPDATE category SET token = x'0102'")
        .unwrap();
    let e = load_scenarios(&db3, None).unwrap_err();
    assert!(e.to_string().contains("16"), "{e}");
}

#[test]
fn map_not_covering_the_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let db = build(dir.path(), 0);
    // Move the logged ego 5 km away from everything the map holds.
    Connection::open(&db)
        .unwrap()
        .execute_batch("UPDATE ego_pose SET x = x + 5000")
        .unwrap();
    let e = load_scenarios(&db, None).unwrap_err();
    assert!(matches!(e, DrivingError::MapCoverage { .. }), "{e}");
    assert!(e.to_string().contains("straight"), "{e}");
    // A map file that is not JSON.
    std::fs::write(map_path_for(&db), "{ not json").unwrap();
    assert!(matches!(
        load_scenarios(&db, None).unwrap_err(),
        DrivingError::Map(_)
    ));
}

#[test]
fn the_run_records_the_iterations_the_devkit_plans_at() {
    // N samples in a scenario: the devkit plans and records iterations 0 .. N-2 only.
    use rudder_sim::driving::simulation::simulate;
    let s = generator::generate(3, 0);
    let n = s.num_steps();
    let mut p = PlannerKind::LogReplay.build();
    let h = simulate(&s, p.as_mut(), Mode::NonReactive).unwrap();
    assert_eq!(n, 151);
    assert_eq!(h.ego.len(), n - 1);
    assert_eq!(h.agents.len(), n - 1);
}
