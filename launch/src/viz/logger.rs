//! The logger thread: drains the record channel into a Rerun recording.

use super::{EpisodeSetup, LoopSample, Record, Recorder, Sink, TickRecord, VizOptions};
use rerun::blueprint::{
    Blueprint, BlueprintActivation, Horizontal, Spatial2DView, Spatial3DView, TextDocumentView,
    TimeSeriesView, Vertical,
};
use rerun::{RecordingStream, RecordingStreamBuilder};
use rudder_robot::ur5::UR_JOINT_NAMES;
use rudder_sim::tabletop::physics::{hand_boxes, FLANGE_TO_TCP, MAX_OPENING};
use rudder_sim::tabletop::scene::{Joint, Scene, TABLE};
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::JoinHandle;

/// What the logger did, returned when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LoggerReport {
    pub ticks: u64,
    pub chunks: u64,
    pub images: u64,
    /// Records the senders dropped because the queue was full.
    pub dropped: u64,
}

/// A running logger: send through `recorder`, then `finish` to flush and close the file.
pub struct LoggerHandle {
    pub recorder: Recorder,
    join: JoinHandle<anyhow::Result<LoggerReport>>,
}

impl LoggerHandle {
    /// Closes this handle's sender and waits for the logger to drain and flush. Other clones
    /// of the recorder must have been dropped (or closed) first.
    pub fn finish(mut self) -> anyhow::Result<LoggerReport> {
        // Only the counter: a cloned sender would keep the channel open for ever.
        let dropped_counter = std::sync::Arc::clone(&self.recorder.dropped);
        self.recorder.close();
        let mut report = self
            .join
            .join()
            .map_err(|_| anyhow::anyhow!("the Rerun logger thread panicked"))??;
        report.dropped = dropped_counter.load(std::sync::atomic::Ordering::Relaxed);
        Ok(report)
    }
}

/// The recording opens arranged: 3D scene left, cameras in the middle, plots right.
pub fn blueprint() -> Blueprint {
    Blueprint::new(Horizontal::new([
        Spatial3DView::new("scene").with_origin("world").into(),
        Vertical::new([
            Spatial2DView::new("agentview")
                .with_origin("cameras/agentview")
                .into(),
            Spatial2DView::new("wrist")
                .with_origin("cameras/wrist")
                .into(),
            TextDocumentView::new("task").with_origin("task").into(),
        ])
        .into(),
        Vertical::new([
            TimeSeriesView::new("joints: commanded vs measured")
                .with_origin("joints")
                .into(),
            TimeSeriesView::new("loop timing")
                .with_origin("timing")
                .into(),
            TimeSeriesView::new("safety").with_origin("safety").into(),
        ])
        .into(),
    ]))
}

/// Opens the recording `opts` names (file or gRPC), with only our own timelines.
pub fn open_stream(opts: &VizOptions) -> anyhow::Result<RecordingStream> {
    let app = rerun::ApplicationId::try_from(opts.application_id.clone())
        .map_err(|e| anyhow::anyhow!("bad Rerun application id `{}`: {e}", opts.application_id))?;
    let mut b = RecordingStreamBuilder::new(app);
    if let Some(id) = &opts.recording_id {
        b = b.recording_id(id.clone());
    }
    let rec = match &opts.sink {
        Sink::File(p) => b
            .save(p)
            .map_err(|e| anyhow::anyhow!("cannot write the recording {}: {e}", p.display()))?,
        Sink::Connect(url) => b
            .connect_grpc_opts(url.as_str())
            .map_err(|e| anyhow::anyhow!("cannot connect to the Rerun viewer at {url}: {e}"))?,
    };
    // Only our own timelines: `log_time` would make every recording differ.
    rec.set_log_time_enabled(false);
    rec.set_log_tick_enabled(false);
    Ok(rec)
}

/// Opens the recording and starts the logger thread with a queue of `capacity` records.
pub fn spawn_logger(opts: &VizOptions, capacity: usize) -> anyhow::Result<LoggerHandle> {
    let rec = open_stream(opts)?;
    if opts.blueprint {
        blueprint()
            .send(&rec, BlueprintActivation::default())
            .map_err(|e| anyhow::anyhow!("cannot send the Rerun blueprint: {e}"))?;
    }
    let (tx, rx) = sync_channel(capacity.max(1));
    let wall = opts.wall_time;
    let join = std::thread::Builder::new()
        .name("rudder-rerun".into())
        .spawn(move || run(rx, rec, wall))
        .map_err(|e| anyhow::anyhow!("cannot start the Rerun logger thread: {e}"))?;
    Ok(LoggerHandle {
        recorder: Recorder::new(tx),
        join,
    })
}

