//! The declarative task format (TOML, after LIBERO's BDDL): object instances with placement,
//! table regions, goal predicates, instruction and step budget. Every error names the file and
//! the line it comes from.
//!
//! ```toml
//! [task]
//! id = "goal_bowl_on_plate"
//! instruction = "put the bowl on the plate"
//! max_steps = 300
//! manners = ["", "slowly", "from above"]   # optional: phrases appended per episode
//! goal = ["(On bowl plate)"]              # or e.g. "(At bowl 0.40 0.06 0.06)": on the table
//!                                         # within 0.06 m of (0.40, 0.06)
//!
//! [[region]]
//! name = "left"
//! min = [0.40, 0.10]
//! max = [0.55, 0.25]
//!
//! [[object]]
//! name = "bowl"
//! kind = "bowl"          # block | cylinder | bowl | plate | basket | cabinet | stove
//! color = "black"
//! size = [0.075, 0.075, 0.045]   # optional, not for cabinet / stove
//! region = "left"        # or: on = "other", in = "container", at = [x, y]
//! ```

use super::geom::Aabb;
use super::scene::{
    named_color, Joint, Kind, Object, Role, Scene, Support, MAX_GRASP_WIDTH, TABLE,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::ops::Range;
use thiserror::Error;
use toml::Spanned;

/// A task file problem, with where it is.
#[derive(Debug, Error, Clone, PartialEq)]
#[error("{file}:{line}: {message}")]
pub struct TaskError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// Init states generated per task.
pub const INIT_STATES: usize = 50;
/// Free space kept between objects placed on the table, so the open fingers fit between them.
pub const PLACE_CLEARANCE: f64 = 0.045;
const PLACE_TRIES: usize = 2000;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Predicate {
    On(String, String),
    In(String, String),
    Open(String),
    Closed(String),
    TurnedOn(String),
    TurnedOff(String),
    Above(String, String),
    LeftOf(String, String),
    RightOf(String, String),
    Near(String, String, f64),
    /// `(At obj x y r)`: `obj` rests directly on the table (not held, not on another object)
    /// with its bounds centre within `r` metres of `(x, y)` in the table plane.
    At(String, f64, f64, f64),
}

impl Predicate {
    pub fn args(&self) -> Vec<&str> {
        match self {
            Predicate::On(a, b)
            | Predicate::In(a, b)
            | Predicate::Above(a, b)
            | Predicate::LeftOf(a, b)
            | Predicate::RightOf(a, b)
            | Predicate::Near(a, b, _) => vec![a, b],
            Predicate::Open(a)
            | Predicate::Closed(a)
            | Predicate::TurnedOn(a)
            | Predicate::TurnedOff(a)
            | Predicate::At(a, ..) => vec![a],
        }
    }

    /// Whether the predicate holds in `scene` (objects in the gripper count as nowhere).
    pub fn holds(&self, scene: &Scene) -> bool {
        let get = |n: &str| scene.index(n).map(|i| (i, &scene.objects[i]));
        let resting = |i: usize| scene.objects[i].support != Support::Held;
        match self {
            Predicate::On(a, b) | Predicate::In(a, b) => {
                let (Some((ia, oa)), Some((ib, ob))) = (get(a), get(b)) else {
                    return false;
                };
                let Support::Part { obj, part } = oa.support else {
                    return false;
                };
                if obj != ib {
                    return false;
                }
                let role = ob.parts[part].role;
                let c = oa.bounds().centre();
                let inside = ob.part_box(part).contains_xy([c[0], c[1]], 0.0);
                let role_ok = match self {
                    Predicate::In(..) => role == Role::Floor,
                    _ => match ob.kind {
                        Kind::Stove => role == Role::Burner,
                        Kind::Cabinet => part == 4,
                        _ => true,
                    },
                };
                resting(ia) && inside && role_ok
            }
            Predicate::Open(a) => get(a).is_some_and(
                |(_, o)| matches!(o.joint, Joint::Slide { value, max } if value >= 0.75 * max),
            ),
            Predicate::Closed(a) => get(a).is_some_and(
                |(_, o)| matches!(o.joint, Joint::Slide { value, max } if value <= 0.05 * max),
            ),
            Predicate::TurnedOn(a) => get(a).is_some_and(|(_, o)| o.knob_on()),
            Predicate::TurnedOff(a) => get(a)
                .is_some_and(|(_, o)| matches!(o.joint, Joint::Knob { value, .. } if value < 0.1)),
            Predicate::Above(a, b) => {
                let (Some((ia, oa)), Some((_, ob))) = (get(a), get(b)) else {
                    return false;
                };
                let (ba, bb) = (oa.bounds(), ob.bounds());
                let c = ba.centre();
                resting(ia) && bb.contains_xy([c[0], c[1]], 0.0) && ba.min[2] >= bb.max[2] - 0.03
            }
            Predicate::LeftOf(a, b) | Predicate::RightOf(a, b) => {
                let (Some((ia, oa)), Some((_, ob))) = (get(a), get(b)) else {
                    return false;
                };
                let (ca, cb) = (oa.bounds().centre(), ob.bounds().centre());
                let dy = if matches!(self, Predicate::LeftOf(..)) {
                    ca[1] - cb[1]
                } else {
                    cb[1] - ca[1]
                };
                resting(ia) && dy >= 0.06 && (ca[0] - cb[0]).abs() <= 0.12
            }
            Predicate::Near(a, b, d) => {
                let (Some((ia, oa)), Some((_, ob))) = (get(a), get(b)) else {
                    return false;
                };
                let (ca, cb) = (oa.bounds().centre(), ob.bounds().centre());
                resting(ia) && (ca[0] - cb[0]).hypot(ca[1] - cb[1]) <= *d
            }
            Predicate::At(a, x, y, r) => get(a).is_some_and(|(_, o)| {
                let c = o.bounds().centre();
                o.support == Support::Table && (c[0] - x).hypot(c[1] - y) <= *r
            }),
        }
    }
}

/// How an object is placed at the start of an episode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Placement {
    Region(Aabb),
    On(usize),
    In(usize),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObjectSpec {
    pub name: String,
    pub kind: Kind,
    pub size: [f64; 3],
    pub color: [f32; 3],
    pub placement: Placement,
    /// Initial articulation as a fraction of its range (drawer pulled out, knob turned).
    pub joint: f64,
    line: usize,
}

/// A loaded, checked task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Task {
    pub id: String,
    pub instruction: String,
    pub max_steps: usize,
    /// Manner phrases; episode `k` uses `manners[k % len]` (empty string = none).
    pub manners: Vec<String>,
    pub goal: Vec<Predicate>,
    pub objects: Vec<ObjectSpec>,
    pub file: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    task: Spanned<RawTask>,
    #[serde(default)]
    region: Vec<Spanned<RawRegion>>,
    #[serde(default)]
    object: Vec<Spanned<RawObject>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    id: Spanned<String>,
    instruction: Spanned<String>,
    max_steps: Spanned<i64>,
    #[serde(default)]
    manners: Vec<Spanned<String>>,
    goal: Spanned<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegion {
    name: Spanned<String>,
    min: Spanned<Vec<f64>>,
    max: Spanned<Vec<f64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawObject {
    name: Spanned<String>,
    kind: Spanned<String>,
    color: Option<Spanned<String>>,
    size: Option<Spanned<Vec<f64>>>,
    region: Option<Spanned<String>>,
    at: Option<Spanned<Vec<f64>>>,
    on: Option<Spanned<String>>,
    #[serde(rename = "in")]
    inside: Option<Spanned<String>>,
    joint: Option<Spanned<f64>>,
}

struct Ctx<'a> {
    file: &'a str,
    src: &'a str,
}

impl Ctx<'_> {
    fn line(&self, span: Range<usize>) -> usize {
        let end = span.start.min(self.src.len());
        self.src.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn err(&self, span: Range<usize>, message: impl Into<String>) -> TaskError {
        TaskError {
            file: self.file.to_string(),
            line: self.line(span),
            message: message.into(),
        }
    }
}

fn manner_ok(s: &str) -> bool {
    s.chars().all(|c| c.is_ascii_lowercase() || c == ' ')
}

impl Task {
    /// Parses and checks a task file; `file` is only used in error messages.
    pub fn parse(file: &str, src: &str) -> Result<Task, TaskError> {
        let cx = Ctx { file, src };
        let raw: RawFile = toml::from_str(src).map_err(|e| TaskError {
            file: file.to_string(),
            line: e.span().map(|s| cx.line(s)).unwrap_or(1),
            message: e.message().trim().to_string(),
        })?;
        let t = raw.task.get_ref();
        if t.id.get_ref().trim().is_empty() {
            return Err(cx.err(t.id.span(), "task id is empty"));
        }
        if t.instruction.get_ref().trim().is_empty() {
            return Err(cx.err(t.instruction.span(), "instruction is empty"));
        }
        let max_steps = *t.max_steps.get_ref();
        if !(1..=100_000).contains(&max_steps) {
            return Err(cx.err(
                t.max_steps.span(),
                format!("max_steps must be in 1..=100000, got {max_steps}"),
            ));
        }
        let mut manners = Vec::new();
        for m in &t.manners {
            if !manner_ok(m.get_ref()) {
                return Err(cx.err(m.span(), "manner phrases are lowercase words"));
            }
            manners.push(m.get_ref().clone());
        }
        if manners.is_empty() {
            manners.push(String::new());
        }

        let mut regions: Vec<(String, Aabb)> = Vec::new();
        for r in &raw.region {
            let r = r.get_ref();
            let name = r.name.get_ref();
            if regions.iter().any(|(n, _)| n == name) {
                return Err(cx.err(r.name.span(), format!("region `{name}` defined twice")));
            }
            let xy = |v: &Spanned<Vec<f64>>| -> Result<[f64; 2], TaskError> {
                match v.get_ref().as_slice() {
                    [x, y] if x.is_finite() && y.is_finite() => Ok([*x, *y]),
                    _ => Err(cx.err(v.span(), "expected [x, y] in metres")),
                }
            };
            let (lo, hi) = (xy(&r.min)?, xy(&r.max)?);
            if !(lo[0] < hi[0] && lo[1] < hi[1]) {
                return Err(cx.err(r.min.span(), format!("region `{name}`: min must be < max")));
            }
            let b = Aabb::new([lo[0], lo[1], 0.0], [hi[0], hi[1], 0.0]);
            if !(TABLE.contains_xy([lo[0], lo[1]], 0.0) && TABLE.contains_xy([hi[0], hi[1]], 0.0)) {
                return Err(cx.err(
                    r.min.span(),
                    format!(
                        "region `{name}` leaves the table (x {:.2}..{:.2}, y {:.2}..{:.2})",
                        TABLE.min[0], TABLE.max[0], TABLE.min[1], TABLE.max[1]
                    ),
                ));
            }
            regions.push((name.clone(), b));
        }

        let mut objects: Vec<ObjectSpec> = Vec::new();
        for o in &raw.object {
            let line = cx.line(o.span());
            let o = o.get_ref();
            let name = o.name.get_ref();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(cx.err(o.name.span(), format!("bad object name `{name}`")));
            }
            if objects.iter().any(|x| &x.name == name) {
                return Err(cx.err(o.name.span(), format!("object `{name}` defined twice")));
            }
            let kind = Kind::parse(o.kind.get_ref()).ok_or_else(|| {
                cx.err(
                    o.kind.span(),
                    format!(
                        "unknown object kind `{}` (known: {})",
                        o.kind.get_ref(),
                        Kind::NAMES
                    ),
                )
            })?;
            let mut size = kind.default_size();
            if let Some(s) = &o.size {
                if !kind.sizable() {
                    return Err(cx.err(s.span(), format!("a {kind:?} has a fixed size")));
                }
                match s.get_ref().as_slice() {
                    [x, y, z]
                        if [x, y, z]
                            .iter()
                            .all(|v| v.is_finite() && **v > 0.005 && **v <= 0.4) =>
                    {
                        size = [*x, *y, *z]
                    }
                    _ => {
                        return Err(cx.err(
                            s.span(),
                            "size must be [x, y, z] with each in (0.005, 0.4] metres",
                        ))
                    }
                }
            }
            let color = match &o.color {
                None => [0.6, 0.6, 0.6],
                Some(c) => named_color(c.get_ref())
                    .ok_or_else(|| cx.err(c.span(), format!("unknown colour `{}`", c.get_ref())))?,
            };
            let given = [
                o.region.is_some(),
                o.at.is_some(),
                o.on.is_some(),
                o.inside.is_some(),
            ];
            if given.iter().filter(|g| **g).count() != 1 {
                return Err(cx.err(
                    o.name.span(),
                    format!("object `{name}` needs exactly one of region, at, on, in"),
                ));
            }
            let lookup = |s: &Spanned<String>| -> Result<usize, TaskError> {
                objects
                    .iter()
                    .position(|x| &x.name == s.get_ref())
                    .ok_or_else(|| {
                        cx.err(
                            s.span(),
                            format!(
                                "unknown object `{}` (objects are placed in file order)",
                                s.get_ref()
                            ),
                        )
                    })
            };
            let placement = if let Some(r) = &o.region {
                let (_, b) = regions
                    .iter()
                    .find(|(n, _)| n == r.get_ref())
                    .ok_or_else(|| cx.err(r.span(), format!("unknown region `{}`", r.get_ref())))?;
                Placement::Region(*b)
            } else if let Some(a) = &o.at {
                match a.get_ref().as_slice() {
                    [x, y] if TABLE.contains_xy([*x, *y], 0.0) => {
                        Placement::Region(Aabb::new([*x, *y, 0.0], [*x, *y, 0.0]))
                    }
                    _ => return Err(cx.err(a.span(), "at must be [x, y] on the table")),
                }
            } else if let Some(s) = &o.on {
                let i = lookup(s)?;
                if !objects[i].kind.can_support() {
                    return Err(cx.err(
                        s.span(),
                        format!(
                            "`{}` ({:?}) cannot support anything",
                            s.get_ref(),
                            objects[i].kind
                        ),
                    ));
                }
                Placement::On(i)
            } else if let Some(s) = &o.inside {
                let i = lookup(s)?;
                if !objects[i].kind.is_container() {
                    return Err(cx.err(
                        s.span(),
                        format!(
                            "`{}` ({:?}) is not a container",
                            s.get_ref(),
                            objects[i].kind
                        ),
                    ));
                }
                Placement::In(i)
            } else {
                return Err(cx.err(o.name.span(), "no placement"));
            };
            let joint = match &o.joint {
                None => 0.0,
                Some(j) => {
                    let v = *j.get_ref();
                    if !(matches!(kind, Kind::Cabinet | Kind::Stove) && (0.0..=1.0).contains(&v)) {
                        return Err(cx.err(
                            j.span(),
                            "joint is a fraction in [0, 1] and only for a cabinet or a stove",
                        ));
                    }
                    v
                }
            };
            objects.push(ObjectSpec {
                name: name.clone(),
                kind,
                size,
                color,
                placement,
                joint,
                line,
            });
        }

        let mut goal = Vec::new();
        for g in t.goal.get_ref() {
            goal.push(parse_predicate(&cx, g, &objects)?);
        }
        if goal.is_empty() {
            return Err(cx.err(t.goal.span(), "goal is empty"));
        }
        check_contradictions(&cx, t.goal.get_ref(), &goal)?;

        let task = Task {
            id: t.id.get_ref().clone(),
            instruction: t.instruction.get_ref().trim().to_string(),
            max_steps: max_steps as usize,
            manners,
            goal,
            objects,
            file: file.to_string(),
        };
        // A placement the sampler cannot satisfy is a file error, found now rather than mid-run.
        for k in 0..INIT_STATES {
            task.init_state(7, k)?;
        }
        Ok(task)
    }

    /// Reads and parses a task file from disk.
    pub fn load(path: &std::path::Path) -> Result<Task, TaskError> {
        let name = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|e| TaskError {
            file: name.clone(),
            line: 0,
            message: format!("cannot read: {e}"),
        })?;
        Task::parse(&name, &src)
    }

    /// The instruction of episode `k`, manner phrase appended.
    pub fn instruction_for(&self, k: usize) -> String {
        let m = &self.manners[k % self.manners.len()];
        if m.is_empty() {
            self.instruction.clone()
        } else {
            format!("{} {}", self.instruction, m)
        }
    }

    /// Init state `k` of the set drawn from `seed`: the same (seed, k) gives the same scene.
    pub fn init_state(&self, seed: u64, k: usize) -> Result<Scene, TaskError> {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.id.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        let mut rng = StdRng::seed_from_u64(
            h ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ^ (k as u64).wrapping_mul(0xd1b5_4a32_d192_ed03),
        );
        let mut scene = Scene {
            objects: Vec::with_capacity(self.objects.len()),
        };
        for spec in &self.objects {
            let mut obj = Object::new(&spec.name, spec.kind, spec.size, spec.color, [0.0; 3]);
            obj.joint = match obj.joint {
                Joint::Slide { max, .. } => Joint::Slide {
                    value: spec.joint * max,
                    max,
                },
                Joint::Knob { max, .. } => Joint::Knob {
                    value: spec.joint * max,
                    max,
                },
                Joint::None => Joint::None,
            };
            let local = obj.bounds();
            let err = |why: String| TaskError {
                file: self.file.clone(),
                line: spec.line,
                message: format!("unsatisfiable placement of `{}`: {why}", spec.name),
            };
            match &spec.placement {
                Placement::Region(r) => {
                    let mut placed = false;
                    for _ in 0..PLACE_TRIES {
                        let x = if r.max[0] > r.min[0] {
                            rng.random_range(r.min[0]..=r.max[0])
                        } else {
                            r.min[0]
                        };
                        let y = if r.max[1] > r.min[1] {
                            rng.random_range(r.min[1]..=r.max[1])
                        } else {
                            r.min[1]
                        };
                        let fp = local.translated([x, y, 0.0]);
                        let on_table = TABLE.contains_xy([fp.min[0], fp.min[1]], 0.0)
                            && TABLE.contains_xy([fp.max[0], fp.max[1]], 0.0);
                        let free = scene
                            .objects
                            .iter()
                            .all(|o| o.bounds().xy_gap(&fp) >= PLACE_CLEARANCE);
                        if on_table && free {
                            obj.pos = [x, y, 0.0];
                            placed = true;
                            break;
                        }
                        if r.max[0] == r.min[0] && r.max[1] == r.min[1] {
                            break;
                        }
                    }
                    if !placed {
                        return Err(err(format!(
                            "no spot {PLACE_CLEARANCE} m clear of the objects before it after {PLACE_TRIES} tries"
                        )));
                    }
                    obj.support = Support::Table;
                }
                Placement::On(t) | Placement::In(t) => {
                    let host = &scene.objects[*t];
                    let want_floor = matches!(spec.placement, Placement::In(_));
                    let target = host
                        .parts
                        .iter()
                        .enumerate()
                        .filter(|(_, p)| {
                            if want_floor {
                                p.role == Role::Floor
                            } else {
                                matches!(p.role, Role::Solid | Role::Burner | Role::Floor)
                            }
                        })
                        .map(|(i, _)| (i, host.part_box(i)))
                        .max_by(|a, b| a.1.max[2].total_cmp(&b.1.max[2]))
                        .map(|(_, b)| b);
                    let Some(tb) = target else {
                        return Err(err(format!("`{}` has no surface for it", host.name)));
                    };
                    let mut region = tb;
                    if host.kind == Kind::Cabinet && want_floor {
                        // Only the pulled-out part of the tray is open to the sky.
                        region.max[0] = host.pos[0] - 0.085;
                    }
                    let slack = [
                        (region.size()[0] - local.size()[0]) / 2.0 - 0.004,
                        (region.size()[1] - local.size()[1]) / 2.0 - 0.004,
                    ];
                    let c = region.centre();
                    let on_top = !want_floor;
                    if !on_top && (slack[0] < 0.0 || slack[1] < 0.0) {
                        return Err(err(format!("it does not fit inside `{}`", host.name)));
                    }
                    let jitter = |s: f64, rng: &mut StdRng| {
                        let s = s.clamp(0.0, 0.01);
                        if s > 0.0 {
                            rng.random_range(-s..=s)
                        } else {
                            0.0
                        }
                    };
                    let (jx, jy) = if on_top {
                        (jitter(0.01, &mut rng), jitter(0.01, &mut rng))
                    } else {
                        (jitter(slack[0], &mut rng), jitter(slack[1], &mut rng))
                    };
                    obj.pos = [c[0] + jx, c[1] + jy, 1.0];
                    scene.objects.push(obj);
                    let i = scene.objects.len() - 1;
                    scene.settle(i);
                    let host_i = *t;
                    let ok = match scene.objects[i].support {
                        Support::Part { obj, .. } => scene.carried_by(host_i).contains(&obj),
                        _ => false,
                    };
                    if !ok {
                        return Err(err(format!(
                            "it would not rest on `{}`",
                            scene.objects[host_i].name
                        )));
                    }
                    continue;
                }
            }
            scene.objects.push(obj);
        }
        if scene.worst_penetration() > 1e-6 {
            return Err(TaskError {
                file: self.file.clone(),
                line: 1,
                message: "objects interpenetrate in the initial state".into(),
            });
        }
        Ok(scene)
    }
}

