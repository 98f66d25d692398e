//! Seeded procedural scenarios of nuPlan's types, each on its own small map, with a scripted
//! expert that knows the future (it reads the other tracks' logs, as a human driver's log
//! reflects what they anticipated): IDM-like speed control with a generous headway, hold
//! points (red lights, yielding, pedestrians), a jerk limit, and smooth lane-change offsets.

use super::geometry::{OrientedBox, P2};
use super::idm::LanePath;
use super::map::{Crosswalk, Lane, LaneId, LaneKind, LightStatus, Map, StopLine, TrafficLight};
use super::scenario::{
    AgentState, Category, EgoPose, Scenario, Track, DT, HISTORY_STEPS, HORIZON_STEPS,
};
use super::vehicle::{EGO_LENGTH, EGO_WIDTH, REAR_TO_CENTER};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

/// The scenario types the generator covers (nuPlan names, plus `cut_in`).
pub const SCENARIO_TYPES: [&str; 12] = [
    "following_lane_with_lead",
    "stopping_with_lead",
    "changing_lane",
    "cut_in",
    "starting_unprotected_cross_turn",
    "starting_right_turn",
    "stopping_at_traffic_light_without_lead",
    "starting_straight_traffic_light_intersection_traversal",
    "waiting_for_pedestrian_to_cross",
    "high_lateral_acceleration",
    "near_trafficcone_on_driveable",
    "behind_long_vehicle",
];

const LANE_W: f64 = 3.5;
const TOTAL: usize = HISTORY_STEPS + HORIZON_STEPS + 1;

/// Scenario `index` of a campaign seeded with `seed`; types cycle so every type is covered.
pub fn generate(seed: u64, index: usize) -> Scenario {
    let ty = SCENARIO_TYPES[index % SCENARIO_TYPES.len()];
    let mut rng = StdRng::seed_from_u64(
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(index as u64),
    );
    let mut s = match ty {
        "following_lane_with_lead" => lead(&mut rng, LeadKind::Follow),
        "stopping_with_lead" => lead(&mut rng, LeadKind::Stop),
        "behind_long_vehicle" => lead(&mut rng, LeadKind::Long),
        "changing_lane" => changing_lane(&mut rng),
        "cut_in" => cut_in(&mut rng),
        "starting_unprotected_cross_turn" => intersection(&mut rng, Turn::Left, Light::None),
        "starting_right_turn" => intersection(&mut rng, Turn::Right, Light::None),
        "stopping_at_traffic_light_without_lead" => {
            intersection(&mut rng, Turn::Straight, Light::Red)
        }
        "starting_straight_traffic_light_intersection_traversal" => {
            intersection(&mut rng, Turn::Straight, Light::Green)
        }
        "waiting_for_pedestrian_to_cross" => pedestrian(&mut rng),
        "high_lateral_acceleration" => curve(&mut rng),
        _ => cones(&mut rng),
    };
    s.token = format!("gen-{seed}-{index}-{ty}");
    s.scenario_type = ty.to_string();
    s
}

// ---------- maps ----------

/// A straight road along +x with `n` lanes (lane j centred at y = j * 3.5), cut into 50 m
/// roadblocks; lane id = 100 * segment + j + 1, roadblock = segment + 1.
fn straight_map(n: usize, length: f64, limit: f64, crosswalk_x: Option<f64>) -> Map {
    let segs = (length / 50.0).ceil() as usize;
    let mut lanes = Vec::new();
    for k in 0..segs {
        for j in 0..n {
            let y = j as f64 * LANE_W;
            let pts = (0..=10)
                .map(|i| P2::new(k as f64 * 50.0 + i as f64 * 5.0, y))
                .collect();
            lanes.push(Lane::from_centerline(
                lane_id(k, j),
                LaneKind::Lane,
                k as u64 + 1,
                pts,
                LANE_W,
                Some(limit),
            ));
        }
    }
    for k in 1..segs {
        for j in 0..n {
            Map::connect(&mut lanes, lane_id(k - 1, j), lane_id(k, j));
        }
    }
    let crosswalks = crosswalk_x
        .map(|x| {
            vec![Crosswalk {
                id: 1,
                polygon: rect(x - 2.0, -LANE_W, x + 2.0, n as f64 * LANE_W),
            }]
        })
        .unwrap_or_default();
    Map::new("straight", lanes, vec![], vec![], crosswalks, vec![]).unwrap_or_default()
}

