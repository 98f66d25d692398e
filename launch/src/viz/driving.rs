//! Rerun views of driving runs: the map (lanes, drivable area, crosswalks, stop lines), agents as
//! boxes labelled with their ids, the ego's plan at each step beside what it executed, nuPlan's
//! metrics as evaluated on the history so far, and the final score.
//!
//! Driving runs are simulated in lockstep (10 Hz steps, far faster than real time), so logging
//! happens on the simulating thread after each scenario; no control thread needs protecting.
//! Scenarios follow one another on the `sim_time` timeline (each starts after the previous one
//! ends) and each one's map replaces the previous one's at its start.

use super::VizOptions;
use rerun::blueprint::{
    Blueprint, BlueprintActivation, Horizontal, Spatial3DView, TextDocumentView, TimeSeriesView,
    Vertical,
};
use rerun::RecordingStream;
use rudder_robot::driving::{AgentObs, Category, Trajectory, P2};
use rudder_sim::driving::metrics::{ScenarioMetrics, METRIC_NAMES};
use rudder_sim::driving::scenario::{AgentBox, Scenario, DT};
use rudder_sim::driving::simulation::History;
use rudder_sim::driving::vehicle::Pacifica;

/// The layout a driving recording opens with.
pub fn driving_blueprint() -> Blueprint {
    Blueprint::new(Horizontal::new([
        Spatial3DView::new("scene").with_origin("world").into(),
        Vertical::new([
            TimeSeriesView::new("metrics so far")
                .with_origin("metrics")
                .into(),
            TimeSeriesView::new("ego").with_origin("ego").into(),
            TextDocumentView::new("scenario")
                .with_origin("scenario")
                .into(),
        ])
        .into(),
    ]))
}

/// Seconds between two scenarios on the `sim_time` timeline.
const GAP_S: f64 = 1.0;
/// How often the metrics are re-evaluated on the history so far (steps).
pub const METRIC_EVERY: usize = 10;

/// What the planner did per step, for the recording: the plan followed, and what a learned
/// planner reports (empty for the rule-based ones).
#[derive(Debug, Clone, Default)]
pub struct PlannerTrace {
    /// The plan followed at each step.
    pub plans: Vec<Trajectory>,
    /// Inference time of the plan made at each step (None where none was made).
    pub latency_ms: Vec<Option<f64>>,
    /// Guidance energy of that plan's samples before and after its steps.
    pub guidance: Vec<Option<(f64, f64)>>,
    /// In the wall-clock loop: the age of the plan followed at each tick.
    pub plan_age_ms: Vec<f64>,
}

pub struct DrivingRecorder {
    rec: RecordingStream,
    /// Where the next scenario starts on `sim_time`.
    offset_s: f64,
    /// The `step` timeline: one per simulated sample, over all scenarios, plus one per final
    /// result (so a scenario's last sample and its final metrics never share an index).
    step: i64,
}

fn p3(p: P2, z: f64) -> [f32; 3] {
    [p.x as f32, p.y as f32, z as f32]
}

fn closed(poly: &[P2], z: f64) -> Vec<[f32; 3]> {
    let mut v: Vec<[f32; 3]> = poly.iter().map(|p| p3(*p, z)).collect();
    if let Some(&first) = v.first() {
        v.push(first);
    }
    v
}

fn category_color(c: Category) -> rerun::Color {
    match c {
        Category::Vehicle => rerun::Color::from_rgb(70, 130, 230),
        Category::Pedestrian => rerun::Color::from_rgb(230, 120, 40),
        Category::Bicycle => rerun::Color::from_rgb(160, 90, 220),
        _ => rerun::Color::from_rgb(150, 150, 150),
    }
}

impl DrivingRecorder {
    pub fn open(opts: &VizOptions) -> anyhow::Result<Self> {
        let rec = super::open_stream(opts)?;
        if opts.blueprint {
            driving_blueprint()
                .send(&rec, BlueprintActivation::default())
                .map_err(|e| anyhow::anyhow!("cannot send the Rerun blueprint: {e}"))?;
        }
        rec.log_static("world", &rerun::ViewCoordinates::RIGHT_HAND_Z_UP())?;
        for name in METRIC_NAMES {
            rec.log_static(
                format!("metrics/{name}"),
                &rerun::SeriesLines::new().with_names([name]),
            )?;
        }
        Ok(Self {
            rec,
            offset_s: 0.0,
            step: 0,
        })
    }