fn run(rx: Receiver<Record>, rec: RecordingStream, wall: bool) -> anyhow::Result<LoggerReport> {
    let mut st = State {
        rec,
        wall,
        setup: None,
        trace: Vec::new(),
        last_objects: Vec::new(),
        report: LoggerReport::default(),
    };
    st.statics()?;
    for r in rx {
        st.record(r)?;
    }
    st.rec
        .flush_blocking()
        .map_err(|e| anyhow::anyhow!("flushing the recording failed: {e}"))?;
    Ok(st.report)
}

struct State {
    rec: RecordingStream,
    wall: bool,
    setup: Option<EpisodeSetup>,
    trace: Vec<[f32; 3]>,
    last_objects: Vec<[f64; 4]>,
    report: LoggerReport,
}

fn f3(v: [f64; 3]) -> [f32; 3] {
    v.map(|x| x as f32)
}

fn rgb(c: [f32; 3]) -> rerun::Color {
    let b = |x: f32| (x.clamp(0.0, 1.0) * 255.0).round() as u8;
    rerun::Color::from_rgb(b(c[0]), b(c[1]), b(c[2]))
}

/// Longest end-effector trace kept (points).
const TRACE_LEN: usize = 4000;

impl State {
    fn time(&self, tick: Option<u64>, sim_time: f64, wall_time: f64) {
        if let Some(t) = tick {
            self.rec.set_time_sequence("tick", t as i64);
        }
        self.rec.set_duration_secs("sim_time", sim_time.max(0.0));
        if self.wall {
            self.rec.set_duration_secs("wall_time", wall_time.max(0.0));
        }
    }

    fn statics(&self) -> anyhow::Result<()> {
        let r = &self.rec;
        r.log_static("world", &rerun::ViewCoordinates::RIGHT_HAND_Z_UP())?;
        let c = [
            (TABLE.min[0] + TABLE.max[0]) / 2.0,
            (TABLE.min[1] + TABLE.max[1]) / 2.0,
            (TABLE.min[2] + TABLE.max[2]) / 2.0,
        ];
        let h = [
            (TABLE.max[0] - TABLE.min[0]) / 2.0,
            (TABLE.max[1] - TABLE.min[1]) / 2.0,
            (TABLE.max[2] - TABLE.min[2]) / 2.0,
        ];
        r.log_static(
            "world/table",
            &rerun::Boxes3D::from_centers_and_half_sizes([f3(c)], [f3(h)])
                .with_colors([rerun::Color::from_rgb(150, 120, 90)])
                .with_fill_mode(rerun::FillMode::Solid),
        )?;
        for name in UR_JOINT_NAMES.iter() {
            r.log_static(
                format!("joints/{name}/commanded"),
                &rerun::SeriesLines::new().with_names(["commanded"]),
            )?;
            r.log_static(
                format!("joints/{name}/measured"),
                &rerun::SeriesLines::new().with_names(["measured"]),
            )?;
        }
        Ok(())
    }