fn lane_id(seg: usize, j: usize) -> LaneId {
    100 * seg as u64 + j as u64 + 1
}

fn rect(x0: f64, y0: f64, x1: f64, y1: f64) -> Vec<P2> {
    vec![
        P2::new(x0, y0),
        P2::new(x1, y0),
        P2::new(x1, y1),
        P2::new(x0, y1),
    ]
}

const ARM_IN: f64 = 12.0;
const ARM_OUT: f64 = 240.0;

/// A four-way intersection at the origin, right-hand traffic, one lane each way per arm.
/// Arm i points along angle i * 90 deg. Incoming lane id 10 + i, outgoing 20 + i, connector
/// from arm i to arm j: 100 + 10 i + j. Lights (when given) on the E-W connectors.
fn intersection_map(limit: f64, lights: Option<(LightStatus, f64)>) -> Map {
    let mut lanes = Vec::new();
    let u = |i: usize| {
        let a = i as f64 * std::f64::consts::FRAC_PI_2;
        P2::new(a.cos(), a.sin())
    };
    for i in 0..4 {
        let d = u(i);
        let n_in = P2::new(-d.y, d.x).scale(LANE_W / 2.0);
        let n_out = P2::new(d.y, -d.x).scale(LANE_W / 2.0);
        let inc: Vec<P2> = (0..=57)
            .map(|k| d.scale(ARM_OUT - k as f64 * 4.0).add(n_in))
            .collect();
        let out: Vec<P2> = (0..=57)
            .map(|k| d.scale(ARM_IN + k as f64 * 4.0).add(n_out))
            .collect();
        lanes.push(Lane::from_centerline(
            10 + i as u64,
            LaneKind::Lane,
            10 + i as u64,
            inc,
            LANE_W,
            Some(limit),
        ));
        lanes.push(Lane::from_centerline(
            20 + i as u64,
            LaneKind::Lane,
            20 + i as u64,
            out,
            LANE_W,
            Some(limit),
        ));
    }
    for i in 0..4 {
        for j in 0..4 {
            if i == j {
                continue;
            }
            let di = u(i);
            let dj = u(j);
            let p0 = di
                .scale(ARM_IN)
                .add(P2::new(-di.y, di.x).scale(LANE_W / 2.0));
            let p3 = dj
                .scale(ARM_IN)
                .add(P2::new(dj.y, -dj.x).scale(LANE_W / 2.0));
            let k = 0.55 * p0.dist(p3);
            let p1 = p0.add(di.scale(-k));
            let p2 = p3.add(dj.scale(-k));
            let pts = (0..=24)
                .map(|m| {
                    let t = m as f64 / 24.0;
                    let a = (1.0 - t).powi(3);
                    let b = 3.0 * (1.0 - t).powi(2) * t;
                    let c = 3.0 * (1.0 - t) * t * t;
                    let e = t.powi(3);
                    p0.scale(a)
                        .add(p1.scale(b))
                        .add(p2.scale(c))
                        .add(p3.scale(e))
                })
                .collect();
            let id = 100 + 10 * i as u64 + j as u64;
            lanes.push(Lane::from_centerline(
                id,
                LaneKind::Connector,
                id,
                pts,
                LANE_W,
                None,
            ));
            Map::connect(&mut lanes, 10 + i as u64, id);
            Map::connect(&mut lanes, id, 20 + j as u64);
        }
    }
    let mut tl = Vec::new();
    let mut stop_lines = Vec::new();
    if let Some((status, dur)) = lights {
        let other = if status == LightStatus::Red {
            LightStatus::Green
        } else {
            LightStatus::Red
        };
        for i in 0..4 {
            for j in 0..4 {
                if i == j {
                    continue;
                }
                let id = 100 + 10 * i as u64 + j as u64;
                let (first, second) = if i % 2 == 0 {
                    (status, other)
                } else {
                    (other, status)
                };
                tl.push(TrafficLight {
                    lane_connector: id,
                    phases: vec![(first, dur), (second, 1000.0)],
                    offset_s: 0.0,
                });
                stop_lines.push(StopLine {
                    id,
                    polygon: vec![],
                    lane_connector: Some(id),
                });
            }
        }
    }
    let crosswalks = (0..4)
        .map(|i| {
            let d = u(i);
            let n = P2::new(-d.y, d.x);
            let c = d.scale(ARM_IN + 2.0);
            Crosswalk {
                id: i as u64,
                polygon: vec![
                    c.add(d.scale(-1.5)).add(n.scale(-LANE_W)),
                    c.add(d.scale(1.5)).add(n.scale(-LANE_W)),
                    c.add(d.scale(1.5)).add(n.scale(LANE_W)),
                    c.add(d.scale(-1.5)).add(n.scale(LANE_W)),
                ],
            }
        })
        .collect();
    // The intersection box plus kerb-radius fillets at its corners.
    let area = rect(-ARM_IN - 5.0, -ARM_IN - 5.0, ARM_IN + 5.0, ARM_IN + 5.0);
    Map::new(
        "intersection",
        lanes,
        vec![area],
        stop_lines,
        crosswalks,
        tl,
    )
    .unwrap_or_default()
}

