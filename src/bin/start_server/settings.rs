//! The numbers start_server runs by, range-checked wherever they come from: `--interval` and
//! the other options, and `KILL_OLD_DELAY`, `AUTO_RESTART_INTERVAL`, `ENABLE_AUTO_RESTART`
//! from the environment or the envdir (which may change them while start_server runs).
//!
//! Every duration is at most [`MAX_SECONDS`] (a year), so no `Duration` or `Instant`
//! arithmetic in the supervisor can overflow (`Instant + Duration` and
//! `Duration::from_secs_f64` panic, and a panic would orphan the workers): the largest sum it
//! makes is `now + 2 * AUTO_RESTART_INTERVAL`.

use std::ffi::{OsStr, OsString};
use std::time::Duration;

/// The longest interval or delay accepted, in seconds: 365 days.
pub const MAX_SECONDS: u32 = 365 * 24 * 3600;

/// A number of seconds: a decimal number (`2`, `0.5`, `1e3`, surrounding blanks ignored) from
/// 0 to [`MAX_SECONDS`]. NaN, infinities, negative numbers and anything larger are refused.
pub fn parse_seconds(value: &str) -> Result<Duration, String> {
    let bad = || format!("not a number of seconds from 0 to {MAX_SECONDS}");
    let seconds: f64 = value.trim().parse().map_err(|_| bad())?;
    if !seconds.is_finite() || !(0.0..=f64::from(MAX_SECONDS)).contains(&seconds) {
        return Err(bad());
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| bad())
}

/// Perl's truth: unset, empty and `0` are false.
fn truthy(value: Option<&OsStr>) -> bool {
    value.is_some_and(|v| !v.is_empty() && v != "0")
}

/// A variable's value as text, or None when unset or empty (which means "the default").
fn text(value: Option<&OsStr>) -> Option<String> {
    value.filter(|v| !v.is_empty()).map(|v| v.to_string_lossy().into_owned())
}

/// The auto-restart and kill-old-delay settings in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub enable_auto_restart: bool,
    /// `AUTO_RESTART_INTERVAL` (Perl: `||= 360`, so 0 means 360).
    pub auto_restart_interval: Duration,
    /// `KILL_OLD_DELAY`, None when unset (5 s with auto-restart, else 0).
    pub kill_old_delay: Option<Duration>,
    /// The raw values the numbers above were last read from, so a value seen before is not
    /// parsed (or warned about) again.
    raw: [Option<String>; 2],
}

const NUMBERS: [&str; 2] = ["AUTO_RESTART_INTERVAL", "KILL_OLD_DELAY"];

impl Settings {
    /// The settings at startup: `lookup` gives each variable (envdir over the options over the
    /// environment). A bad number is an error naming the variable and its value.
    pub fn at_startup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Settings, String> {
        let mut settings = Settings {
            enable_auto_restart: false,
            auto_restart_interval: Duration::from_secs(360),
            kill_old_delay: None,
            raw: [None, None],
        };
        settings.enable_auto_restart = truthy(lookup("ENABLE_AUTO_RESTART").as_deref());
        for (i, name) in NUMBERS.iter().enumerate() {
            let raw = text(lookup(name).as_deref());
            if let Some(value) = &raw {
                let parsed = parse_seconds(value).map_err(|e| format!("invalid {name}={value:?}: {e}"))?;
                settings.set(i, Some(parsed));
            }
            settings.raw[i] = raw;
        }
        Ok(settings)
    }

    fn set(&mut self, i: usize, value: Option<Duration>) {
        if i == 0 {
            self.auto_restart_interval = value.filter(|d| !d.is_zero()).unwrap_or(Duration::from_secs(360));
        } else {
            self.kill_old_delay = value;
        }
    }

    /// At run time (the envdir changed): a bad number is a warning, returned once per new bad
    /// value, and the value in force stays.
    pub fn update(&mut self, lookup: impl Fn(&str) -> Option<OsString>) -> Vec<String> {
        let mut warnings = Vec::new();
        self.enable_auto_restart = truthy(lookup("ENABLE_AUTO_RESTART").as_deref());
        for (i, name) in NUMBERS.iter().enumerate() {
            let raw = text(lookup(name).as_deref());
            if raw == self.raw[i] {
                continue;
            }
            match raw.as_deref().map(parse_seconds).transpose() {
                Ok(value) => self.set(i, value),
                Err(e) => {
                    let value = raw.as_deref().unwrap_or_default();
                    let kept = match i {
                        0 => self.auto_restart_interval,
                        _ => self.kill_old_delay(),
                    };
                    warnings.push(format!("ignoring {name}={value:?} ({e}); keeping {} secs", kept.as_secs_f64()));
                }
            }
            self.raw[i] = raw;
        }
        warnings
    }

