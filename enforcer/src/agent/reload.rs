//! SIGHUP: the settings resolved again and applied in place, and the protected cgroups, which
//! change as services restart.
use anyhow::{Context, Result};

use super::Agent;
use crate::{
    config::{Settings, flags::RunArgs},
    observe::notify,
};

impl Agent {
    /// SIGHUP: the settings resolved again from the same flags and the config file as it is
    /// now, applied without detaching (policy, protections, threshold, caps, dry run). What the
    /// kernel side was loaded with (cgroup, pin directory, map size) or the metrics listener
    /// needs a restart: such a reload, or one with a bad value, is refused whole and the agent
    /// goes on as it was. Returns the new interval when it changed.
    pub(super) fn reload(&mut self, args: &RunArgs) -> Option<u64> {
        notify::notify("RELOADING=1");
        let applied = self.try_reload(args);
        notify::notify("READY=1");
        match applied {
            Ok(interval) => interval,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "reload refused; the agent goes on with the settings it had");
                None
            }
        }
    }

    fn try_reload(&mut self, args: &RunArgs) -> Result<Option<u64>> {
        let new = Settings::resolve(args.clone())?;
        let fixed = self.settings.needs_restart(&new);
        if !fixed.is_empty() {
            anyhow::bail!("{} cannot change without a restart", fixed.join(", "));
        }
        let meter = new.meter();
        meter.check()?;
        let protected = new.protected_cgroup_ids()?;
        if let Err(e) = self.loaded.record_settings(&serde_json::to_string(&new).context("serialising settings")?) {
            tracing::warn!(error = %format!("{e:#}"), "the reloaded settings apply, but `enforcer status` shows the old ones");
        }
        {
            let mut c = self.act.containment.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            c.set_limits(super::limits(&new))?;
            c.exempt(&new.protect_cidrs)?;
        }
        if let Some(fleet) = &self.fleet {
            fleet.set_dry_run(new.dry_run, &self.act.containment);
        }
        self.judge.set_policy(new.policy(protected));
        self.act.storm.per_minute = new.max_kills_per_minute;
        self.sense.meter = meter;
        self.metrics.threshold.set(new.threshold as i64);
        self.metrics.dry_run.set(i64::from(new.dry_run));
        if new.dry_run != self.settings.dry_run {
            self.act.reported.clear();
        }
        let interval = (new.interval_ms != self.settings.interval_ms).then_some(new.interval_ms);
        tracing::info!(
            threshold = new.threshold, pressure = self.sense.meter.name(), fairness = %new.fairness,
            policy = new.policy.name(), stall_ms = new.stall_ms, interval_ms = new.interval_ms, dry_run = new.dry_run,
            "settings reloaded{}", if new.dry_run { " (dry run: nothing will be destroyed)" } else { "" }
        );
        self.settings = new;
        Ok(interval)
    }

    /// A restarted service gets a new cgroup (a new id), and new children appear.
    pub(super) fn refresh_protected_cgroups(&mut self) {
        if self.settings.protect_cgroups.is_empty() {
            return;
        }
        match self.settings.protected_cgroup_ids() {
            Ok(ids) => self.judge.policy_mut().protect.cgroups = ids,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "re-reading --protect-cgroup; keeping the previous set")
            }
        }
    }
}