fn parse_predicate(
    cx: &Ctx,
    g: &Spanned<String>,
    objects: &[ObjectSpec],
) -> Result<Predicate, TaskError> {
    let s = g.get_ref().trim();
    let inner = s
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| cx.err(g.span(), format!("predicate `{s}` must look like (On a b)")))?;
    let words: Vec<&str> = inner.split_whitespace().collect();
    let Some((&head, args)) = words.split_first() else {
        return Err(cx.err(g.span(), "empty predicate"));
    };
    let kind_of = |n: &str| -> Result<Kind, TaskError> {
        objects
            .iter()
            .find(|o| o.name == n)
            .map(|o| o.kind)
            .ok_or_else(|| cx.err(g.span(), format!("unknown object `{n}` in goal `{s}`")))
    };
    let arity = |n: usize| -> Result<(), TaskError> {
        if args.len() == n {
            Ok(())
        } else {
            Err(cx.err(
                g.span(),
                format!("`{head}` takes {n} argument(s), got {}", args.len()),
            ))
        }
    };
    // Trailing numbers (Near's distance, At's x y r) are not object names.
    let named = match head {
        "At" => 1,
        "Near" => 2,
        _ => args.len(),
    };
    let kinds: Vec<Kind> = args
        .iter()
        .take(named)
        .map(|a| kind_of(a))
        .collect::<Result<_, _>>()?;
    let movable = |i: usize| -> Result<(), TaskError> {
        let spec = objects.iter().find(|o| o.name == args[i]);
        let ok = spec.is_some_and(|o| {
            !matches!(
                o.kind,
                Kind::Cabinet | Kind::Stove | Kind::Basket | Kind::Plate
            ) && o.size[0].min(o.size[1]) <= MAX_GRASP_WIDTH
        });
        if ok {
            Ok(())
        } else {
            Err(cx.err(
                g.span(),
                format!(
                    "`{}` cannot be picked up, so `{s}` can never become true",
                    args[i]
                ),
            ))
        }
    };
    let distinct = || -> Result<(), TaskError> {
        if args.len() == 2 && args[0] == args[1] {
            Err(cx.err(g.span(), format!("`{s}` relates an object to itself")))
        } else {
            Ok(())
        }
    };
    let pred = match head {
        "On" | "Above" => {
            arity(2)?;
            distinct()?;
            movable(0)?;
            if !kinds[1].can_support() {
                return Err(cx.err(g.span(), format!("`{}` cannot support anything", args[1])));
            }
            if head == "On" {
                Predicate::On(args[0].into(), args[1].into())
            } else {
                Predicate::Above(args[0].into(), args[1].into())
            }
        }
        "In" => {
            arity(2)?;
            distinct()?;
            movable(0)?;
            if !kinds[1].is_container() {
                return Err(cx.err(g.span(), format!("`{}` is not a container", args[1])));
            }
            Predicate::In(args[0].into(), args[1].into())
        }
        "Open" | "Closed" => {
            arity(1)?;
            if kinds[0] != Kind::Cabinet {
                return Err(cx.err(g.span(), format!("`{}` has no drawer", args[0])));
            }
            if head == "Open" {
                Predicate::Open(args[0].into())
            } else {
                Predicate::Closed(args[0].into())
            }
        }
        "TurnedOn" | "TurnedOff" => {
            arity(1)?;
            if kinds[0] != Kind::Stove {
                return Err(cx.err(g.span(), format!("`{}` has no knob", args[0])));
            }
            if head == "TurnedOn" {
                Predicate::TurnedOn(args[0].into())
            } else {
                Predicate::TurnedOff(args[0].into())
            }
        }
        "LeftOf" | "RightOf" => {
            arity(2)?;
            distinct()?;
            movable(0)?;
            if head == "LeftOf" {
                Predicate::LeftOf(args[0].into(), args[1].into())
            } else {
                Predicate::RightOf(args[0].into(), args[1].into())
            }
        }
        "Near" => {
            if args.len() != 2 && args.len() != 3 {
                arity(2)?;
            }
            distinct()?;
            movable(0)?;
            let d = match args.get(2) {
                None => 0.15,
                Some(v) => v
                    .parse::<f64>()
                    .ok()
                    .filter(|d| d.is_finite() && *d > 0.0)
                    .ok_or_else(|| cx.err(g.span(), format!("bad distance `{v}`")))?,
            };
            Predicate::Near(args[0].into(), args[1].into(), d)
        }
        "At" => {
            arity(4)?;
            movable(0)?;
            let num = |i: usize, what: &str| -> Result<f64, TaskError> {
                args[i]
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| cx.err(g.span(), format!("bad {what} `{}` in `{s}`", args[i])))
            };
            let (x, y, r) = (num(1, "x")?, num(2, "y")?, num(3, "radius")?);
            if r <= 0.0 {
                return Err(cx.err(
                    g.span(),
                    format!("radius must be > 0 metres, got `{}` in `{s}`", args[3]),
                ));
            }
            if !TABLE.contains_xy([x, y], 0.0) {
                return Err(cx.err(
                    g.span(),
                    format!(
                        "({x}, {y}) in `{s}` is off the table (x {:.2}..{:.2}, y {:.2}..{:.2})",
                        TABLE.min[0], TABLE.max[0], TABLE.min[1], TABLE.max[1]
                    ),
                ));
            }
            Predicate::At(args[0].into(), x, y, r)
        }
        _ => {
            return Err(cx.err(
                g.span(),
                format!(
                    "unknown predicate `{head}` (known: On, In, Open, Closed, TurnedOn, TurnedOff, Above, LeftOf, RightOf, Near, At)"
                ),
            ))
        }
    };
    Ok(pred)
}

