//! A `VarMap`'s variables in a fixed order, their seeded initialisation, and the Polyak
//! averaging a target network follows its online network with.

use candle_core::Var;
use candle_nn::VarMap;

use crate::error::{Context, Result, TuneError};
use crate::train::init_from_scratch;

/// The variables of `vars`, sorted by name (the order an optimiser and an initialisation see
/// them in, so the same seed gives the same weights).
pub fn sorted_params(vars: &VarMap) -> Result<Vec<(String, Var)>> {
    let data = vars
        .data()
        .lock()
        .map_err(|_| TuneError::input("varmap", "poisoned lock"))?;
    let mut params: Vec<(String, Var)> = data.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(params)
}

/// Whether `name` is a LayerNorm scale in this module's naming: a 1-D `*.weight` of a layer
/// whose name starts with `ln` (what [`crate::rl::Mlp`] calls its norms).
fn is_ln_scale(name: &str) -> bool {
    name.strip_suffix(".weight")
        .and_then(|layer| layer.rsplit('.').next())
        .is_some_and(|last| last.starts_with("ln"))
}

/// Initialises every variable of `vars` from `seed` with [`init_from_scratch`] (LeCun-normal
/// matrices drawn in name order, zero biases), then sets LayerNorm scales to 1. Returns the
/// sorted variables, ready for [`crate::train::AdamW::new`].
pub fn init_seeded(vars: &VarMap, seed: u64) -> Result<Vec<(String, Var)>> {
    let params = sorted_params(vars)?;
    init_from_scratch(&params, seed)?;
    for (name, var) in &params {
        if var.rank() == 1 && is_ln_scale(name) {
            let ones = var.ones_like().context(format!("initialising `{name}`"))?;
            var.set(&ones).context(format!("initialising `{name}`"))?;
        }
    }
    Ok(params)
}

/// Pairs each variable of `target` with the one of the same name and shape in `online` (which
/// may hold more, e.g. an actor beside the critic).
fn pairs(target: &VarMap, online: &VarMap) -> Result<Vec<(String, Var, Var)>> {
    if std::ptr::eq(target, online) {
        return Err(TuneError::input(
            "target",
            "is the online VarMap itself; a target network needs its own variables",
        ));
    }
    let t = sorted_params(target)?;
    let o: std::collections::HashMap<String, Var> = sorted_params(online)?.into_iter().collect();
    t.into_iter()
        .map(|(tn, tv)| {
            let Some(ov) = o.get(&tn).cloned() else {
                return Err(TuneError::input(
                    "online",
                    format!("has no variable `{tn}`, which the target network has"),
                ));
            };
            if tv.dims() != ov.dims() {
                return Err(TuneError::input(
                    "target",
                    format!(
                        "variable `{tn}` has shape {:?}, the online one {:?}",
                        tv.dims(),
                        ov.dims()
                    ),
                ));
            }
            Ok((tn, tv, ov))
        })
        .collect()
}

/// Polyak averaging: every target variable becomes `(1 - tau) * target + tau * online`
/// (Cal-QL's `soft_target_update_rate`, 5e-3). Every target variable needs an online one of
/// the same name and shape; `online` may hold more.
pub fn soft_update(target: &VarMap, online: &VarMap, tau: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&tau) {
        return Err(TuneError::input("tau", format!("{tau}, must be in [0, 1]")));
    }
    for (name, tv, ov) in pairs(target, online)? {
        let what = || format!("soft update of `{name}`");
        let t = tv.as_tensor().detach();
        let o = ov.as_tensor().detach();
        let new =
            ((t * (1.0 - tau)).context(what())? + (o * tau).context(what())?).context(what())?;
        tv.set(&new).context(what())?;
    }
    Ok(())
}

/// Copies the online variable of each target variable's name into it exactly (a target
/// network's start); the same matching as [`soft_update`].
pub fn copy_params(target: &VarMap, online: &VarMap) -> Result<()> {
    for (name, tv, ov) in pairs(target, online)? {
        let src = ov
            .as_tensor()
            .detach()
            .copy()
            .context(format!("copying `{name}`"))?;
        tv.set(&src).context(format!("copying `{name}`"))?;
    }
    Ok(())
}