    fn record(&mut self, r: Record) -> anyhow::Result<()> {
        match r {
            Record::Episode(s) => self.episode(*s),
            Record::Tick(t) => self.tick(&t),
            Record::Chunk {
                tick,
                sim_time,
                wall_time,
                path,
                latency_ms,
            } => {
                self.report.chunks += 1;
                self.time(Some(tick), sim_time, wall_time);
                let pts: Vec<[f32; 3]> = path.iter().map(|p| f3(*p)).collect();
                self.rec.log(
                    "world/plan/chunk",
                    &rerun::LineStrips3D::new([pts.clone()])
                        .with_colors([rerun::Color::from_rgb(255, 160, 0)])
                        .with_radii([0.004]),
                )?;
                self.rec.log(
                    "world/plan/chunk_points",
                    &rerun::Points3D::new(pts)
                        .with_colors([rerun::Color::from_rgb(255, 160, 0)])
                        .with_radii([0.007]),
                )?;
                if self.wall {
                    self.rec.log(
                        "timing/inference_latency_ms",
                        &rerun::Scalars::single(latency_ms),
                    )?;
                }
                Ok(())
            }
            Record::Images {
                tick,
                sim_time,
                wall_time,
                images,
            } => {
                self.time(Some(tick), sim_time, wall_time);
                for (name, img) in images {
                    self.report.images += 1;
                    self.rec.log(
                        format!("cameras/{name}"),
                        &rerun::Image::from_rgb24(img.data, [img.width, img.height]),
                    )?;
                }
                Ok(())
            }
            Record::Loop(s) => self.loop_sample(&s),
            Record::Reward {
                tick,
                sim_time,
                wall_time,
                p_success,
                verdict,
                truth,
            } => {
                self.time(Some(tick), sim_time, wall_time);
                self.rec
                    .log("reward/p_success", &rerun::Scalars::single(p_success))?;
                self.rec.log(
                    "reward/classifier_says_done",
                    &rerun::Scalars::single(f64::from(verdict)),
                )?;
                self.rec.log(
                    "reward/simulator_success",
                    &rerun::Scalars::single(f64::from(truth)),
                )?;
                Ok(())
            }
            Record::Result {
                sim_time,
                wall_time,
                success,
                text,
            } => {
                self.time(None, sim_time, wall_time);
                self.rec
                    .log("task/success", &rerun::Scalars::single(f64::from(success)))?;
                self.rec.log(
                    "task/result",
                    &rerun::TextDocument::from_markdown(text.as_str()),
                )?;
                Ok(())
            }
        }
    }

    fn episode(&mut self, s: EpisodeSetup) -> anyhow::Result<()> {
        self.trace.clear();
        self.last_objects.clear();
        let text = format!(
            "# {}\n\n**Instruction:** {}\n\nEpisode {} at {} Hz",
            s.task, s.instruction, s.episode, s.rate_hz
        );
        self.rec.log(
            "task/instruction",
            &rerun::TextDocument::from_markdown(text.as_str()),
        )?;
        if let Some(scene) = &s.scene {
            let labels: Vec<String> = scene.objects.iter().map(|o| o.name.clone()).collect();
            self.rec.log(
                "world/objects/names",
                &rerun::TextDocument::new(labels.join(", ")),
            )?;
        }
        self.setup = Some(s);
        Ok(())
    }

    fn tick(&mut self, t: &TickRecord) -> anyhow::Result<()> {
        self.report.ticks += 1;
        self.time(Some(t.tick), t.sim_time, t.wall_time);
        let r = &self.rec;
        for (j, name) in UR_JOINT_NAMES.iter().enumerate() {
            r.log(
                format!("joints/{name}/commanded"),
                &rerun::Scalars::single(t.commanded[j]),
            )?;
            r.log(
                format!("joints/{name}/measured"),
                &rerun::Scalars::single(t.measured[j]),
            )?;
        }
        r.log(
            "joints/gripper/commanded",
            &rerun::Scalars::single(t.gripper_commanded),
        )?;
        r.log(
            "joints/gripper/measured",
            &rerun::Scalars::single(t.gripper_measured),
        )?;
        if self.wall && t.period_error_us.is_finite() {
            r.log(
                "timing/period_error_us",
                &rerun::Scalars::single(t.period_error_us),
            )?;
        }
        r.log(
            "safety/refused_contacts",
            &rerun::Scalars::single(t.refused_contacts as f64),
        )?;
        let Some(setup) = &self.setup else {
            return Ok(());
        };
        // The arm: one transform per joint frame and a capsule per link, from FK.
        let frames = setup.model.fk_all(&t.measured);
        let mut starts = Vec::with_capacity(frames.len());
        let mut ends = Vec::with_capacity(frames.len());
        let mut prev = [0.0f32; 3];
        for (i, f) in frames.iter().enumerate() {
            let p = f.translation.vector;
            let q = f.rotation.quaternion();
            let pos = [p.x as f32, p.y as f32, p.z as f32];
            r.log(
                format!("world/arm/frame_{i}"),
                &rerun::Transform3D::from_translation_rotation(
                    pos,
                    rerun::Quaternion::from_xyzw([q.i as f32, q.j as f32, q.k as f32, q.w as f32]),
                ),
            )?;
            starts.push(prev);
            ends.push(pos);
            prev = pos;
        }
        r.log(
            "world/arm/links",
            &rerun::Capsules3D::from_endpoints_and_radii(starts, ends, [0.035f32; 7])
                .with_colors([rerun::Color::from_rgb(170, 180, 200)]),
        )?;
        let flange = frames[6];
        let width = ((1.0 - t.gripper_measured) / 2.0 * MAX_OPENING).clamp(0.0, MAX_OPENING);
        let fingers = hand_boxes(&flange, width);
        let (c, h): (Vec<[f32; 3]>, Vec<[f32; 3]>) = fingers
            .iter()
            .map(|b| {
                (
                    f3([0, 1, 2].map(|k| (b.min[k] + b.max[k]) / 2.0)),
                    f3([0, 1, 2].map(|k| (b.max[k] - b.min[k]) / 2.0)),
                )
            })
            .unzip();
        r.log(
            "world/arm/gripper",
            &rerun::Boxes3D::from_centers_and_half_sizes(c, h)
                .with_colors([rerun::Color::from_rgb(60, 60, 70)])
                .with_fill_mode(rerun::FillMode::Solid),
        )?;
        let tcp = flange.translation.vector
            + flange.rotation * nalgebra::Vector3::new(0.0, 0.0, FLANGE_TO_TCP);
        let tcp = [tcp.x as f32, tcp.y as f32, tcp.z as f32];
        if self.trace.len() >= TRACE_LEN {
            self.trace.remove(0);
        }
        self.trace.push(tcp);
        r.log(
            "world/ee_trace",
            &rerun::LineStrips3D::new([self.trace.clone()])
                .with_colors([rerun::Color::from_rgb(40, 160, 255)])
                .with_radii([0.003]),
        )?;
        r.log(
            "world/ee",
            &rerun::Points3D::new([tcp])
                .with_colors([rerun::Color::from_rgb(40, 160, 255)])
                .with_radii([0.01]),
        )?;
        // Objects: only when something moved.
        if let Some(scene) = &setup.scene {
            let n = (t.n_objects as usize).min(scene.objects.len());
            let now: Vec<[f64; 4]> = t.objects[..n]
                .iter()
                .map(|o| [o.pos[0], o.pos[1], o.pos[2], o.joint])
                .collect();
            if now != self.last_objects {
                log_objects(r, scene, t)?;
                self.last_objects = now;
            }
        }
        Ok(())
    }

