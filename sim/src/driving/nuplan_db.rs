//! nuPlan-schema SQLite logs: reads scenarios (one per `scenario_tag` row) from the tables
//! log, scene, lidar_pc, ego_pose, lidar_box, track, category, traffic_light_status and
//! scenario_tag (16-byte blob tokens, 20 Hz, subsampled to 0.1 s), with a map file of ours
//! (`<db stem>.map.json`) beside the DB since nuPlan keeps maps outside it. Also writes such a
//! DB from scenarios, which is how the tests build one.

use super::geometry::{wrap_angle, P2};
use super::map::{LaneId, LightStatus, Map};
use super::scenario::{
    AgentState, Category, EgoPose, Scenario, Track, HISTORY_STEPS, HORIZON_STEPS,
};
use super::vehicle::REAR_TO_CENTER;
use super::DrivingError;
use rusqlite::{params, Connection, OpenFlags};
use std::collections::HashMap;
use std::f64::consts::FRAC_PI_2;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const REQUIRED_TABLES: [&str; 9] = [
    "log",
    "scene",
    "lidar_pc",
    "ego_pose",
    "lidar_box",
    "track",
    "category",
    "traffic_light_status",
    "scenario_tag",
];

/// The DB runs at 20 Hz; scenarios at 10 Hz.
const SUBSAMPLE: usize = 2;
/// Share of expert samples that must lie on the map.
const MIN_COVERAGE: f64 = 0.9;
/// A tag anchors its scenario 3 s after the scenario's first frame: nuplan-devkit's scenario
/// mapping gives every type (duration 15 s, offset -3 s), and its extraction takes the frames
/// with timestamp >= tag - 3 s. So a turning or stopping scenario starts before the manoeuvre.
pub const TAG_OFFSET_US: i64 = 3_000_000;
/// The scenario mapping's duration.
pub const SCENARIO_DURATION_US: i64 = 15_000_000;

type Token = [u8; 16];

fn hex(t: &[u8]) -> String {
    t.iter().map(|b| format!("{b:02x}")).collect()
}

/// The map file expected beside `db`: `dir/<stem>.map.json`.
pub fn map_path_for(db: &Path) -> PathBuf {
    let stem = db
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    db.with_file_name(format!("{stem}.map.json"))
}

struct Ctx<'a> {
    path: &'a str,
}

impl Ctx<'_> {
    fn db(&self, reason: impl std::fmt::Display) -> DrivingError {
        DrivingError::Db {
            path: self.path.to_string(),
            reason: reason.to_string(),
        }
    }
    fn token(&self, table: &str, column: &str, v: Vec<u8>) -> Result<Token, DrivingError> {
        v.as_slice().try_into().map_err(|_| {
            self.db(format!(
                "{table}.{column}: token is {} bytes, expected 16",
                v.len()
            ))
        })
    }
    fn dangling(&self, table: &str, column: &str, t: &[u8], target: &str) -> DrivingError {
        DrivingError::DanglingToken {
            path: self.path.to_string(),
            table: table.into(),
            column: column.into(),
            token: hex(t),
            target: target.into(),
        }
    }
}

struct Pc {
    token: Token,
    ego: Token,
    timestamp: i64,
}

struct BoxRow {
    track: Token,
    x: f64,
    y: f64,
    yaw: f64,
    vx: f64,
    vy: f64,
}

