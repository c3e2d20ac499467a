//! The one timer queue of the membership task.
//!
//! foca asks for timer events with `submit_after` and requires them back in the order
//! their deadlines fall (a task per timer can reorder them, and foca then sees a probe
//! cycle end before it started). [`Timers`] keeps them in one ordered map: by deadline,
//! and in submission order for equal deadlines. Pure code: the caller passes the time.

use std::collections::BTreeMap;

use tokio::time::Instant;

/// Pending events, ordered by (deadline, submission number).
#[derive(Debug)]
pub struct Timers<T> {
    queue: BTreeMap<(Instant, u64), T>,
    submitted: u64,
}

impl<T> Default for Timers<T> {
    fn default() -> Self {
        Timers { queue: BTreeMap::new(), submitted: 0 }
    }
}

impl<T> Timers<T> {
    /// Queues `event` to be due at `deadline`.
    pub fn schedule(&mut self, deadline: Instant, event: T) {
        self.queue.insert((deadline, self.submitted), event);
        self.submitted += 1;
    }

    /// When the next event is due, if any is pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queue.first_key_value().map(|((deadline, _), _)| *deadline)
    }

    /// Removes and returns the earliest event if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        match self.queue.first_entry() {
            Some(entry) if entry.key().0 <= now => Some(entry.remove()),
            _ => None,
        }
    }

    /// How many events are pending.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no event is pending.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn drain(timers: &mut Timers<&'static str>, now: Instant) -> Vec<&'static str> {
        std::iter::from_fn(|| timers.pop_due(now)).collect()
    }

    #[test]
    fn events_come_out_by_deadline_then_submission_order() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut timers = Timers::default();
        timers.schedule(ms(300), "c");
        timers.schedule(ms(100), "a1");
        timers.schedule(ms(200), "b");
        timers.schedule(ms(100), "a2");
        timers.schedule(ms(100), "a3");
        assert_eq!(timers.next_deadline(), Some(ms(100)));
        assert!(drain(&mut timers, ms(99)).is_empty());
        assert_eq!(drain(&mut timers, ms(100)), ["a1", "a2", "a3"]);
        assert_eq!(drain(&mut timers, ms(1000)), ["b", "c"]);
        assert!(timers.is_empty() && timers.next_deadline().is_none());
    }

    /// The way the membership task uses it, in virtual time: sleep until the next
    /// deadline, deliver everything due, in order, including events scheduled late.
    #[tokio::test(start_paused = true)]
    async fn a_sleeping_loop_delivers_in_deadline_order() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        for (after, name) in [(500, "probe"), (200, "gossip"), (1000, "suspect"), (200, "gossip2")] {
            timers.schedule(t0 + Duration::from_millis(after), name);
        }
        let mut delivered = Vec::new();
        while let Some(deadline) = timers.next_deadline() {
            tokio::time::sleep_until(deadline).await;
            // A slow turn: by the time it runs, several events are due.
            tokio::time::sleep(Duration::from_millis(400)).await;
            let now = Instant::now();
            while let Some(event) = timers.pop_due(now) {
                delivered.push((event, now.duration_since(t0).as_millis()));
            }
        }
        let names: Vec<_> = delivered.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["gossip", "gossip2", "probe", "suspect"]);
        assert_eq!(timers.len(), 0);
    }
}