    fn loop_sample(&self, s: &LoopSample) -> anyhow::Result<()> {
        self.time(None, s.sim_time, s.wall_time);
        let r = &self.rec;
        r.log(
            "safety/clamped_commands",
            &rerun::Scalars::single(s.clamped_commands as f64),
        )?;
        r.log(
            "safety/held_commands",
            &rerun::Scalars::single(s.held_commands as f64),
        )?;
        r.log(
            "safety/interventions",
            &rerun::Scalars::single(s.interventions as f64),
        )?;
        r.log(
            "safety/hold_ticks",
            &rerun::Scalars::single(s.hold_ticks as f64),
        )?;
        if self.wall {
            r.log(
                "timing/missed_ticks",
                &rerun::Scalars::single(s.missed_ticks as f64),
            )?;
            r.log(
                "timing/period_error_p99_us",
                &rerun::Scalars::single(s.period_error_p99_us),
            )?;
            r.log(
                "timing/inference_latency_p50_ms",
                &rerun::Scalars::single(s.inference_latency_p50_ms),
            )?;
        }
        Ok(())
    }
}

fn log_objects(r: &RecordingStream, scene: &Scene, t: &TickRecord) -> anyhow::Result<()> {
    let mut scene = scene.clone();
    for (o, s) in scene.objects.iter_mut().zip(t.objects.iter()) {
        o.pos = s.pos;
        match &mut o.joint {
            Joint::Slide { value, .. } | Joint::Knob { value, .. } => *value = s.joint,
            Joint::None => {}
        }
    }
    let mut centers = Vec::new();
    let mut halves = Vec::new();
    let mut colors = Vec::new();
    let mut labels = Vec::new();
    for o in &scene.objects {
        for (i, b) in o.boxes() {
            centers.push(f3([0, 1, 2].map(|k| (b.min[k] + b.max[k]) / 2.0)));
            halves.push(f3([0, 1, 2].map(|k| (b.max[k] - b.min[k]) / 2.0)));
            colors.push(rgb(o.parts[i].color));
            labels.push(if i == 0 {
                o.name.clone()
            } else {
                String::new()
            });
        }
    }
    r.log(
        "world/objects",
        &rerun::Boxes3D::from_centers_and_half_sizes(centers, halves)
            .with_colors(colors)
            .with_labels(labels)
            .with_fill_mode(rerun::FillMode::Solid),
    )?;
    Ok(())
}
