//! Campaign-level acceptance: the expert scores >= 0.95 non-reactive on generated scenarios,
//! IDM lower, constant velocity lower still; throughput of IDM with all metrics.

use rudder_sim::driving::{run_campaign, Mode, PlannerKind};

const N: usize = 48;

fn table(p: PlannerKind, m: Mode) -> rudder_sim::driving::CampaignReport {
    let r = run_campaign(p, N, m, 7, None).expect("campaign runs");
    println!(
        "{p:?} {m:?}: score {:.3} speed {:.0}x",
        r.score, r.sim_speed
    );
    for (t, g) in &r.per_type {
        println!(
            "  {t:55} {:.3}  {}",
            g.score,
            g.metrics
                .iter()
                .filter(|(k, _)| *k != "score")
                .map(|(k, v)| format!("{}={v:.2}", &k[..k.len().min(8)]))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    r
}

#[test]
fn baselines_rank_as_expected() {
    let lr = table(PlannerKind::LogReplay, Mode::NonReactive);
    let idm = table(PlannerKind::Idm, Mode::NonReactive);
    let cv = table(PlannerKind::ConstantVelocity, Mode::NonReactive);
    let lr_r = table(PlannerKind::LogReplay, Mode::Reactive);
    let idm_r = table(PlannerKind::Idm, Mode::Reactive);
    eprintln!(
        "CLS-NR log replay {:.3} idm {:.3} cv {:.3}; CLS-R log replay {:.3} idm {:.3}",
        lr.score, idm.score, cv.score, lr_r.score, idm_r.score
    );
    for (t, g) in &lr.per_type {
        eprintln!("  log replay {t}: {:.3}", g.score);
    }
    assert!(lr.score >= 0.95, "log replay CLS-NR {}", lr.score);
    assert!(
        idm.score < lr.score,
        "idm {} vs expert {}",
        idm.score,
        lr.score
    );
    assert!(cv.score < idm.score, "cv {} vs idm {}", cv.score, idm.score);
    assert!(lr_r.score > 0.5 && idm_r.score > 0.3);
    assert_eq!(lr.per_type.len(), 12);
}
