//! Fair hand-over from many sessions to one consumer: each session has its own queue, and the
//! consumer takes one message from each session with something queued in turn (round robin), so
//! a session that floods only lengthens its own queue — every other session's next message is at
//! most one turn away.
//!
//! Bounds: a session holds at most `per_session_bytes` queued, and all sessions together
//! `max_bytes`, except that a session with nothing queued may always queue one message (so a
//! quiet exporter is never shut out by a noisy one; the total is then at most `max_bytes` plus
//! one message per session). A stream session ([`SessionQueue::send`]) waits for room — which
//! stops it reading its socket, and TCP pushes back on that exporter alone; a datagram session
//! ([`SessionQueue::try_send`]) has its message refused, for the caller to count.
//!
//! Messages a session queued before it ended are still delivered. [`FairReceiver::recv`] returns
//! `None` once every [`FairQueue`] handle and session queue is gone and nothing is queued.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// What the queue needs of a message: its size in bytes, for the bounds.
pub trait Weigh {
    fn weight(&self) -> usize;
}

/// Bounds of a [`FairQueue`].
#[derive(Clone, Copy, Debug)]
pub struct FairConfig {
    /// All sessions' queued bytes (a session's first message is admitted beyond it).
    pub max_bytes: usize,
    /// One session's queued bytes.
    pub per_session_bytes: usize,
}

struct Queue<T> {
    msgs: VecDeque<T>,
    bytes: usize,
    /// Wakes the session's producer when its queue shrinks.
    room: Arc<Notify>,
    /// The producer is gone: drop the queue once it is empty.
    ended: bool,
    /// Listed in `ready`.
    ready: bool,
}

struct State<T> {
    queues: HashMap<u64, Queue<T>>,
    /// Sessions with messages, in turn order.
    ready: VecDeque<u64>,
    /// Producers waiting for room in the total, in arrival order.
    waiting: VecDeque<u64>,
    bytes: usize,
    next_id: u64,
    /// Live `FairQueue` handles and session queues; at zero the receiver ends when drained.
    producers: usize,
}

