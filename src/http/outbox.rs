//! What a connection still owes its peer: the bytes the kernel has not taken
//! yet.
//!
//! Writes are non-blocking, so a `write` may take all, part or none of what we
//! offer. The outbox keeps the rest, in order, as a queue of shared chunks plus
//! an offset into the first one, and sends it when the socket is writable
//! again. Two properties matter for connection scale:
//!
//! * **Empty costs one pointer.** An idle subscriber's outbox is `None`. The
//!   queue is allocated only when a write comes up short (or a response is
//!   queued), and freed again once it drains.
//! * **Frames are shared, not copied.** A queued frame is an `Arc<[u8]>`
//!   clone: 10,000 slow subscribers queueing the same event hold one copy of
//!   its bytes.
//! * **Entries are not free.** Each queued frame costs its queue a pointer
//!   and a length (16 bytes), whatever its size: a subscriber that queues
//!   30,000 tiny frames holds half a megabyte of queue for 1 MB of frames it
//!   shares with everyone. [`Outbox::pinned_bytes`] counts both, which is
//!   what the server's limits on queued memory are checked against.
//!
//! Queued chunks are written with one vectored write (`writev`) where the sink
//! supports it, so a burst of small frames becomes one system call.
//!
//! The outbox is generic over [`std::io::Write`], so it is tested with
//! in-memory sinks that accept a few bytes at a time.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::sync::Arc;

/// Most chunks passed to one vectored write. Linux accepts up to 1024
/// (`IOV_MAX`); 64 already turns a burst into one call and keeps the slice
/// array small enough for the stack.
const MAX_IOVECS: usize = 64;

/// What one queued chunk costs the queue, on top of its bytes.
pub const ENTRY_BYTES: usize = std::mem::size_of::<Arc<[u8]>>();

/// Unsent bytes for one connection.
#[derive(Debug, Default)]
pub struct Outbox {
    /// `None` while nothing is queued: the common case costs 8 bytes.
    queue: Option<Box<Queue>>,
}

#[derive(Debug, Default)]
struct Queue {
    chunks: VecDeque<Arc<[u8]>>,
    /// Bytes of `chunks[0]` already written.
    offset: usize,
    /// Unsent bytes in total.
    queued: usize,
}

/// The state of an outbox after a write attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything was written.
    All,
    /// The sink would block; the rest is queued until it is writable.
    Partly,
}

impl Outbox {
    pub fn new() -> Outbox {
        Outbox::default()
    }

    /// Whether nothing is waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.queue.is_none()
    }

    /// Unsent bytes.
    pub fn queued_bytes(&self) -> usize {
        self.queue.as_ref().map_or(0, |queue| queue.queued)
    }

    /// What the queue holds in memory for this connection: the unsent bytes
    /// (as if no frame were shared), plus the queue itself, counted by its
    /// capacity, since that is what is allocated.
    pub fn pinned_bytes(&self) -> usize {
        self.queue
            .as_ref()
            .map_or(0, |queue| queue.queued + std::mem::size_of::<Queue>() + queue.chunks.capacity() * ENTRY_BYTES)
    }

    /// Queues `bytes` behind what is already queued, without writing.
    pub fn push(&mut self, bytes: Arc<[u8]>) {
        if !bytes.is_empty() {
            let queue = self.queue.get_or_insert_default();
            queue.queued += bytes.len();
            queue.chunks.push_back(bytes);
        }
    }

    /// Sends `frames` in order after anything already queued: writes now if the
    /// outbox was empty (the common case: no allocation, one system call), and
    /// queues whatever the sink did not take.
    ///
    /// If the outbox already held bytes, the sink is known to be full, so the
    /// frames are only queued; they go out on the next writable event.
    pub fn send<W: Write>(&mut self, frames: &[Arc<[u8]>], sink: &mut W) -> io::Result<Flushed> {
        if !self.is_empty() {
            frames.iter().for_each(|frame| self.push(frame.clone()));
            return Ok(Flushed::Partly);
        }
        let total: usize = frames.iter().map(|frame| frame.len()).sum();
        let mut written = 0;
        while written < total {
            match write_chunks(sink, frames.iter().map(|frame| &frame[..]), written)? {
                0 => break,
                n => written += n,
            }
        }
        if written == total {
            return Ok(Flushed::All);
        }
        // Queue what the sink did not take: skip the frames written whole, then
        // keep the offset into the first one written in part.
        let queue = self.queue.get_or_insert_default();
        for frame in frames {
            if written >= frame.len() {
                written -= frame.len();
                continue;
            }
            if queue.chunks.is_empty() {
                queue.offset = written;
            }
            queue.queued += frame.len() - written;
            queue.chunks.push_back(frame.clone());
            written = 0;
        }
        Ok(Flushed::Partly)
    }

    /// Writes queued bytes until the outbox is empty or the sink would block.
    pub fn flush<W: Write>(&mut self, sink: &mut W) -> io::Result<Flushed> {
        let Some(queue) = &mut self.queue else {
            return Ok(Flushed::All);
        };
        while queue.queued > 0 {
            let written = write_chunks(sink, queue.chunks.iter().map(|chunk| &chunk[..]), queue.offset)?;
            if written == 0 {
                return Ok(Flushed::Partly);
            }
            queue.consume(written);
        }
        // Give the queue's memory back: an idle connection should own nothing.
        self.queue = None;
        Ok(Flushed::All)
    }
}