    fn time(&self, t: f64) {
        self.rec
            .set_duration_secs("sim_time", (self.offset_s + t).max(0.0));
        self.rec.set_time_sequence("step", self.step);
    }

    /// Logs one finished scenario: map, every step's agents, ego, plan and trace, what the
    /// planner reported (`trace`: latency, guidance energy, plan age), the metrics
    /// so far every [`METRIC_EVERY`] steps (`partial[k]` for step `k * METRIC_EVERY`), and the
    /// final metrics.
    pub fn scenario(
        &mut self,
        s: &Scenario,
        planner: &str,
        hist: &History,
        trace: &PlannerTrace,
        partial: &[ScenarioMetrics],
        fin: &ScenarioMetrics,
    ) -> anyhow::Result<()> {
        let r = &self.rec;
        self.time(0.0);
        self.map(s)?;
        r.log(
            "scenario/description",
            &rerun::TextDocument::from_markdown(format!(
                "**{}** (`{}`), planner `{planner}`",
                s.scenario_type, s.token
            )),
        )?;
        let mut executed: Vec<[f32; 3]> = Vec::with_capacity(hist.ego.len());
        for (k, ego) in hist.ego.iter().enumerate() {
            if k > 0 {
                self.step += 1;
            }
            self.time(k as f64 * DT);
            let r = &self.rec;
            let fp = ego.footprint();
            r.log(
                "world/ego",
                &rerun::Boxes3D::from_centers_and_half_sizes(
                    [p3(fp.center, 0.8)],
                    [[(fp.length / 2.0) as f32, (fp.width / 2.0) as f32, 0.8f32]],
                )
                .with_quaternions([rerun::Quaternion::from_xyzw(yaw_quat(fp.heading))])
                .with_colors([rerun::Color::from_rgb(40, 200, 90)])
                .with_labels(["ego"]),
            )?;
            executed.push(p3(ego.rear_axle(), 0.05));
            r.log(
                "world/ego_executed",
                &rerun::LineStrips3D::new([executed.clone()])
                    .with_colors([rerun::Color::from_rgb(40, 200, 90)])
                    .with_radii([0.15]),
            )?;
            if let Some(plan) = trace.plans.get(k) {
                let pts: Vec<[f32; 3]> = plan
                    .points
                    .iter()
                    .map(|p| [p.x as f32, p.y as f32, 0.1])
                    .collect();
                r.log(
                    "world/ego_plan",
                    &rerun::LineStrips3D::new([pts])
                        .with_colors([rerun::Color::from_rgb(255, 170, 0)])
                        .with_radii([0.2]),
                )?;
            }
            if let Some(agents) = hist.agents.get(k) {
                self.agents(agents)?;
            }
            let r = &self.rec;
            if let Some(Some(ms)) = trace.latency_ms.get(k) {
                r.log("planner/latency_ms", &rerun::Scalars::single(*ms))?;
            }
            if let Some(Some((before, after))) = trace.guidance.get(k) {
                r.log(
                    "planner/guidance_energy_before",
                    &rerun::Scalars::single(*before),
                )?;
                r.log(
                    "planner/guidance_energy_after",
                    &rerun::Scalars::single(*after),
                )?;
            }
            if let Some(age) = trace.plan_age_ms.get(k) {
                r.log("planner/plan_age_ms", &rerun::Scalars::single(*age))?;
            }
            r.log("ego/speed", &rerun::Scalars::single(ego.vehicle.speed))?;
            r.log(
                "ego/acceleration",
                &rerun::Scalars::single(ego.vehicle.acceleration),
            )?;
            if k % METRIC_EVERY == 0 {
                if let Some(m) = partial.get(k / METRIC_EVERY) {
                    for (name, v) in METRIC_NAMES.iter().zip(m.values()) {
                        r.log(format!("metrics/{name}"), &rerun::Scalars::single(v))?;
                    }
                }
            }
        }
        let end = hist.ego.len().saturating_sub(1) as f64 * DT;
        self.step += 1;
        self.time(end);
        let r = &self.rec;
        for (name, v) in METRIC_NAMES.iter().zip(fin.values()) {
            r.log(format!("metrics/{name}"), &rerun::Scalars::single(v))?;
        }
        let table: String = METRIC_NAMES
            .iter()
            .zip(fin.values())
            .map(|(n, v)| format!("| {n} | {v:.3} |\n"))
            .collect();
        r.log(
            "scenario/result",
            &rerun::TextDocument::from_markdown(format!(
                "**{}**: score **{:.3}**\n\n| metric | value |\n|---|---|\n{table}",
                s.token, fin.score
            )),
        )?;
        self.offset_s += end + GAP_S;
        self.step += 1;
        Ok(())
    }