struct Shared<T> {
    cfg: FairConfig,
    state: Mutex<State<T>>,
    /// Wakes the consumer.
    available: Notify,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic elsewhere while holding the lock leaves consistent data (every update is a few
        // field writes); keep going rather than poisoning every session.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The producers' side: opens a queue per session. Cloneable.
pub struct FairQueue<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for FairQueue<T> {
    fn clone(&self) -> Self {
        self.shared.lock().producers += 1;
        FairQueue {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for FairQueue<T> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.producers -= 1;
        if st.producers == 0 {
            drop(st);
            self.shared.available.notify_one();
        }
    }
}

/// The consumer's side.
pub struct FairReceiver<T> {
    shared: Arc<Shared<T>>,
}

/// One session's queue. Dropping it ends the session; what it queued is still delivered.
pub struct SessionQueue<T> {
    shared: Arc<Shared<T>>,
    id: u64,
    room: Arc<Notify>,
}

/// Why [`SessionQueue::try_send`] refused a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The session's queue, or the total, is full.
    Full,
    /// The consumer is gone.
    Closed,
}

/// A queue with the given bounds.
pub fn fair_queue<T: Weigh>(cfg: FairConfig) -> (FairQueue<T>, FairReceiver<T>) {
    let shared = Arc::new(Shared {
        cfg,
        state: Mutex::new(State {
            queues: HashMap::new(),
            ready: VecDeque::new(),
            waiting: VecDeque::new(),
            bytes: 0,
            next_id: 0,
            producers: 1,
        }),
        available: Notify::new(),
    });
    (
        FairQueue {
            shared: shared.clone(),
        },
        FairReceiver { shared },
    )
}

impl<T: Weigh> FairQueue<T> {
    /// A queue for a new session.
    pub fn session(&self) -> SessionQueue<T> {
        let room = Arc::new(Notify::new());
        let mut st = self.shared.lock();
        let id = st.next_id;
        st.next_id += 1;
        st.producers += 1;
        st.queues.insert(
            id,
            Queue {
                msgs: VecDeque::new(),
                bytes: 0,
                room: room.clone(),
                ended: false,
                ready: false,
            },
        );
        SessionQueue {
            shared: self.shared.clone(),
            id,
            room,
        }
    }

    /// Bytes queued by all sessions.
    pub fn queued_bytes(&self) -> usize {
        self.shared.lock().bytes
    }
}

impl<T: Weigh> SessionQueue<T> {
    /// Queues `msg`, waiting while this session's queue or the total is full. Fails only when
    /// the consumer is gone.
    pub async fn send(&self, mut msg: T) -> Result<(), Refused> {
        loop {
            // Registered before the check, so a wake-up between the check and the wait is kept.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.push(msg, true) {
                Ok(()) => return Ok(()),
                Err((Refused::Closed, _)) => return Err(Refused::Closed),
                Err((Refused::Full, m)) => msg = m,
            }
            room.await;
        }
    }

    /// Queues `msg` if there is room now.
    pub fn try_send(&self, msg: T) -> Result<(), Refused> {
        self.push(msg, false).map_err(|(r, _)| r)
    }

    /// Bytes this session has queued.
    pub fn queued_bytes(&self) -> usize {
        self.shared
            .lock()
            .queues
            .get(&self.id)
            .map_or(0, |q| q.bytes)
    }

    fn push(&self, msg: T, wait_listed: bool) -> Result<(), (Refused, T)> {
        let cfg = self.shared.cfg;
        let w = msg.weight();
        let mut st = self.shared.lock();
        let total = st.bytes;
        let st_ref = &mut *st;
        let Some(q) = st_ref.queues.get_mut(&self.id) else {
            return Err((Refused::Closed, msg));
        };
        let first = q.msgs.is_empty();
        let fits = q.bytes + w <= cfg.per_session_bytes && total + w <= cfg.max_bytes;
        if !first && !fits {
            if wait_listed && q.bytes + w <= cfg.per_session_bytes {
                // Waiting for the total, not for its own queue: woken in arrival order.
                if !st_ref.waiting.contains(&self.id) {
                    st_ref.waiting.push_back(self.id);
                }
            }
            return Err((Refused::Full, msg));
        }
        q.msgs.push_back(msg);
        q.bytes += w;
        st_ref.bytes += w;
        if !q.ready {
            q.ready = true;
            st_ref.ready.push_back(self.id);
        }
        drop(st);
        self.shared.available.notify_one();
        Ok(())
    }
}

impl<T> Drop for SessionQueue<T> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.producers -= 1;
        let st_ref = &mut *st;
        st_ref.waiting.retain(|&w| w != self.id);
        if let Some(q) = st_ref.queues.get_mut(&self.id) {
            if q.msgs.is_empty() {
                st_ref.queues.remove(&self.id);
            } else {
                q.ended = true;
            }
        }
        let last = st.producers == 0;
        drop(st);
        if last {
            self.shared.available.notify_one();
        }
    }
}

impl<T: Weigh> FairReceiver<T> {
    /// The next message, taking sessions in turn; `None` once every producer is gone and
    /// everything queued was taken.
    pub async fn recv(&mut self) -> Option<T> {
        let shared = self.shared.clone();
        loop {
            let available = shared.available.notified();
            tokio::pin!(available);
            available.as_mut().enable();
            match self.take() {
                Ok(m) => return Some(m),
                Err(true) => return None,
                Err(false) => {}
            }
            available.await;
        }
    }

    /// The next message if one is queued.
    pub fn try_recv(&mut self) -> Option<T> {
        self.take().ok()
    }

    /// Bytes queued by all sessions.
    pub fn queued_bytes(&self) -> usize {
        self.shared.lock().bytes
    }

    /// `Err(true)`: ended; `Err(false)`: nothing queued now.
    fn take(&self) -> Result<T, bool> {
        let mut st = self.shared.lock();
        let st_ref = &mut *st;
        let Some(id) = st_ref.ready.pop_front() else {
            return Err(st_ref.producers == 0);
        };
        let q = st_ref
            .queues
            .get_mut(&id)
            .expect("a ready session has a queue");
        let msg = q.msgs.pop_front().expect("a ready session has a message");
        let w = msg.weight();
        q.bytes -= w;
        st_ref.bytes -= w;
        let room = q.room.clone();
        if q.msgs.is_empty() {
            q.ready = false;
            if q.ended {
                st_ref.queues.remove(&id);
            }
        } else {
            st_ref.ready.push_back(id);
        }
        // Room in the total: the longest-waiting producer may fit now.
        let waiter = st_ref
            .waiting
            .pop_front()
            .and_then(|w| st_ref.queues.get(&w).map(|q| q.room.clone()));
        drop(st);
        room.notify_one();
        if let Some(w) = waiter {
            w.notify_one();
        }
        Ok(msg)
    }
}