    /// The auto-restart interval, when auto-restart is on.
    pub fn auto_restart(&self) -> Option<Duration> {
        self.enable_auto_restart.then_some(self.auto_restart_interval)
    }

    pub fn kill_old_delay(&self) -> Duration {
        let default = if self.enable_auto_restart { 5 } else { 0 };
        self.kill_old_delay.unwrap_or(Duration::from_secs(default))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = vars.iter().map(|(k, v)| (k.to_string(), OsString::from(v))).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_seconds(" 0.5 "), Ok(Duration::from_millis(500)));
        assert_eq!(parse_seconds("0"), Ok(Duration::ZERO));
        assert_eq!(parse_seconds("31536000"), Ok(Duration::from_secs(31_536_000)));
        for bad in
            ["", "abc", "1e20", "NaN", "nan", "inf", "-inf", "-1", "-0.5", "31536000.5", "99999999999999999999", "1e308", "2x"]
        {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn startup_errors_name_the_variable() {
        let e = Settings::at_startup(lookup(&[("KILL_OLD_DELAY", "1e20")])).unwrap_err();
        assert!(e.contains("KILL_OLD_DELAY=\"1e20\""), "{e}");
        let e = Settings::at_startup(lookup(&[("AUTO_RESTART_INTERVAL", "NaN")])).unwrap_err();
        assert!(e.contains("AUTO_RESTART_INTERVAL=\"NaN\""), "{e}");
        let s = Settings::at_startup(lookup(&[("ENABLE_AUTO_RESTART", "1"), ("AUTO_RESTART_INTERVAL", "0")])).unwrap();
        assert_eq!(s.auto_restart(), Some(Duration::from_secs(360)));
        assert_eq!(s.kill_old_delay(), Duration::from_secs(5));
        let s = Settings::at_startup(lookup(&[("KILL_OLD_DELAY", "")])).unwrap();
        assert_eq!((s.auto_restart(), s.kill_old_delay()), (None, Duration::ZERO));
    }

    #[test]
    fn a_bad_value_at_run_time_keeps_the_old_one_and_warns_once() {
        let mut s = Settings::at_startup(lookup(&[("KILL_OLD_DELAY", "2")])).unwrap();
        let bad = lookup(&[("KILL_OLD_DELAY", "1e20")]);
        let warnings = s.update(&bad);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("KILL_OLD_DELAY=\"1e20\"") && warnings[0].contains("keeping 2 secs"), "{warnings:?}");
        assert!(s.update(&bad).is_empty(), "the same bad value is not warned about again");
        assert_eq!(s.kill_old_delay(), Duration::from_secs(2));
        assert!(s.update(lookup(&[("KILL_OLD_DELAY", "3")])).is_empty());
        assert_eq!(s.kill_old_delay(), Duration::from_secs(3));
        assert!(s.update(lookup(&[])).is_empty());
        assert_eq!(s.kill_old_delay(), Duration::ZERO, "unset: the default again");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn any_text_parses_or_fails_without_panicking(text in any::<String>()) {
            if let Ok(d) = parse_seconds(&text) {
                prop_assert!(d <= Duration::from_secs(u64::from(MAX_SECONDS)));
                // The supervisor's largest sum cannot overflow.
                let _ = std::time::Instant::now() + d * 2;
            }
        }

        #[test]
        fn valid_seconds_round_trip(millis in 0u64..=u64::from(MAX_SECONDS) * 1000) {
            let text = format!("{}.{:03}", millis / 1000, millis % 1000);
            let parsed = parse_seconds(&text).unwrap();
            let exact = Duration::from_millis(millis);
            prop_assert!(parsed.abs_diff(exact) < Duration::from_micros(1), "{} -> {:?}", text, parsed);
        }

        #[test]
        fn settings_from_any_values_never_panic(a in any::<String>(), b in any::<String>(), c in "[01]?") {
            let vars = [("KILL_OLD_DELAY", a.as_str()), ("AUTO_RESTART_INTERVAL", b.as_str()), ("ENABLE_AUTO_RESTART", c.as_str())];
            let startup = Settings::at_startup(lookup(&vars));
            let mut s = Settings::at_startup(lookup(&[])).unwrap();
            let _ = s.update(lookup(&vars));
            if let Ok(startup) = startup {
                prop_assert_eq!(startup.kill_old_delay(), s.kill_old_delay());
                prop_assert_eq!(startup.auto_restart(), s.auto_restart());
            }
        }
    }
}
