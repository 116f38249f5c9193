//! The shared stop signal: every task holds a [`Shutdown`] and stops at its next safe point.
use tokio::sync::watch;

#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The sending half, held by whoever decides to stop (signal handler, demo, tests).
pub struct Trigger {
    tx: watch::Sender<bool>,
}

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger { tx }, Shutdown { rx })
}

impl Trigger {
    pub fn stop(&self) {
        let _ = self.tx.send(true);
    }
}

impl Shutdown {
    pub fn is_stopping(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once stop is requested (at once if it already was).
    pub async fn stopped(&mut self) {
        let _ = self.rx.wait_for(|s| *s).await;
    }
}

/// Stop on SIGTERM or Ctrl-C.
pub fn on_signals(trigger: Trigger) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("cannot install SIGTERM handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: finishing current lookups, then stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: finishing current lookups, then stopping"),
        }
        trigger.stop();
    });
}