impl<T> Drop for FairReceiver<T> {
    fn drop(&mut self) {
        // Producers see `Closed` from now on.
        let mut st = self.shared.lock();
        let rooms: Vec<_> = st.queues.values().map(|q| q.room.clone()).collect();
        st.queues.clear();
        st.ready.clear();
        st.bytes = 0;
        drop(st);
        for r in rooms {
            r.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Msg(u32, usize);

    impl Weigh for Msg {
        fn weight(&self) -> usize {
            self.1
        }
    }

    fn cfg(max: usize, per: usize) -> FairConfig {
        FairConfig {
            max_bytes: max,
            per_session_bytes: per,
        }
    }

    #[tokio::test]
    async fn sessions_are_served_in_turn_whatever_one_of_them_queued() {
        let (q, mut rx) = fair_queue::<Msg>(cfg(1 << 20, 1 << 20));
        let flood = q.session();
        let quiet = q.session();
        for i in 0..100 {
            flood.try_send(Msg(i, 10)).unwrap();
        }
        quiet.try_send(Msg(1000, 10)).unwrap();
        quiet.try_send(Msg(1001, 10)).unwrap();
        let first: Vec<u32> = (0..4).map(|_| rx.try_recv().unwrap().0).collect();
        assert_eq!(
            first,
            vec![0, 1000, 1, 1001],
            "one from each session in turn"
        );
    }

    #[tokio::test]
    async fn a_full_total_still_admits_a_quiet_sessions_first_message() {
        let (q, mut rx) = fair_queue::<Msg>(cfg(100, 100));
        let flood = q.session();
        while flood.try_send(Msg(0, 10)).is_ok() {}
        assert_eq!(q.queued_bytes(), 100);
        assert_eq!(flood.try_send(Msg(0, 10)), Err(Refused::Full));
        let quiet = q.session();
        quiet.try_send(Msg(7, 10)).unwrap();
        assert_eq!(
            quiet.try_send(Msg(8, 10)),
            Err(Refused::Full),
            "one message beyond the total, not two"
        );
        assert_eq!(rx.try_recv().unwrap().0, 0);
        assert_eq!(rx.try_recv().unwrap().0, 7);
    }

    #[tokio::test]
    async fn a_waiting_stream_session_resumes_when_its_queue_drains() {
        let (q, mut rx) = fair_queue::<Msg>(cfg(1 << 20, 20));
        let s = q.session();
        s.send(Msg(1, 10)).await.unwrap();
        s.send(Msg(2, 10)).await.unwrap();
        let blocked = tokio::spawn(async move {
            s.send(Msg(3, 10)).await.unwrap();
            s
        });
        // The third waits for room; taking one message makes room.
        tokio::task::yield_now().await;
        assert!(!blocked.is_finished());
        assert_eq!(rx.recv().await.unwrap().0, 1);
        let s = blocked.await.unwrap();
        assert_eq!(s.queued_bytes(), 20);
        drop(s);
        drop(q);
        assert_eq!(rx.recv().await.unwrap().0, 2);
        assert_eq!(
            rx.recv().await.unwrap().0,
            3,
            "an ended session's messages are delivered"
        );
        assert_eq!(rx.recv().await, None, "then the end");
    }

    #[tokio::test]
    async fn a_gone_receiver_fails_senders() {
        let (q, rx) = fair_queue::<Msg>(cfg(100, 10));
        let s = q.session();
        s.send(Msg(1, 10)).await.unwrap();
        let blocked = tokio::spawn(async move { s.send(Msg(2, 10)).await });
        tokio::task::yield_now().await;
        drop(rx);
        assert_eq!(blocked.await.unwrap(), Err(Refused::Closed));
    }
}