/// One lane: 60 m straight along +x, an arc of `radius` turning left by `angle`, 150 m straight;
/// cut into roadblocks of 12 points.
fn curve_map(radius: f64, angle: f64, limit: f64) -> (Map, Vec<LaneId>) {
    let mut pts = Vec::new();
    for i in 0..=12 {
        pts.push(P2::new(i as f64 * 5.0, 0.0));
    }
    let arc_n = ((radius * angle) / 2.0).ceil() as usize;
    for i in 1..=arc_n {
        let a = angle * i as f64 / arc_n as f64;
        pts.push(P2::new(60.0 + radius * a.sin(), radius * (1.0 - a.cos())));
    }
    let end = *pts.last().unwrap_or(&P2::default());
    for i in 1..=30 {
        pts.push(end.add(P2::new(angle.cos(), angle.sin()).scale(i as f64 * 5.0)));
    }
    let mut lanes = Vec::new();
    let mut ids = Vec::new();
    let mut k = 0;
    let mut start = 0;
    while start + 1 < pts.len() {
        let stop = (start + 12).min(pts.len() - 1);
        let id = k as u64 + 1;
        lanes.push(Lane::from_centerline(
            id,
            LaneKind::Lane,
            id,
            pts[start..=stop].to_vec(),
            LANE_W,
            Some(limit),
        ));
        if k > 0 {
            Map::connect(&mut lanes, id - 1, id);
        }
        ids.push(id);
        k += 1;
        start = stop;
    }
    (
        Map::new("curve", lanes, vec![], vec![], vec![], vec![]).unwrap_or_default(),
        ids,
    )
}

// ---------- motion scripting ----------

/// A scripted object: moves along `path` (from arc length `s0` at t = -2 s) with speed from
/// `speed(t, v)` (a target the speed approaches at <= 2 m/s^2), laterally offset by `lat(t)`.
struct Script<'a> {
    path: &'a LanePath,
    s0: f64,
    v0: f64,
    target: &'a dyn Fn(f64) -> f64,
    lat: &'a dyn Fn(f64) -> f64,
}

fn run_script(sc: &Script<'_>, max_acc: f64, max_dec: f64) -> Vec<AgentState> {
    let mut out = Vec::with_capacity(TOTAL);
    let (mut s, mut v) = (sc.s0, sc.v0);
    for k in 0..TOTAL {
        let t = (k as f64 - HISTORY_STEPS as f64) * DT;
        out.push(place(
            sc.path,
            s,
            v,
            (sc.lat)(t),
            ((sc.lat)(t + DT) - (sc.lat)(t)) / DT,
        ));
        let a = (((sc.target)(t) - v) / 1.0).clamp(-max_dec, max_acc);
        v = (v + a * DT).max(0.0);
        s += v * DT;
    }
    out
}

fn place(path: &LanePath, s: f64, v: f64, lat: f64, lat_rate: f64) -> AgentState {
    let p = path.line.pose_at(s);
    let n = P2::new(-p.heading.sin(), p.heading.cos());
    let heading = p.heading + if v > 0.1 { (lat_rate / v).atan() } else { 0.0 };
    AgentState {
        x: p.x + n.x * lat,
        y: p.y + n.y * lat,
        heading,
        vx: v * heading.cos(),
        vy: v * heading.sin(),
    }
}

fn smoothstep(x: f64) -> f64 {
    let x = x.clamp(0.0, 1.0);
    x * x * (3.0 - 2.0 * x)
}

fn track(id: u64, category: Category, length: f64, width: f64, states: Vec<AgentState>) -> Track {
    Track {
        id,
        category,
        length,
        width,
        height: 1.7,
        states: states.into_iter().map(Some).collect(),
    }
}