impl Queue {
    /// Drops `written` bytes from the front of the queue.
    fn consume(&mut self, mut written: usize) {
        self.queued -= written;
        while let Some(first) = self.chunks.front() {
            let rest = first.len() - self.offset;
            if written < rest {
                self.offset += written;
                return;
            }
            written -= rest;
            self.offset = 0;
            self.chunks.pop_front();
        }
    }
}

/// One write of `chunks`, skipping the first `skip` bytes: a plain `write` for
/// one chunk, a vectored write for several. Returns the bytes written, 0 if the
/// sink would block.
fn write_chunks<'a, W: Write>(
    sink: &mut W,
    chunks: impl Iterator<Item = &'a [u8]>,
    mut skip: usize,
) -> io::Result<usize> {
    let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
    let mut count = 0;
    for chunk in chunks {
        if skip >= chunk.len() {
            skip -= chunk.len();
            continue;
        }
        if count == MAX_IOVECS {
            break;
        }
        slices[count] = IoSlice::new(&chunk[skip..]);
        skip = 0;
        count += 1;
    }
    loop {
        let result = match count {
            0 => return Ok(0),
            1 => sink.write(&slices[0]),
            _ => sink.write_vectored(&slices[..count]),
        };
        return match result {
            // A sink that takes nothing of a non-empty write is closed.
            Ok(0) => Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(e),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that takes at most `room` bytes in total, then would block, and
    /// at most `per_call` bytes per write.
    struct Trickle {
        taken: Vec<u8>,
        room: usize,
        per_call: usize,
        calls: usize,
    }

    impl Trickle {
        fn new(room: usize, per_call: usize) -> Trickle {
            Trickle { taken: Vec::new(), room, per_call, calls: 0 }
        }
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            let mut n = 0;
            for buf in bufs {
                for &byte in buf.iter() {
                    if self.room == 0 || n == self.per_call {
                        return if n == 0 { Err(io::ErrorKind::WouldBlock.into()) } else { Ok(n) };
                    }
                    self.taken.push(byte);
                    self.room -= 1;
                    n += 1;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn frames(texts: &[&str]) -> Vec<Arc<[u8]>> {
        texts.iter().map(|t| Arc::from(t.as_bytes())).collect()
    }

    #[test]
    fn a_full_write_queues_nothing_and_allocates_nothing() {
        let mut outbox = Outbox::new();
        let mut sink = Trickle::new(100, 100);
        assert_eq!(outbox.send(&frames(&["data: a\n\n"]), &mut sink).unwrap(), Flushed::All);
        assert!(outbox.is_empty());
        assert!(outbox.queue.is_none(), "nothing allocated");
        assert_eq!(sink.calls, 1);
    }

    #[test]
    fn several_frames_go_out_in_one_vectored_write() {
        let mut outbox = Outbox::new();
        let mut sink = Trickle::new(100, 100);
        outbox.send(&frames(&["a", "bc", "def"]), &mut sink).unwrap();
        assert_eq!((sink.taken.as_slice(), sink.calls), (&b"abcdef"[..], 1));
    }

    #[test]
    fn short_writes_keep_the_rest_in_order_and_share_the_frames() {
        let mut outbox = Outbox::new();
        let mut sink = Trickle::new(4, 3);
        let sent = frames(&["hello", "world"]);
        assert_eq!(outbox.send(&sent, &mut sink).unwrap(), Flushed::Partly);
        assert_eq!(outbox.queued_bytes(), 6);
        // Queued frames are the same allocation, not copies.
        assert!(outbox.queue.as_ref().unwrap().chunks.iter().any(|c| Arc::ptr_eq(c, &sent[1])));
        // More frames while blocked are only queued.
        assert_eq!(outbox.send(&frames(&["!"]), &mut sink).unwrap(), Flushed::Partly);
        assert_eq!(sink.taken, b"hell");
        sink.room = 100;
        assert_eq!(outbox.flush(&mut sink).unwrap(), Flushed::All);
        assert_eq!(sink.taken, b"helloworld!");
        assert!(outbox.is_empty());
        assert!(outbox.queue.is_none(), "drained outbox frees its queue");
    }

    #[test]
    fn every_split_of_the_sink_gives_the_same_bytes() {
        let sent = frames(&["one ", "two ", "", "three"]);
        for per_call in 1..8 {
            for room in 0..16 {
                let mut outbox = Outbox::new();
                let mut sink = Trickle::new(room, per_call);
                outbox.send(&sent, &mut sink).unwrap();
                assert_eq!(outbox.queued_bytes() + sink.taken.len(), 13);
                sink.room = usize::MAX;
                outbox.flush(&mut sink).unwrap();
                assert_eq!(sink.taken, b"one two three", "room {room} per_call {per_call}");
            }
        }
    }

    #[test]
    fn more_chunks_than_one_writev_takes() {
        let mut outbox = Outbox::new();
        let many: Vec<Arc<[u8]>> = (0..200).map(|i| Arc::from(format!("{i},").as_bytes())).collect();
        let mut sink = Trickle::new(0, usize::MAX);
        outbox.send(&many, &mut sink).unwrap();
        sink.room = usize::MAX;
        outbox.flush(&mut sink).unwrap();
        let expected: String = (0..200).map(|i| format!("{i},")).collect();
        assert_eq!(sink.taken, expected.as_bytes());
    }

    #[test]
    fn pinned_bytes_count_each_entry_not_only_the_frames() {
        let mut outbox = Outbox::new();
        assert_eq!(outbox.pinned_bytes(), 0, "an empty outbox pins nothing");
        let tiny: Arc<[u8]> = Arc::from(&b"id: 1-1\ndata: x\n\n"[..]);
        for _ in 0..1000 {
            outbox.push(tiny.clone());
        }
        // 1000 entries of 16 bytes for 17,000 bytes of one shared frame.
        assert_eq!(outbox.queued_bytes(), 17_000);
        assert!(outbox.pinned_bytes() >= 17_000 + 1000 * ENTRY_BYTES, "{}", outbox.pinned_bytes());
        outbox.flush(&mut Vec::new()).unwrap();
        assert_eq!(outbox.pinned_bytes(), 0, "a drained outbox gives its queue back");
    }

    #[test]
    fn a_closed_sink_is_an_error() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Ok(0)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut outbox = Outbox::new();
        assert!(outbox.send(&frames(&["x"]), &mut Closed).is_err());
    }
}