/// Loads every tagged scenario. `map` defaults to [`map_path_for`].
#[allow(clippy::type_complexity)]
pub fn load_scenarios(db: &Path, map: Option<&Path>) -> Result<Vec<Scenario>, DrivingError> {
    let pstr = db.display().to_string();
    let cx = Ctx { path: &pstr };
    if !db.is_file() {
        return Err(cx.db("no such file"));
    }
    let map_file = map
        .map(Path::to_path_buf)
        .unwrap_or_else(|| map_path_for(db));
    let map_text = std::fs::read_to_string(&map_file)
        .map_err(|e| DrivingError::Map(format!("{}: {e}", map_file.display())))?;
    let map = Arc::new(
        Map::from_json(&map_text)
            .map_err(|e| DrivingError::Map(format!("{}: {e}", map_file.display())))?,
    );
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| cx.db(e))?;
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| {
            cx.db(format!(
                "cannot read the schema (corrupt or not a SQLite DB?): {e}"
            ))
        })?;
    for t in REQUIRED_TABLES {
        if !tables.iter().any(|x| x == t) {
            return Err(DrivingError::MissingTable {
                path: pstr.clone(),
                table: t.into(),
            });
        }
    }
    let q = |sql: &str| {
        conn.prepare(sql)
            .map_err(|e| cx.db(format!("`{sql}`: {e}")))
    };

    let mut categories: HashMap<Token, Category> = HashMap::new();
    let rows: Vec<(Vec<u8>, String)> = q("SELECT token, name FROM category")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(|m| m.collect())
        .map_err(|e| cx.db(format!("category: {e}")))?;
    for (t, name) in rows {
        let t = cx.token("category", "token", t)?;
        // Unknown categories are kept as generic objects (nuPlan has a few rare ones).
        categories.insert(t, Category::parse(&name).unwrap_or(Category::GenericObject));
    }
    let mut tracks: HashMap<Token, (Category, f64, f64, f64)> = HashMap::new();
    let rows: Vec<(Vec<u8>, Vec<u8>, f64, f64, f64)> =
        q("SELECT token, category_token, width, length, height FROM track")?
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .and_then(|m| m.collect())
            .map_err(|e| cx.db(format!("track: {e}")))?;
    for (t, c, w, l, h) in rows {
        let t = cx.token("track", "token", t)?;
        let c = cx.token("track", "category_token", c)?;
        let cat = *categories
            .get(&c)
            .ok_or_else(|| cx.dangling("track", "category_token", &c, "category"))?;
        tracks.insert(t, (cat, w, l, h));
    }
    let mut poses: HashMap<Token, EgoPose> = HashMap::new();
    let rows: Vec<(Vec<u8>, [f64; 8])> =
        q("SELECT token, x, y, qw, qx, qy, qz, vx, vy, acceleration_x FROM ego_pose")?
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    [
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                    ],
                ))
            })
            .and_then(|m| m.collect())
            .map_err(|e| cx.db(format!("ego_pose: {e}")))?;
    for (t, [x, y, qw, qx, qy, qz, vx, vy]) in rows.iter().map(|(t, v)| (t.clone(), *v)) {
        let t = cx.token("ego_pose", "token", t)?;
        let heading = (2.0 * (qw * qz + qx * qy)).atan2(1.0 - 2.0 * (qy * qy + qz * qz));
        poses.insert(
            t,
            EgoPose {
                x,
                y,
                heading,
                speed: vx.hypot(vy),
                acceleration: 0.0,
            },
        );
    }
    // acceleration_x separately so the row tuple stays small.
    let accs: Vec<(Vec<u8>, f64)> = q("SELECT token, acceleration_x FROM ego_pose")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(|m| m.collect())
        .map_err(|e| cx.db(format!("ego_pose: {e}")))?;
    for (t, a) in accs {
        if let (Ok(t), true) = (<Token>::try_from(t.as_slice()), a.is_finite()) {
            if let Some(p) = poses.get_mut(&t) {
                p.acceleration = a;
            }
        }
    }
    let rows: Vec<(Vec<u8>, Vec<u8>, i64)> =
        q("SELECT token, ego_pose_token, timestamp FROM lidar_pc ORDER BY timestamp")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|m| m.collect())
            .map_err(|e| cx.db(format!("lidar_pc: {e}")))?;
    let mut pcs = Vec::with_capacity(rows.len());
    for (t, e, ts) in rows {
        let token = cx.token("lidar_pc", "token", t)?;
        let ego = cx.token("lidar_pc", "ego_pose_token", e)?;
        if !poses.contains_key(&ego) {
            return Err(cx.dangling("lidar_pc", "ego_pose_token", &ego, "ego_pose"));
        }
        pcs.push(Pc {
            token,
            ego,
            timestamp: ts,
        });
    }
    let pc_index: HashMap<Token, usize> =
        pcs.iter().enumerate().map(|(i, p)| (p.token, i)).collect();
    let mut boxes: HashMap<Token, Vec<BoxRow>> = HashMap::new();
    let rows: Vec<(Vec<u8>, Vec<u8>, [f64; 5])> =
        q("SELECT lidar_pc_token, track_token, x, y, yaw, vx, vy FROM lidar_box")?
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    [r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?],
                ))
            })
            .and_then(|m| m.collect())
            .map_err(|e| cx.db(format!("lidar_box: {e}")))?;
    for (pc, tr, [x, y, yaw, vx, vy]) in rows {
        let pc = cx.token("lidar_box", "lidar_pc_token", pc)?;
        let tr = cx.token("lidar_box", "track_token", tr)?;
        if !pc_index.contains_key(&pc) {
            return Err(cx.dangling("lidar_box", "lidar_pc_token", &pc, "lidar_pc"));
        }
        if !tracks.contains_key(&tr) {
            return Err(cx.dangling("lidar_box", "track_token", &tr, "track"));
        }
        boxes.entry(pc).or_default().push(BoxRow {
            track: tr,
            x,
            y,
            yaw,
            vx,
            vy,
        });
    }
    let mut lights: HashMap<Token, Vec<(LaneId, LightStatus)>> = HashMap::new();
    let rows: Vec<(Vec<u8>, i64, String)> =
        q("SELECT lidar_pc_token, lane_connector_id, status FROM traffic_light_status")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|m| m.collect())
            .map_err(|e| cx.db(format!("traffic_light_status: {e}")))?;
    for (pc, lc, st) in rows {
        let pc = cx.token("traffic_light_status", "lidar_pc_token", pc)?;
        if !pc_index.contains_key(&pc) {
            return Err(cx.dangling("traffic_light_status", "lidar_pc_token", &pc, "lidar_pc"));
        }
        let status = LightStatus::parse(&st).ok_or_else(|| {
            cx.db(format!(
                "traffic_light_status.status `{st}` is not green/yellow/red/unknown"
            ))
        })?;
        let lc = u64::try_from(lc).map_err(|_| {
            cx.db(format!(
                "traffic_light_status.lane_connector_id {lc} is negative"
            ))
        })?;
        lights.entry(pc).or_default().push((lc, status));
    }
    let tags: Vec<(Vec<u8>, String)> = q("SELECT lidar_pc_token, type FROM scenario_tag")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(|m| m.collect())
        .map_err(|e| cx.db(format!("scenario_tag: {e}")))?;
    let mut out = Vec::new();
    for (pc, ty) in tags {
        let pc = cx.token("scenario_tag", "lidar_pc_token", pc)?;
        let i0 = *pc_index
            .get(&pc)
            .ok_or_else(|| cx.dangling("scenario_tag", "lidar_pc_token", &pc, "lidar_pc"))?;
        let token = hex(&pc);
        // The scenario starts at the first frame at or after tag - 3 s (the log's first frame
        // if the tag is nearer its start), as the devkit extracts it.
        let start_ts = pcs[i0].timestamp.saturating_sub(TAG_OFFSET_US);
        let first = pcs[..=i0].partition_point(|p| p.timestamp < start_ts);
        // Sample indices at 10 Hz; missing history repeats the first sample, the future may be
        // shorter than 15 s at the end of a log.
        // It ends at the last frame within 15 s of its start (with real timestamps' jitter,
        // 150 or 151 samples).
        let end_ts = start_ts.saturating_add(SCENARIO_DURATION_US);
        let idx: Vec<usize> = (0..=HISTORY_STEPS + HORIZON_STEPS)
            .map(|k| {
                (first as i64 + (k as i64 - HISTORY_STEPS as i64) * SUBSAMPLE as i64).max(0)
                    as usize
            })
            .take_while(|&i| i < pcs.len() && pcs[i].timestamp <= end_ts)
            .collect();
        if idx.len() < HISTORY_STEPS + 2 {
            return Err(DrivingError::Scenario {
                token,
                reason: "fewer than 0.2 s of log after the scenario's start (tag - 3 s)".into(),
            });
        }
        let expert: Vec<EgoPose> = idx.iter().map(|&i| poses[&pcs[i].ego]).collect();
        let mut ids: HashMap<Token, usize> = HashMap::new();
        let mut trs: Vec<Track> = Vec::new();
        for (k, &i) in idx.iter().enumerate() {
            for b in boxes
                .get(&pcs[i].token)
                .map(|v| v.as_slice())
                .unwrap_or(&[])
            {
                let n = ids.len();
                let j = *ids.entry(b.track).or_insert(n);
                if j == trs.len() {
                    let (cat, w, l, h) = tracks[&b.track];
                    trs.push(Track {
                        id: j as u64 + 1,
                        category: cat,
                        length: l,
                        width: w,
                        height: h,
                        states: vec![None; idx.len()],
                    });
                }
                trs[j].states[k] = Some(AgentState {
                    x: b.x,
                    y: b.y,
                    heading: b.yaw,
                    vx: b.vx,
                    vy: b.vy,
                });
            }
        }
        let lts: Vec<Vec<(LaneId, LightStatus)>> = idx[HISTORY_STEPS..]
            .iter()
            .map(|&i| lights.get(&pcs[i].token).cloned().unwrap_or_default())
            .collect();
        let route = route_from_expert(&map, &expert[HISTORY_STEPS..]);
        check_coverage(&map, &token, &expert[HISTORY_STEPS..], &lts)?;
        let s = Scenario {
            token,
            scenario_type: ty,
            map: map.clone(),
            expert,
            tracks: trs,
            lights: lts,
            route,
        };
        s.validate()?;
        out.push(s);
    }
    Ok(out)
}

