//! One priority level's seats and queues: shuffle sharding of flows onto queues, and fair
//! queuing by virtual finish time, as upstream's queueset (virtual time is kept in f64
//! seat-seconds here rather than fixed point).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// The estimated service time of one seat of a request (upstream's G).
pub const SERVICE_TIME: f64 = 0.003;

/// How a level takes requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Never limited (the `exempt` level).
    Exempt,
    /// Over the limit is refused at once (`limitResponse: Reject`).
    Reject,
    /// Over the limit waits in queues (`limitResponse: Queue`).
    Queue {
        /// Number of queues.
        queues: usize,
        /// Queues dealt to one flow.
        hand: usize,
        /// Requests one queue may hold.
        length: usize,
    },
}

/// Why a request was refused (the `reason` label of the rejection metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Its queue was full.
    QueueFull,
    /// A level without queues had no free seats.
    ConcurrencyLimit,
    /// It waited longer than it may.
    TimeOut,
}

impl Rejection {
    /// Upstream's label.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::QueueFull => "queue-full",
            Rejection::ConcurrencyLimit => "concurrency-limit",
            Rejection::TimeOut => "time-out",
        }
    }
}

struct Waiter {
    id: u64,
    seats: u32,
    work: f64,
    arrival_r: f64,
    tx: oneshot::Sender<()>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiter>,
    seats_in_use: u32,
    next_dispatch_r: f64,
}

impl Queue {
    fn idle(&self) -> bool {
        self.waiting.is_empty() && self.seats_in_use == 0
    }

    fn work_waiting(&self) -> f64 {
        self.waiting.iter().map(|w| w.work).sum()
    }
}

/// A level's state; the caller holds it under a lock.
pub struct QueueSet {
    mode: Mode,
    limit: u32,
    queues: Vec<Queue>,
    seats_in_use: u32,
    waiting: usize,
    r: f64,
    last: Instant,
    robin: usize,
    enqueues: u64,
    next_id: u64,
}

/// What [`QueueSet::start`] decided.
pub enum Start {
    /// Seats taken; run the request (queue index for the finish).
    Run(Option<usize>),
    /// Waiting: the receiver fires on dispatch; `(queue, id)` to withdraw it.
    Wait(oneshot::Receiver<()>, usize, u64),
    /// Refused.
    Reject(Rejection),
}

/// Deals a hand of `hand` distinct queues out of `deck` from a flow hash (upstream's dealer).
pub fn deal(mut hash: u64, deck: usize, hand: usize) -> Vec<usize> {
    let mut raw = Vec::with_capacity(hand);
    for i in 0..hand {
        let n = (deck - i) as u64;
        raw.push((hash % n) as usize);
        hash /= n;
    }
    (0..hand)
        .map(|i| {
            let mut c = raw[i];
            for j in (1..=i).rev() {
                if c >= raw[j - 1] {
                    c += 1;
                }
            }
            c
        })
        .collect()
}

impl QueueSet {
    /// A level of `mode` with `limit` seats.
    pub fn new(mode: Mode, limit: u32) -> Self {
        let mut q = QueueSet {
            mode,
            limit,
            queues: Vec::new(),
            seats_in_use: 0,
            waiting: 0,
            r: 0.0,
            last: Instant::now(),
            robin: 0,
            enqueues: 0,
            next_id: 0,
        };
        q.reconfigure(mode, limit);
        q
    }

    /// A new configuration: more queues are added at once; fewer are removed as they empty.
    pub fn reconfigure(&mut self, mode: Mode, limit: u32) {
        self.advance();
        self.mode = mode;
        self.limit = limit;
        let want = match mode {
            Mode::Queue { queues, .. } => queues,
            _ => 0,
        };
        while self.queues.len() < want {
            self.queues.push(Queue::default());
        }
        while self.queues.len() > want && self.queues.last().is_some_and(Queue::idle) {
            self.queues.pop();
        }
        self.dispatch();
    }

    /// Seats in use.
    pub fn seats_in_use(&self) -> u32 {
        self.seats_in_use
    }

    /// Requests waiting.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// The seat limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Moves the virtual clock to now: it advances at the rate of the seats each busy queue
    /// would get if the level's seats were shared fairly among them.
    fn advance(&mut self) {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        let active = self.queues.iter().filter(|q| !q.idle()).count();
        if active == 0 {
            return;
        }
        let demand: u32 = self
            .queues
            .iter()
            .map(|q| q.seats_in_use + q.waiting.iter().map(|w| w.seats).sum::<u32>())
            .sum();
        self.r += dt * f64::from(demand.min(self.limit)) / active as f64;
    }

