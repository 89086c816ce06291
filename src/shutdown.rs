//! The shutdown signal handed to every background task: each task watches it and ends by
//! itself, so nothing is aborted from outside, and nothing outlives the application even
//! when it is dropped without running.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Owned by the application: [`ShutdownTrigger::trigger`], or dropping it, tells every
/// [`Shutdown`] handle to stop.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// A background task's view of the shutdown signal: its own, and the application's when
/// it was made by [`ShutdownTrigger::child_of`].
#[derive(Debug, Clone)]
pub struct Shutdown {
    own: watch::Receiver<bool>,
    parent: Option<watch::Receiver<bool>>,
}

impl ShutdownTrigger {
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (sender, receiver) = watch::channel(false);
        let shutdown = Shutdown {
            own: receiver,
            parent: None,
        };
        (ShutdownTrigger(sender), shutdown)
    }

    /// A trigger for one part of the application (an issuer's key refresher, which a
    /// reload may remove): its handle stops on this trigger, or with `parent`.
    pub fn child_of(parent: &Shutdown) -> (ShutdownTrigger, Shutdown) {
        let (trigger, mut shutdown) = Self::new();
        shutdown.parent = Some(parent.own.clone());
        (trigger, shutdown)
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
        match &mut self.parent {
            None => {
                let _ = self.own.wait_for(|stopping| *stopping).await;
            }
            Some(parent) => {
                tokio::select! {
                    _ = self.own.wait_for(|stopping| *stopping) => {}
                    _ = parent.wait_for(|stopping| *stopping) => {}
                }
            }
        }
    }
}

/// The application's background tasks (key refreshers, the config watcher), awaited when
/// it stops: each ends by itself on its [`Shutdown`]. Clones share the list, so a reload
/// can add the refreshers of the issuers it adds.
#[derive(Debug, Clone, Default)]
pub struct BackgroundTasks(Arc<Mutex<Vec<JoinHandle<()>>>>);

impl BackgroundTasks {
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task);
        let mut tasks = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // Tasks of removed issuers end long before the application: forget them.
        tasks.retain(|task| !task.is_finished());
        tasks.push(handle);
    }

    /// Waits for every task, including those spawned meanwhile.
    pub async fn join_all(&self) {
        loop {
            let tasks = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
            if tasks.is_empty() {
                return;
            }
            for task in tasks {
                let _ = task.await;
            }
        }
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

    #[tokio::test]
    async fn a_child_stops_with_its_own_trigger_or_its_parent() {
        let (parent, parent_shutdown) = ShutdownTrigger::new();
        let (child, mut child_shutdown) = ShutdownTrigger::child_of(&parent_shutdown);
        drop(child);
        child_shutdown.started().await;

        let (_child, mut child_shutdown) = ShutdownTrigger::child_of(&parent_shutdown);
        parent.trigger();
        child_shutdown.started().await;
    }
}