/// Lateral acceleration the expert allows itself in curves (m/s^2).
const CURVE_LAT_ACC: f64 = 1.5;
/// In tight turns (radius under 15 m) the LQR-tracked ego cuts the corner: at 1.5 m/s^2 the
/// right turn's footprint left the outgoing lane by more than nuPlan's 0.3 m tolerance.
const TIGHT_TURN_LAT_ACC: f64 = 0.8;

/// A hold: the expert's front must stay before `s` until time `until`.
struct Hold {
    s: f64,
    until: f64,
}

/// The expert: IDM-like control with foresight over `tracks`, holds, the speed `limit`, and a
/// jerk limit; rear-axle poses along `path` with lateral offset `lat(t)`.
fn expert(
    path: &LanePath,
    s0: f64,
    v0: f64,
    limit: f64,
    tracks: &[Track],
    holds: &[Hold],
    lat: &dyn Fn(f64) -> f64,
) -> Vec<EgoPose> {
    let (mut s, mut v, mut a) = (s0, v0, 0.0f64);
    let mut out = Vec::with_capacity(TOTAL);
    let front = REAR_TO_CENTER + EGO_LENGTH / 2.0;
    for k in 0..TOTAL {
        let t = (k as f64 - HISTORY_STEPS as f64) * DT;
        let p = place(path, s, v, lat(t), (lat(t + DT) - lat(t)) / DT);
        out.push(EgoPose {
            x: p.x,
            y: p.y,
            heading: p.heading,
            speed: v,
            acceleration: a,
        });
        // Leaders: tracks whose box is within the corridor ahead now or within 1.5 s.
        let mut gap_v: Option<(f64, f64)> = None;
        for tr in tracks {
            for look in [0usize, 15] {
                let Some(st) = tr.states.get(k + look).copied().flatten() else {
                    continue;
                };
                let b = OrientedBox::new(P2::new(st.x, st.y), st.heading, tr.length, tr.width);
                let pr = path.line.project(b.center);
                let lat_here = lat(t);
                if (pr.lateral - lat_here).abs() > EGO_WIDTH / 2.0 + tr.width / 2.0 + 0.6 {
                    continue;
                }
                let gap = pr.s - tr.length / 2.0 - (s + front);
                if !(-1.0..=80.0).contains(&gap) {
                    continue;
                }
                let vl = st.speed() * (st.heading - pr.heading).cos();
                if gap_v.is_none_or(|g| gap < g.0) {
                    gap_v = Some((gap.max(0.1), vl));
                }
            }
        }
        for h in holds {
            if t < h.until && s + front <= h.s + 0.5 {
                let gap = (h.s - (s + front)).max(0.1);
                if gap_v.is_none_or(|g| gap < g.0) {
                    gap_v = Some((gap, 0.0));
                }
            }
        }
        // Slow for curves ahead: lateral acceleration <= CURVE_LAT_ACC on the curve, reached by
        // braking at <= 1 m/s^2 from where we are.
        let v_curve = [0.0, 4.0, 8.0, 12.0, 16.0, 20.0, 25.0, 30.0]
            .iter()
            .map(|d| {
                let h0 = path.line.heading_at(s + d - 1.5);
                let h1 = path.line.heading_at(s + d + 1.5);
                let kappa = (super::geometry::wrap_angle(h1 - h0) / 3.0).abs().max(1e-6);
                let lat_acc = if kappa > 1.0 / 15.0 {
                    TIGHT_TURN_LAT_ACC
                } else {
                    CURVE_LAT_ACC
                };
                ((lat_acc / kappa) + 2.0 * d).sqrt()
            })
            .fold(f64::INFINITY, f64::min);
        let v_target = limit.min(v_curve);
        let desired = {
            let free = 1.0 - (v / v_target.max(0.1)).powi(4);
            let inter = gap_v.map_or(0.0, |(g, vl)| {
                let ss = 2.5 + (v * 1.8 + v * (v - vl) / (2.0 * (1.2f64 * 2.0).sqrt())).max(0.0);
                (ss / g).powi(2)
            });
            (1.2 * (free - inter)).clamp(-3.5, 1.5)
        };
        let desired = if v <= 0.01 && desired < 0.0 {
            0.0
        } else {
            desired
        };
        a = a + (desired - a).clamp(-0.25, 0.2);
        let v_new = (v + a * DT).max(0.0);
        if v_new == 0.0 {
            a = a.max(0.0).min(desired.max(0.0));
        }
        s += 0.5 * (v + v_new) * DT;
        v = v_new;
    }
    out
}