    /// The `step` index the next scenario's first sample gets.
    pub fn next_step(&self) -> i64 {
        self.step
    }

    fn map(&self, s: &Scenario) -> anyhow::Result<()> {
        let r = &self.rec;
        let m = &s.map;
        let areas: Vec<Vec<[f32; 3]>> = m.drivable_areas.iter().map(|a| closed(a, 0.0)).collect();
        r.log(
            "world/map/drivable_area",
            &rerun::LineStrips3D::new(areas)
                .with_colors([rerun::Color::from_rgb(90, 90, 90)])
                .with_radii([0.1]),
        )?;
        let centre: Vec<Vec<[f32; 3]>> = m
            .lanes
            .iter()
            .map(|l| l.centerline.points.iter().map(|p| p3(*p, 0.02)).collect())
            .collect();
        r.log(
            "world/map/lane_centerlines",
            &rerun::LineStrips3D::new(centre)
                .with_colors([rerun::Color::from_rgb(200, 200, 120)])
                .with_radii([0.05]),
        )?;
        let edges: Vec<Vec<[f32; 3]>> = m
            .lanes
            .iter()
            .flat_map(|l| [&l.left.points, &l.right.points])
            .map(|pts| pts.iter().map(|p| p3(*p, 0.01)).collect())
            .collect();
        r.log(
            "world/map/lane_boundaries",
            &rerun::LineStrips3D::new(edges)
                .with_colors([rerun::Color::from_rgb(220, 220, 220)])
                .with_radii([0.05]),
        )?;
        let route: Vec<Vec<[f32; 3]>> = s
            .route
            .iter()
            .filter_map(|id| m.lane(*id))
            .map(|l| l.centerline.points.iter().map(|p| p3(*p, 0.03)).collect())
            .collect();
        r.log(
            "world/map/route",
            &rerun::LineStrips3D::new(route)
                .with_colors([rerun::Color::from_rgb(60, 170, 255)])
                .with_radii([0.12]),
        )?;
        let crosswalks: Vec<Vec<[f32; 3]>> = m
            .crosswalks
            .iter()
            .map(|c| closed(&c.polygon, 0.02))
            .collect();
        r.log(
            "world/map/crosswalks",
            &rerun::LineStrips3D::new(crosswalks)
                .with_colors([rerun::Color::from_rgb(250, 250, 250)])
                .with_radii([0.08]),
        )?;
        let stops: Vec<Vec<[f32; 3]>> = m
            .stop_lines
            .iter()
            .map(|c| closed(&c.polygon, 0.02))
            .collect();
        r.log(
            "world/map/stop_lines",
            &rerun::LineStrips3D::new(stops)
                .with_colors([rerun::Color::from_rgb(230, 50, 50)])
                .with_radii([0.1]),
        )?;
        Ok(())
    }

    fn agents(&self, agents: &[AgentObs]) -> anyhow::Result<()> {
        let mut centres = Vec::with_capacity(agents.len());
        let mut halves = Vec::with_capacity(agents.len());
        let mut quats = Vec::with_capacity(agents.len());
        let mut colors = Vec::with_capacity(agents.len());
        let mut labels = Vec::with_capacity(agents.len());
        for a in agents {
            let b = a.bbox();
            let h = if a.category.is_agent() { 0.8 } else { 0.4 };
            centres.push(p3(b.center, h));
            halves.push([(b.length / 2.0) as f32, (b.width / 2.0) as f32, h as f32]);
            quats.push(rerun::Quaternion::from_xyzw(yaw_quat(b.heading)));
            colors.push(category_color(a.category));
            labels.push(format!("{} {}", a.category.as_str(), a.id));
        }
        self.rec.log(
            "world/agents",
            &rerun::Boxes3D::from_centers_and_half_sizes(centres, halves)
                .with_quaternions(quats)
                .with_colors(colors)
                .with_labels(labels),
        )?;
        Ok(())
    }

    /// Flushes everything written so far.
    pub fn finish(self) -> anyhow::Result<()> {
        self.rec
            .flush_blocking()
            .map_err(|e| anyhow::anyhow!("cannot flush the recording: {e}"))
    }
}

fn yaw_quat(yaw: f64) -> [f32; 4] {
    let h = yaw / 2.0;
    [0.0, 0.0, h.sin() as f32, h.cos() as f32]
}