/// The lanes the expert drove through, in order, by where its box centre was (the devkit
/// extracts the expert's route from its centres; an ego pose is its rear axle). Where lanes
/// overlap (a fork of connectors), the expert stays on the current lane while it can, prefers a
/// successor of it, and among those the one it stays in longest, so the route is a connected
/// chain and not the first connector the fork happened to list.
pub fn route_from_expert(map: &Map, expert: &[EgoPose]) -> Vec<LaneId> {
    let aligned: Vec<Vec<LaneId>> = expert
        .iter()
        .map(|e| {
            let (sin, cos) = e.heading.sin_cos();
            let c = P2::new(e.x + REAR_TO_CENTER * cos, e.y + REAR_TO_CENTER * sin);
            map.lanes_at(c)
                .filter(|l| {
                    wrap_angle(l.centerline.project(c).heading - e.heading).abs() < FRAC_PI_2
                })
                .map(|l| l.id)
                .collect()
        })
        .collect();
    let stay = |id: LaneId, from: usize| {
        aligned[from..]
            .iter()
            .take_while(|h| h.contains(&id))
            .count()
    };
    let mut route: Vec<LaneId> = Vec::new();
    for (k, here) in aligned.iter().enumerate() {
        let last = route.last().copied();
        if last.is_some_and(|l| here.contains(&l)) {
            continue;
        }
        let fresh = here.iter().copied().filter(|id| !route.contains(id));
        let linked: Vec<LaneId> = fresh
            .clone()
            .filter(|id| last.is_some_and(|l| map.connected(l, *id)))
            .collect();
        let pool: Vec<LaneId> = if linked.is_empty() {
            fresh.collect()
        } else {
            linked
        };
        if let Some(best) = pool.into_iter().max_by_key(|id| stay(*id, k)) {
            route.push(best);
        }
    }
    route
}