fn lights_over_time(map: &Map) -> Vec<Vec<(LaneId, LightStatus)>> {
    (0..=HORIZON_STEPS)
        .map(|k| {
            map.traffic_lights
                .iter()
                .map(|l| (l.lane_connector, l.status_at(k as f64 * DT)))
                .collect()
        })
        .collect()
}

fn scenario(map: Map, expert: Vec<EgoPose>, tracks: Vec<Track>, route: Vec<LaneId>) -> Scenario {
    let lights = lights_over_time(&map);
    Scenario {
        token: String::new(),
        scenario_type: String::new(),
        map: Arc::new(map),
        expert,
        tracks,
        lights,
        route,
    }
}

fn no_lat(_: f64) -> f64 {
    0.0
}

// ---------- scenario types ----------

enum LeadKind {
    Follow,
    Stop,
    Long,
}

fn lead(rng: &mut StdRng, kind: LeadKind) -> Scenario {
    let limit = 15.0;
    let map = straight_map(2, 400.0, limit, None);
    let route: Vec<LaneId> = (0..8).map(|k| lane_id(k, 0)).collect();
    let path = LanePath::from_lanes(&map, &route)
        .unwrap_or_else(|| LanePath::from_lanes(&map, &[1]).expect("lane 1"));
    let v_ego = rng.random_range::<f64, _>(8.0..11.0);
    let v_lead = rng.random_range::<f64, _>(7.0..9.0);
    let gap = rng.random_range::<f64, _>(28.0..38.0);
    let (len, stop_at) = match kind {
        LeadKind::Follow => (4.8, f64::INFINITY),
        LeadKind::Stop => (4.8, rng.random_range::<f64, _>(2.0..4.0)),
        LeadKind::Long => (12.0, f64::INFINITY),
    };
    let target = move |t: f64| if t >= stop_at { 0.0 } else { v_lead };
    let lead_states = run_script(
        &Script {
            path: &path,
            s0: 10.0 + gap - 2.0 * v_lead,
            v0: v_lead,
            target: &target,
            lat: &no_lat,
        },
        1.0,
        2.0,
    );
    let mut tracks = vec![track(1, Category::Vehicle, len, 2.2, lead_states)];
    // Oncoming-lane neighbour for context (never in the ego's way).
    let side = run_script(
        &Script {
            path: &path,
            s0: 60.0,
            v0: 9.0,
            target: &|_| 9.0,
            lat: &|_| LANE_W,
        },
        1.0,
        2.0,
    );
    tracks.push(track(2, Category::Vehicle, 4.6, 2.0, side));
    let ex = expert(
        &path,
        10.0 - 2.0 * v_ego - REAR_TO_CENTER - 5.0,
        v_ego,
        limit,
        &tracks,
        &[],
        &no_lat,
    );
    scenario(map, ex, tracks, route)
}

fn changing_lane(rng: &mut StdRng) -> Scenario {
    let limit = 15.0;
    let map = straight_map(2, 400.0, limit, None);
    let v = rng.random_range::<f64, _>(9.0..12.0);
    let start = rng.random_range::<f64, _>(2.0..4.0);
    // Lane change over 5 s; the route switches lanes in the roadblock where it happens.
    let s_mid = 30.0 + v * (start + 2.5);
    let seg_change = (s_mid / 50.0).floor() as usize;
    let route: Vec<LaneId> = (0..8)
        .map(|k| lane_id(k, usize::from(k >= seg_change)))
        .collect();
    let base = LanePath::from_lanes(&map, &(0..8).map(|k| lane_id(k, 0)).collect::<Vec<_>>())
        .expect("lane 0");
    let lat = move |t: f64| LANE_W * smoothstep((t - start) / 5.0);
    // A slower vehicle ahead in the ego's lane motivates the change.
    let slow = run_script(
        &Script {
            path: &base,
            s0: 30.0 + 45.0,
            v0: 5.0,
            target: &|_| 5.0,
            lat: &no_lat,
        },
        1.0,
        2.0,
    );
    let tracks = vec![track(1, Category::Vehicle, 4.8, 2.1, slow)];
    let ex = expert(&base, 30.0 - 2.0 * v, v, limit, &tracks, &[], &lat);
    scenario(map, ex, tracks, route)
}