    fn can_accommodate(&self, seats: u32) -> bool {
        match self.mode {
            Mode::Exempt => true,
            _ if seats > self.limit => self.seats_in_use == 0,
            _ => self.seats_in_use + seats <= self.limit,
        }
    }

    /// A request of `seats` seats from the flow with `hash`.
    pub fn start(&mut self, seats: u32, hash: u64) -> Start {
        let Mode::Queue { hand, length, .. } = self.mode else {
            if self.can_accommodate(seats) {
                self.seats_in_use += seats;
                return Start::Run(None);
            }
            return Start::Reject(Rejection::ConcurrencyLimit);
        };
        self.advance();
        let deck = self.queues.len().max(1);
        let cards = deal(hash, deck, hand.min(deck));
        let offset = (self.enqueues % cards.len() as u64) as usize;
        self.enqueues += 1;
        let mut best = cards[offset];
        let mut best_work = f64::INFINITY;
        for i in 0..cards.len() {
            let q = cards[(offset + i) % cards.len()];
            let w = self.queues[q].work_waiting();
            if w < best_work {
                best = q;
                best_work = w;
            }
        }
        if self.seats_in_use >= self.limit && self.queues[best].waiting.len() >= length {
            return Start::Reject(Rejection::QueueFull);
        }
        let r = self.r;
        let q = &mut self.queues[best];
        if q.idle() {
            q.next_dispatch_r = r;
        }
        let (tx, rx) = oneshot::channel();
        self.next_id += 1;
        let id = self.next_id;
        q.waiting.push_back(Waiter {
            id,
            seats,
            work: f64::from(seats) * SERVICE_TIME,
            arrival_r: r,
            tx,
        });
        self.waiting += 1;
        self.dispatch();
        Start::Wait(rx, best, id)
    }

    /// Withdraws a waiting request (its wait ran out); false if it was dispatched meanwhile.
    pub fn withdraw(&mut self, queue: usize, id: u64) -> bool {
        self.advance();
        let Some(q) = self.queues.get_mut(queue) else {
            return false;
        };
        match q.waiting.iter().position(|w| w.id == id) {
            Some(i) => {
                q.waiting.remove(i);
                self.waiting -= 1;
                true
            }
            None => false,
        }
    }

    /// A request that held `seats` (on `queue`, when queued) for `took` is done.
    pub fn finish(&mut self, seats: u32, queue: Option<usize>, took: Duration) {
        self.advance();
        self.seats_in_use = self.seats_in_use.saturating_sub(seats);
        if let Some(q) = queue.and_then(|i| self.queues.get_mut(i)) {
            q.seats_in_use = q.seats_in_use.saturating_sub(seats);
            // Charge what the request really took instead of the estimate.
            q.next_dispatch_r -= f64::from(seats) * (SERVICE_TIME - took.as_secs_f64());
            if let Some(head) = q.waiting.front() {
                q.next_dispatch_r = q.next_dispatch_r.max(head.arrival_r);
            }
        }
        while self.queues.len() > self.wanted() && self.queues.last().is_some_and(Queue::idle) {
            self.queues.pop();
        }
        self.dispatch();
    }

    fn wanted(&self) -> usize {
        match self.mode {
            Mode::Queue { queues, .. } => queues,
            _ => 0,
        }
    }

    /// Dispatches waiting requests while seats are free, the queue with the earliest virtual
    /// finish time first.
    fn dispatch(&mut self) {
        while self.waiting > 0 && self.seats_in_use < self.limit {
            let n = self.queues.len();
            let mut best: Option<(usize, f64)> = None;
            for k in 0..n {
                let i = (self.robin + 1 + k) % n;
                let q = &self.queues[i];
                if let Some(h) = q.waiting.front() {
                    let finish = q.next_dispatch_r + h.work;
                    if best.is_none_or(|(_, b)| finish < b) {
                        best = Some((i, finish));
                    }
                }
            }
            let Some((i, _)) = best else {
                return;
            };
            let seats = self.queues[i].waiting.front().map_or(1, |w| w.seats);
            if !self.can_accommodate(seats) {
                return;
            }
            self.robin = i;
            let q = &mut self.queues[i];
            let Some(w) = q.waiting.pop_front() else {
                return;
            };
            self.waiting -= 1;
            q.next_dispatch_r += w.work;
            if let Some(head) = q.waiting.front() {
                q.next_dispatch_r = q.next_dispatch_r.max(head.arrival_r);
            }
            if w.tx.send(()).is_ok() {
                q.seats_in_use += w.seats;
                self.seats_in_use += w.seats;
            }
        }
    }
}
