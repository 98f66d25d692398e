use rudder_sim::driving::*;
#[test]
fn dbg() {
    for i in [3usize, 6, 7] {
        let s = generator::generate(7, i);
        let mut p = planners::LogReplayPlanner::default();
        let h = simulation::simulate(&s, &mut p, simulation::Mode::NonReactive).unwrap();
        for (k, e) in h.ego.iter().enumerate() {
            let fp = e.footprint();
            let bad: Vec<_> = fp
                .corners()
                .iter()
                .filter(|c| !s.map.on_any_lane(**c) && !s.map.in_drivable_area_layer(**c))
                .map(|c| (c.x, c.y))
                .collect();
            let ex = s.expert_at(k);
            if !bad.is_empty() || k % 30 == 0 {
                println!(
                    "{} k{k} ego ({:.2},{:.2},{:.2}) v{:.2} exp ({:.2},{:.2},{:.2}) bad {:?}",
                    s.scenario_type,
                    e.vehicle.x,
                    e.vehicle.y,
                    e.vehicle.heading,
                    e.vehicle.speed,
                    ex.x,
                    ex.y,
                    ex.heading,
                    bad
                );
            }
        }
        let c = metrics::comfort::signals(&h.ego).unwrap();
        let mx = |v: &Vec<f64>| v.iter().fold(0.0f64, |a, b| a.max(b.abs()));
        println!(
            "lon {:.2} lat {:.2} j {:.2} lj {:.2} yr {:.2} ya {:.2}",
            mx(&c.lon_accel),
            mx(&c.lat_accel),
            mx(&c.jerk),
            mx(&c.lon_jerk),
            mx(&c.yaw_rate),
            mx(&c.yaw_accel)
        );
        let col = metrics::collisions::evaluate(&s.map, &h.ego, &h.agents);
        println!("{:?}", col.events);
    }
}