fn check_coverage(
    map: &Map,
    token: &str,
    expert: &[EgoPose],
    lights: &[Vec<(LaneId, LightStatus)>],
) -> Result<(), DrivingError> {
    let err = |reason: String| DrivingError::MapCoverage {
        map: map.name.clone(),
        token: token.to_string(),
        reason,
    };
    let on = |e: &EgoPose| {
        let p = P2::new(e.x, e.y);
        map.on_any_lane(p) || map.in_drivable_area_layer(p)
    };
    if let Some(e0) = expert.first() {
        if !on(e0) {
            return Err(err(format!(
                "the ego's initial pose ({:.1}, {:.1}) is on no lane or drivable area",
                e0.x, e0.y
            )));
        }
    }
    let covered = expert.iter().filter(|e| on(e)).count() as f64 / expert.len().max(1) as f64;
    if covered < MIN_COVERAGE {
        return Err(err(format!(
            "only {:.0}% of the expert's poses are on the map",
            covered * 100.0
        )));
    }
    for (id, _) in lights.iter().flatten() {
        if map.lane(*id).is_none() {
            return Err(err(format!(
                "traffic light on lane connector {id}, which the map lacks"
            )));
        }
    }
    Ok(())
}

const SCHEMA: &str = "
CREATE TABLE log (token BLOB PRIMARY KEY, vehicle_name TEXT, date TEXT, timestamp INTEGER, logfile TEXT, location TEXT, map_version TEXT);
CREATE TABLE scene (token BLOB PRIMARY KEY, log_token BLOB, name TEXT, goal_ego_pose_token BLOB, roadblock_ids TEXT);
CREATE TABLE ego_pose (token BLOB PRIMARY KEY, timestamp INTEGER, x REAL, y REAL, z REAL, qw REAL, qx REAL, qy REAL, qz REAL, vx REAL, vy REAL, vz REAL, acceleration_x REAL, acceleration_y REAL, acceleration_z REAL, angular_rate_x REAL, angular_rate_y REAL, angular_rate_z REAL, epsg INTEGER, log_token BLOB);
CREATE TABLE lidar_pc (token BLOB PRIMARY KEY, next_token BLOB, prev_token BLOB, ego_pose_token BLOB, lidar_token BLOB, scene_token BLOB, filename TEXT, timestamp INTEGER);
CREATE TABLE category (token BLOB PRIMARY KEY, name TEXT, description TEXT);
CREATE TABLE track (token BLOB PRIMARY KEY, category_token BLOB, width REAL, length REAL, height REAL);
CREATE TABLE lidar_box (token BLOB PRIMARY KEY, lidar_pc_token BLOB, track_token BLOB, next_token BLOB, prev_token BLOB, x REAL, y REAL, z REAL, width REAL, length REAL, height REAL, vx REAL, vy REAL, vz REAL, yaw REAL, confidence REAL);
CREATE TABLE traffic_light_status (token BLOB PRIMARY KEY, lidar_pc_token BLOB, lane_connector_id INTEGER, status TEXT);
CREATE TABLE scenario_tag (token BLOB PRIMARY KEY, lidar_pc_token BLOB, type TEXT, agent_track_token BLOB);
";