fn cut_in(rng: &mut StdRng) -> Scenario {
    let limit = 15.0;
    let map = straight_map(2, 400.0, limit, None);
    let route: Vec<LaneId> = (0..8).map(|k| lane_id(k, 0)).collect();
    let path = LanePath::from_lanes(&map, &route).expect("lane 0");
    let v_ego = rng.random_range::<f64, _>(10.0..11.0);
    let v_cut = rng.random_range::<f64, _>(7.0..8.5);
    let t_cut = rng.random_range::<f64, _>(1.5..2.5);
    // Starts beside and ahead in the left lane, merges in front of the ego over 2 s.
    let lat = move |t: f64| LANE_W * (1.0 - smoothstep((t - t_cut) / 2.0));
    let cut = run_script(
        &Script {
            path: &path,
            s0: 30.0 + 20.0 - 2.0 * v_cut,
            v0: v_cut,
            target: &move |_| v_cut,
            lat: &lat,
        },
        1.0,
        2.0,
    );
    let tracks = vec![track(1, Category::Vehicle, 4.8, 2.1, cut)];
    let ex = expert(
        &path,
        30.0 - 2.0 * v_ego - REAR_TO_CENTER - 5.0,
        v_ego,
        limit,
        &tracks,
        &[],
        &no_lat,
    );
    scenario(map, ex, tracks, route)
}

#[derive(Clone, Copy, PartialEq)]
enum Turn {
    Left,
    Right,
    Straight,
}

#[derive(Clone, Copy, PartialEq)]
enum Light {
    None,
    Red,
    Green,
}

/// Ego comes from the west arm (2, heading +x). Left turn -> north arm (1), right -> south (3),
/// straight -> east (0).
fn intersection(rng: &mut StdRng, turn: Turn, light: Light) -> Scenario {
    let limit = 13.0;
    let lights = match light {
        Light::None => None,
        Light::Red => Some((LightStatus::Red, 30.0)),
        Light::Green => Some((LightStatus::Green, 30.0)),
    };
    let map = intersection_map(limit, lights);
    let to = match turn {
        Turn::Left => 1u64,
        Turn::Right => 3,
        Turn::Straight => 0,
    };
    let route = vec![12, 100 + 20 + to, 20 + to];
    let path = LanePath::from_lanes(&map, &route).expect("route lanes exist");
    let conn_start = ARM_OUT - ARM_IN;
    let v_ego = match light {
        Light::Red => rng.random_range::<f64, _>(8.0..10.0),
        _ => rng.random_range::<f64, _>(3.0..5.0),
    };
    // Ego front at t = 0 is 14..20 m before the connector for "starting" types.
    let d0 = match light {
        Light::Red => rng.random_range::<f64, _>(35.0..45.0),
        _ => rng.random_range::<f64, _>(10.0..14.0),
    };
    let front = REAR_TO_CENTER + EGO_LENGTH / 2.0;
    let s0 = conn_start - d0 - front - 2.0 * v_ego;
    let mut tracks = Vec::new();
    let mut holds = Vec::new();
    match turn {
        Turn::Left => {
            // Oncoming traffic from the east (arm 0) going straight west.
            let opath = LanePath::from_lanes(&map, &[10, 102, 22]).expect("oncoming");
            let v = rng.random_range::<f64, _>(9.0..11.0);
            let arrive = rng.random_range::<f64, _>(2.5..4.0);
            let sx = conn_start - v * (arrive + 2.0);
            let st = run_script(
                &Script {
                    path: &opath,
                    s0: sx,
                    v0: v,
                    target: &move |_| v,
                    lat: &no_lat,
                },
                1.0,
                2.0,
            );
            // Yield until the oncoming car is well past the intersection centre.
            let clear = arrive + (2.0 * ARM_IN + 6.0) / v + 1.0;
            holds.push(Hold {
                s: conn_start - 1.0,
                until: clear,
            });
            tracks.push(track(1, Category::Vehicle, 4.8, 2.1, st));
        }
        Turn::Right => {
            // A pedestrian waits on the far corner; a car passes east-west on the far side.
            let opath = LanePath::from_lanes(&map, &[10, 102, 22]).expect("crossing");
            let st = run_script(
                &Script {
                    path: &opath,
                    s0: 20.0,
                    v0: 8.0,
                    target: &|_| 8.0,
                    lat: &no_lat,
                },
                1.0,
                2.0,
            );
            tracks.push(track(1, Category::Vehicle, 4.8, 2.1, st));
        }
        Turn::Straight => {
            // Cross traffic from the south (arm 3) to the north, on its green.
            let cpath = LanePath::from_lanes(&map, &[13, 131, 21]).expect("cross");
            let v = 9.0;
            let t_pass = match light {
                Light::Red => rng.random_range::<f64, _>(4.0..6.0),
                _ => -1.5,
            };
            let sx = conn_start - v * (t_pass + 2.0);
            let st = run_script(
                &Script {
                    path: &cpath,
                    s0: sx,
                    v0: v,
                    target: &move |_| v,
                    lat: &no_lat,
                },
                1.0,
                2.0,
            );
            tracks.push(track(1, Category::Vehicle, 4.8, 2.1, st));
            if light == Light::Red {
                holds.push(Hold {
                    s: conn_start - 1.0,
                    until: 1e9,
                });
            }
        }
    }
    let ex = expert(&path, s0, v_ego, limit, &tracks, &holds, &no_lat);
    scenario(map, ex, tracks, route)
}

