//! [`FlaggedSleep`]: a tokio `Sleep` that a long-lived task polls only after the
//! sleep itself woke it.
//!
//! A connection's task races its connection against a far-away deadline (idle check,
//! `max_connection_duration`, drain). With `tokio::select!` every wake-up of the task
//! polls the `Sleep` too, though almost every wake-up is the connection's (an HTTP/1
//! request wakes the task twice; each `Sleep` poll measured about 120 instructions
//! under callgrind, 0.75 % of keel's instructions per request). Here the `Sleep` is
//! registered with a waker of its own, which marks it fired and then wakes the task;
//! polls in between cost an atomic swap.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use tokio::time::Sleep;

/// A deadline polled only when its timer fired (see the module documentation).
pub(crate) struct FlaggedSleep {
    sleep: Pin<Box<Sleep>>,
    wake: Arc<SleepWake>,
    /// The task waker last given to `wake`, to notice when the task's waker changes
    /// without taking the lock.
    task: Option<Waker>,
}

/// The waker the `Sleep` is registered with.
#[derive(Debug)]
struct SleepWake {
    /// The `Sleep` must be polled: it woke, or it is new or reset and not yet
    /// registered.
    fired: AtomicBool,
    /// The waker of the task that polls the `FlaggedSleep`.
    task: Mutex<Option<Waker>>,
}

impl Wake for SleepWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        let task = self.task.lock().map(|task| task.clone()).unwrap_or(None);
        if let Some(task) = task {
            task.wake();
        }
    }
}

impl FlaggedSleep {
    /// A sleep until `deadline`.
    pub(crate) fn until(deadline: Instant) -> FlaggedSleep {
        FlaggedSleep {
            sleep: Box::pin(tokio::time::sleep_until(deadline.into())),
            wake: Arc::new(SleepWake {
                fired: AtomicBool::new(true),
                task: Mutex::new(None),
            }),
            task: None,
        }
    }

    /// Moves the deadline (earlier or later).
    pub(crate) fn reset(&mut self, deadline: Instant) {
        self.sleep.as_mut().reset(deadline.into());
        self.wake.fired.store(true, Ordering::Release);
    }

    /// Ready once the deadline has passed; polls the `Sleep` only when it woke the
    /// task (or was just made or reset).
    pub(crate) fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self
            .task
            .as_ref()
            .is_some_and(|task| task.will_wake(cx.waker()))
        {
            if let Ok(mut task) = self.wake.task.lock() {
                *task = Some(cx.waker().clone());
            }
            self.task = Some(cx.waker().clone());
        }
        // A plain load first: the common case (not fired) needs no locked instruction.
        if !self.wake.fired.load(Ordering::Acquire)
            || !self.wake.fired.swap(false, Ordering::AcqRel)
        {
            return Poll::Pending;
        }
        let waker = Waker::from(Arc::clone(&self.wake));
        self.sleep.as_mut().poll(&mut Context::from_waker(&waker))
    }
}

impl std::fmt::Debug for FlaggedSleep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlaggedSleep")
            .field("deadline", &self.sleep.deadline())
            .field("fired", &self.wake.fired.load(Ordering::Relaxed))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn fires_at_its_deadline_and_after_a_reset() {
        let start = Instant::now();
        let mut sleep = FlaggedSleep::until(start + Duration::from_millis(30));
        std::future::poll_fn(|cx| sleep.poll_elapsed(cx)).await;
        assert!(
            start.elapsed() >= Duration::from_millis(30),
            "ready only at the deadline"
        );
        sleep.reset(Instant::now() + Duration::from_millis(30));
        std::future::poll_fn(|cx| sleep.poll_elapsed(cx)).await;
        assert!(
            start.elapsed() >= Duration::from_millis(60),
            "ready again after the reset"
        );
    }

    #[tokio::test]
    async fn other_wake_ups_do_not_poll_the_sleep() {
        let mut sleep = FlaggedSleep::until(Instant::now() + Duration::from_secs(60));
        let mut polls = 0;
        // A future that wakes its task itself a few times before the deadline, as a
        // busy connection does.
        let outcome = std::future::poll_fn(|cx| {
            polls += 1;
            if sleep.poll_elapsed(cx).is_ready() {
                return Poll::Ready(false);
            }
            if polls < 5 {
                assert!(
                    !sleep.wake.fired.load(Ordering::Acquire),
                    "a wake-up not caused by the sleep leaves it unpolled"
                );
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(true)
        })
        .await;
        assert!(outcome, "the sleep did not fire early");
    }
}
