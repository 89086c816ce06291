//! The shutdown signal handed to every background task: each task watches it and ends by
//! itself, so nothing is aborted from outside, and nothing outlives the application even
//! when it is dropped without running.

use tokio::sync::watch;

/// Owned by the application: [`ShutdownTrigger::trigger`], or dropping it, tells every
/// [`Shutdown`] handle to stop.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// A background task's view of the shutdown signal.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl ShutdownTrigger {
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (sender, receiver) = watch::channel(false);
        (ShutdownTrigger(sender), Shutdown(receiver))
    }

    /// Tells every handle to stop; calling it again does nothing.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Resolves once shutdown has started (or the trigger is gone).
    pub async fn started(&mut self) {
        // `wait_for` fails only when the trigger was dropped, which means the same.
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn handles_see_the_trigger_and_the_drop() {
        let (trigger, mut shutdown) = ShutdownTrigger::new();
        let mut other = shutdown.clone();
        trigger.trigger();
        shutdown.started().await;
        drop(trigger);
        other.started().await;

        let (trigger, mut shutdown) = ShutdownTrigger::new();
        drop(trigger);
        shutdown.started().await;
    }
}