fn pedestrian(rng: &mut StdRng) -> Scenario {
    let limit = 12.0;
    let cx = 90.0;
    let map = straight_map(2, 300.0, limit, Some(cx));
    let route: Vec<LaneId> = (0..6).map(|k| lane_id(k, 0)).collect();
    let path = LanePath::from_lanes(&map, &route).expect("lane 0");
    let v = rng.random_range::<f64, _>(7.0..9.0);
    let t0 = rng.random_range::<f64, _>(0.5..2.0);
    // Walks north across both lanes at 1.2 m/s from y = -4.
    let states: Vec<AgentState> = (0..TOTAL)
        .map(|k| {
            let t = (k as f64 - HISTORY_STEPS as f64) * DT;
            let moving = t >= t0;
            let y = -4.0 + if moving { 1.2 * (t - t0) } else { 0.0 };
            AgentState {
                x: cx,
                y: y.min(14.0),
                heading: std::f64::consts::FRAC_PI_2,
                vx: 0.0,
                vy: if moving && y < 14.0 { 1.2 } else { 0.0 },
            }
        })
        .collect();
    let clear = t0 + (LANE_W + 4.0 + 2.5) / 1.2;
    let tracks = vec![track(1, Category::Pedestrian, 0.6, 0.6, states)];
    let holds = [Hold {
        s: cx - 3.0,
        until: clear,
    }];
    let front = REAR_TO_CENTER + EGO_LENGTH / 2.0;
    let ex = expert(
        &path,
        cx - 50.0 - front - 2.0 * v,
        v,
        limit,
        &tracks,
        &holds,
        &no_lat,
    );
    scenario(map, ex, tracks, route)
}

fn curve(rng: &mut StdRng) -> Scenario {
    let radius = rng.random_range::<f64, _>(30.0..45.0);
    let v = (0.8 * (3.6 * radius).sqrt()).min(12.0);
    let (map, route) = curve_map(radius, std::f64::consts::FRAC_PI_2, v + 2.0);
    let path = LanePath::from_lanes(&map, &route).expect("curve lanes");
    let ex = expert(&path, 40.0 - 2.0 * v, v, v, &[], &[], &no_lat);
    scenario(map, ex, vec![], route)
}

fn cones(rng: &mut StdRng) -> Scenario {
    let limit = 14.0;
    let map = straight_map(2, 400.0, limit, None);
    let route: Vec<LaneId> = (0..8).map(|k| lane_id(k, 0)).collect();
    let path = LanePath::from_lanes(&map, &route).expect("lane 0");
    let v = rng.random_range::<f64, _>(9.0..12.0);
    let x0 = rng.random_range::<f64, _>(60.0..90.0);
    // Cones just outside the right edge of the ego lane, every 6 m.
    let tracks = (0..6)
        .map(|i| {
            let st = AgentState {
                x: x0 + 6.0 * i as f64,
                y: -2.3,
                heading: 0.0,
                vx: 0.0,
                vy: 0.0,
            };
            track(
                10 + i as u64,
                Category::TrafficCone,
                0.5,
                0.5,
                vec![st; TOTAL],
            )
        })
        .collect::<Vec<_>>();
    let ex = expert(&path, 30.0 - 2.0 * v, v, limit, &tracks, &[], &no_lat);
    scenario(map, ex, tracks, route)
}