/// Goals that can never hold together.
fn check_contradictions(
    cx: &Ctx,
    raw: &[Spanned<String>],
    goal: &[Predicate],
) -> Result<(), TaskError> {
    use Predicate::*;
    for (j, b) in goal.iter().enumerate() {
        for a in &goal[..j] {
            let clash = match (a, b) {
                (Open(x), Closed(y)) | (Closed(x), Open(y)) => x == y,
                (TurnedOn(x), TurnedOff(y)) | (TurnedOff(x), TurnedOn(y)) => x == y,
                (On(x, p) | In(x, p), On(y, q) | In(y, q)) => x == y && p != q,
                (LeftOf(x, p), LeftOf(y, q)) | (RightOf(x, p), RightOf(y, q)) => x == q && y == p,
                (LeftOf(x, p), RightOf(y, q)) | (RightOf(x, p), LeftOf(y, q)) => x == y && p == q,
                // At needs the table under it, On / In another object.
                (At(x, ..), On(y, _) | In(y, _)) | (On(y, _) | In(y, _), At(x, ..)) => x == y,
                (At(x, ax, ay, ar), At(y, bx, by, br)) => {
                    x == y && (ax - bx).hypot(ay - by) > ar + br
                }
                _ => false,
            };
            if clash {
                return Err(cx.err(
                    raw[j].span(),
                    format!(
                        "contradictory goal: `{}` cannot hold together with an earlier goal",
                        raw[j].get_ref()
                    ),
                ));
            }
        }
    }
    Ok(())
}