/// Writes `scenario` as one nuPlan-schema log at 20 Hz (odd frames interpolated between the
/// 10 Hz samples) with its tag 3 s after the initial frame (so the devkit's extraction, and
/// [`load_scenarios`], start the scenario at its initial state), and its map beside the DB.
pub fn write_db(db: &Path, scenario: &Scenario) -> Result<(), DrivingError> {
    let pstr = db.display().to_string();
    let cx = Ctx { path: &pstr };
    let tag_frame = 2 * HISTORY_STEPS + (TAG_OFFSET_US / 50_000) as usize;
    if (2 * scenario.expert.len()).saturating_sub(1) <= tag_frame {
        return Err(cx.db(format!(
            "scenario `{}` lasts {:.1} s after its start; a tag sits 3 s after the start, so it needs more",
            scenario.token,
            scenario.num_steps().saturating_sub(1) as f64 * super::scenario::DT
        )));
    }
    let mut conn = Connection::open(db).map_err(|e| cx.db(e))?;
    conn.execute_batch(SCHEMA).map_err(|e| cx.db(e))?;
    let mut counter: u64 = 0;
    let mut tok = |kind: u8| {
        counter += 1;
        let mut t = [0u8; 16];
        t[0] = kind;
        t[8..].copy_from_slice(&counter.to_be_bytes());
        t.to_vec()
    };
    let tx = conn.transaction().map_err(|e| cx.db(e))?;
    let e = |r: rusqlite::Result<usize>| r.map(|_| ()).map_err(|e| cx.db(e));
    let log = tok(1);
    e(tx.execute(
        "INSERT INTO log VALUES (?1, 'rudder', '2026-01-01', 0, 'generated', ?2, '1')",
        params![log, scenario.map.name],
    ))?;
    let scene = tok(2);
    e(tx.execute(
        "INSERT INTO scene VALUES (?1, ?2, ?3, NULL, '')",
        params![scene, log, scenario.token],
    ))?;
    let mut cats: HashMap<Category, Vec<u8>> = HashMap::new();
    let mut track_tokens = Vec::new();
    for t in &scenario.tracks {
        let ct = match cats.get(&t.category) {
            Some(c) => c.clone(),
            None => {
                let c = tok(3);
                e(tx.execute(
                    "INSERT INTO category VALUES (?1, ?2, '')",
                    params![c, t.category.as_str()],
                ))?;
                cats.insert(t.category, c.clone());
                c
            }
        };
        let tt = tok(4);
        e(tx.execute(
            "INSERT INTO track VALUES (?1, ?2, ?3, ?4, ?5)",
            params![tt, ct, t.width, t.length, t.height],
        ))?;
        track_tokens.push(tt);
    }
    let n = scenario.expert.len();
    let lerp = |a: f64, b: f64, u: f64| a + (b - a) * u;
    for f in 0..(2 * n - 1) {
        let (k, u) = (f / 2, if f % 2 == 1 { 0.5 } else { 0.0 });
        let a = scenario.expert[k];
        let b = scenario.expert[(k + 1).min(n - 1)];
        let h = a.heading + u * super::geometry::wrap_angle(b.heading - a.heading);
        let ep = tok(5);
        e(tx.execute(
            "INSERT INTO ego_pose VALUES (?1, ?2, ?3, ?4, 0, ?5, 0, 0, ?6, ?7, 0, 0, ?8, 0, 0, 0, 0, 0, 0, ?9)",
            params![ep, f as i64 * 50_000, lerp(a.x, b.x, u), lerp(a.y, b.y, u), (h / 2.0).cos(), (h / 2.0).sin(), lerp(a.speed, b.speed, u), lerp(a.acceleration, b.acceleration, u), log],
        ))?;
        let pc = tok(6);
        e(tx.execute(
            "INSERT INTO lidar_pc VALUES (?1, NULL, NULL, ?2, NULL, ?3, '', ?4)",
            params![pc, ep, scene, f as i64 * 50_000],
        ))?;
        for (t, tt) in scenario.tracks.iter().zip(&track_tokens) {
            let (Some(sa), sb) = (
                t.states.get(k).copied().flatten(),
                t.states.get(k + 1).copied().flatten(),
            ) else {
                continue;
            };
            let sb = sb.unwrap_or(sa);
            let yaw = sa.heading + u * super::geometry::wrap_angle(sb.heading - sa.heading);
            e(tx.execute(
                "INSERT INTO lidar_box VALUES (?1, ?2, ?3, NULL, NULL, ?4, ?5, 0, ?6, ?7, ?8, ?9, ?10, 0, ?11, 1)",
                params![tok(7), pc, tt, lerp(sa.x, sb.x, u), lerp(sa.y, sb.y, u), t.width, t.length, t.height, lerp(sa.vx, sb.vx, u), lerp(sa.vy, sb.vy, u), yaw],
            ))?;
        }
        if k >= HISTORY_STEPS {
            for (lc, st) in scenario.lights_at(k - HISTORY_STEPS) {
                e(tx.execute(
                    "INSERT INTO traffic_light_status VALUES (?1, ?2, ?3, ?4)",
                    params![tok(8), pc, *lc as i64, st.as_str()],
                ))?;
            }
        }
        if f == tag_frame {
            e(tx.execute(
                "INSERT INTO scenario_tag VALUES (?1, ?2, ?3, NULL)",
                params![tok(9), pc, scenario.scenario_type],
            ))?;
        }
    }
    tx.commit().map_err(|e| cx.db(e))?;
    std::fs::write(map_path_for(db), scenario.map.to_json())
        .map_err(|e| cx.db(format!("writing the map: {e}")))?;
    Ok(())
}
