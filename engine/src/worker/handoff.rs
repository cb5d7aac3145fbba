//! How the workers of a group hand frames to each other.
//!
//! Each port is polled and written by one worker, its owner. A frame the
//! pipeline of one worker sends to a port another worker owns goes into
//! the owner's mailbox, a bounded lock-free queue, and the owner writes it
//! on its next turn. Nothing waits: a full mailbox is a counted drop
//! ([`DropReason::HandoffFull`](crate::drop::DropReason::HandoffFull)), so
//! a stalled worker never holds up the others (Open vSwitch's PMD threads
//! instead share each port's transmit queues under a lock).
//!
//! A worker that sleeps in `epoll_wait` is woken for its mail, once per
//! batch handed to it: it says it is going to sleep (`asleep`), then looks
//! at its mailbox once more; a sender pushes, then looks at `asleep`. With
//! sequentially consistent order on both sides one of the two always sees
//! the other, so no frame waits in a mailbox while its owner sleeps.

use std::sync::atomic::{fence, AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use mio::Waker;

use crate::packet::PacketBuf;
use crate::port::PortId;

/// Frames a worker's mailbox holds: more than a batch of super-frames cut
/// into wire-sized frames.
pub(super) const MAILBOX_FRAMES: usize = 2048;
/// Most workers in a group (a port's owner is one byte).
pub const MAX_WORKERS: usize = 64;
const NO_OWNER: u8 = u8::MAX;

/// What the workers of a group share: who owns each port, and a mailbox
/// per worker.
#[derive(Debug)]
pub(super) struct Crew {
    /// The owner of each port (indexed by port number), or [`NO_OWNER`].
    owners: Box<[AtomicU8]>,
    mailboxes: Box<[Mailbox]>,
}

#[derive(Debug)]
struct Mailbox {
    frames: ArrayQueue<(PortId, PacketBuf)>,
    asleep: AtomicBool,
    waker: Arc<Waker>,
}

impl Crew {
    /// A crew of one worker per waker.
    pub(super) fn new(wakers: Vec<Arc<Waker>>) -> Crew {
        assert!(wakers.len() <= MAX_WORKERS, "at most {MAX_WORKERS} workers");
        Crew {
            owners: (0..=usize::from(u16::MAX))
                .map(|_| AtomicU8::new(NO_OWNER))
                .collect(),
            mailboxes: wakers
                .into_iter()
                .map(|waker| Mailbox {
                    frames: ArrayQueue::new(MAILBOX_FRAMES),
                    asleep: AtomicBool::new(false),
                    waker,
                })
                .collect(),
        }
    }

    /// The worker that owns `port`, if one does.
    #[inline]
    pub(super) fn owner(&self, port: PortId) -> Option<usize> {
        match self.owners[usize::from(port.0)].load(Ordering::Acquire) {
            NO_OWNER => None,
            worker => Some(usize::from(worker)),
        }
    }

    /// How many ports each of `workers` workers owns.
    pub(super) fn ports_per_worker(&self, workers: usize) -> Vec<usize> {
        let mut load = vec![0; workers];
        for owner in self.owners.iter() {
            if let Some(n) = load.get_mut(usize::from(owner.load(Ordering::Acquire))) {
                *n += 1;
            }
        }
        load
    }

    /// Worker `worker` polls `port` from now on (`None`: nobody does).
    pub(super) fn set_owner(&self, port: PortId, worker: Option<usize>) {
        let owner = worker.map_or(NO_OWNER, |w| w as u8);
        self.owners[usize::from(port.0)].store(owner, Ordering::Release);
    }

    /// Puts `frame` for `port` in the mailbox of `worker`; gives it back
    /// if the mailbox is full.
    #[inline]
    pub(super) fn post(
        &self,
        worker: usize,
        port: PortId,
        frame: PacketBuf,
    ) -> Result<(), PacketBuf> {
        self.mailboxes[worker]
            .frames
            .push((port, frame))
            .map_err(|(_, frame)| frame)
    }

    /// Wakes `worker` if it sleeps: once after the frames of a batch are
    /// posted to it.
    pub(super) fn nudge(&self, worker: usize) {
        let mailbox = &self.mailboxes[worker];
        fence(Ordering::SeqCst);
        if mailbox.asleep.swap(false, Ordering::SeqCst) {
            // A failed wake-up is an eventfd that is full: it is awake.
            let _ = mailbox.waker.wake();
        }
    }

    /// The next frame in the mailbox of `worker`.
    #[inline]
    pub(super) fn take(&self, worker: usize) -> Option<(PortId, PacketBuf)> {
        self.mailboxes[worker].frames.pop()
    }

    /// True if frames wait for `worker`.
    #[inline]
    pub(super) fn has_mail(&self, worker: usize) -> bool {
        !self.mailboxes[worker].frames.is_empty()
    }

    /// `worker` is about to sleep: false (and it must not) if mail came.
    pub(super) fn going_to_sleep(&self, worker: usize) -> bool {
        let mailbox = &self.mailboxes[worker];
        mailbox.asleep.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if mailbox.frames.is_empty() {
            return true;
        }
        mailbox.asleep.store(false, Ordering::Relaxed);
        false
    }

    /// `worker` is awake.
    pub(super) fn awake(&self, worker: usize) {
        self.mailboxes[worker]
            .asleep
            .store(false, Ordering::Relaxed);
    }
}
