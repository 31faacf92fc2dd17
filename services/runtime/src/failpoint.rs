//! Named crash points. Every place where a process can die between two durable writes (before
//! a participant call, after it and before the state commit, after the commit, around a signal's
//! consumption, between an outbox publish and its mark) calls [`hit`] with a name such as
//! `saga.forward.reserve_stock.after_call`.
//!
//! Without the `failpoints` feature [`hit`] is an empty inline function: release builds carry
//! nothing. With it (tests only), a test can
//! - record the points a run passes, in order ([`record`], [`take_trace`]), to enumerate them;
//! - arm one point ([`arm`]): its `n`-th hit *crashes*: the task stops there for ever, and so
//!   does every task that reaches any point afterwards, and [`crashed`] resolves. The test then
//!   drops the runtime that ran those tasks (every future in it is dropped mid-flight, open
//!   transactions roll back, connections close), which is what a killed process leaves behind,
//!   and starts the service again.
//!
//! Same idea as TiKV's use of the `fail` crate; ours is async (a crashed task must not block a
//! runtime thread) and its crash freezes the whole runtime rather than panicking one task, which
//! tokio would survive.

/// Passes the crash point `name` (its parts joined with `.`).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub async fn hit(_name: &[&str]) {}

#[cfg(feature = "failpoints")]
pub use enabled::*;

#[cfg(feature = "failpoints")]
mod enabled {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Registry {
        trace: Option<Vec<String>>,
        armed: Option<(String, usize)>,
        fired: Option<String>,
        scope: Option<String>,
    }

    static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
        trace: None,
        armed: None,
        fired: None,
        scope: None,
    });
    static SCOPED: AtomicBool = AtomicBool::new(false);
    /// Set once an armed point fired: every later point freezes too, so nothing else of the
    /// "dead" process makes progress before the test drops its runtime.
    static CRASHED: AtomicBool = AtomicBool::new(false);
    static FIRED: tokio::sync::Notify = tokio::sync::Notify::const_new();

    fn registry() -> std::sync::MutexGuard<'static, Registry> {
        REGISTRY
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Passes the crash point `name` (its parts joined with `.`).
    pub async fn hit(name: &[&str]) {
        if SCOPED.load(Ordering::SeqCst) && !in_scope() {
            return;
        }
        if CRASHED.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let name = name.join(".");
        let fire = {
            let mut r = registry();
            if let Some(trace) = r.trace.as_mut() {
                trace.push(name.clone());
            }
            let fire = match r.armed.as_mut() {
                Some((armed, left)) if *armed == name => {
                    *left = left.saturating_sub(1);
                    *left == 0
                }
                _ => false,
            };
            if fire {
                r.armed = None;
                r.fired = Some(name.clone());
                CRASHED.store(true, Ordering::SeqCst);
            }
            fire
        };
        if fire || CRASHED.load(Ordering::SeqCst) {
            if fire {
                tracing::warn!(point = %name, "crash point fired");
                FIRED.notify_waiters();
                FIRED.notify_one();
            }
            std::future::pending::<()>().await;
        }
    }

    fn in_scope() -> bool {
        let r = registry();
        let name = std::thread::current().name().map(str::to_owned);
        match (&r.scope, name) {
            (Some(prefix), Some(name)) => name.starts_with(prefix.as_str()),
            (Some(_), None) => false,
            (None, _) => true,
        }
    }

    /// Only points passed on threads whose name starts with `prefix` count (the threads of the
    /// runtime that plays the process to crash); every other thread passes them untouched.
    pub fn set_scope(prefix: &str) {
        registry().scope = Some(prefix.to_owned());
        SCOPED.store(true, Ordering::SeqCst);
    }

    /// Starts recording every point passed (clears an earlier trace).
    pub fn record() {
        registry().trace = Some(Vec::new());
    }

    /// The points passed since [`record`], in order; stops recording.
    pub fn take_trace() -> Vec<String> {
        registry().trace.take().unwrap_or_default()
    }

    /// Arms `name`: its `nth` hit (1 = the next) crashes. Replaces any armed point.
    pub fn arm(name: &str, nth: usize) {
        let mut r = registry();
        r.armed = Some((name.to_owned(), nth.max(1)));
        r.fired = None;
    }

    /// Disarms and lets points pass again (call after the crashed runtime was dropped).
    pub fn reset() {
        let mut r = registry();
        r.armed = None;
        r.fired = None;
        CRASHED.store(false, Ordering::SeqCst);
    }

    /// The point that fired, if one did.
    pub fn fired() -> Option<String> {
        registry().fired.clone()
    }

    /// Resolves once an armed point fired.
    pub async fn crashed() {
        loop {
            let notified = FIRED.notified();
            if CRASHED.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(all(test, feature = "failpoints"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_armed_point_freezes_its_task_and_every_later_one() {
        record();
        arm("a.b", 2);
        hit(&["a", "b"]).await;
        let frozen = tokio::spawn(async { hit(&["a", "b"]).await });
        tokio::time::timeout(std::time::Duration::from_secs(5), crashed())
            .await
            .expect("fired");
        assert_eq!(fired().as_deref(), Some("a.b"));
        // Another point after the crash freezes as well.
        let later = tokio::time::timeout(std::time::Duration::from_millis(50), hit(&["c"])).await;
        assert!(later.is_err(), "a point after the crash must not pass");
        assert!(!frozen.is_finished());
        frozen.abort();
        // Nothing passes (or is recorded) once crashed.
        assert_eq!(take_trace(), vec!["a.b", "a.b"]);
        reset();
        hit(&["a", "b"]).await;
    }
}
